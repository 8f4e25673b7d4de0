#!/usr/bin/env bash
# PSI/J's own executor tests (the pinned psij-python sdist from the package index), run against PSI/J's `slurm`
# executor and against suanli's `suanli` executor on the single-node Slurm test cluster, side by side; then
# every test that passes for `slurm` must pass for `suanli` (tests/psij/compare.py).
#
# usage: tests/psij/run_suite.sh [OUT_DIR]
#   env: SUANLI_TEST_SLURM_CONF (required), PSIJ_SUITE_LAUNCHERS (default single,multiple,srun,mpirun),
#        SUANLI_PSIJ_CACHE (sdist cache, default build/psij-cache), PSIJ_SUITE_BATCH_POLL_S (queue polling of
#        PSI/J's slurm executor, default 1 s instead of its 30 s), PYTHON (default .venv/bin/python)
# Writes OUT_DIR/{slurm,suanli}.{xml,log}, OUT_DIR/summary.json; exit 0 when suanli passes all slurm passes.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
VERSION=0.9.11
PY="${PYTHON:-$REPO/.venv/bin/python}"
[ -x "$PY" ] || PY=python3
CONF="${SUANLI_TEST_SLURM_CONF:?SUANLI_TEST_SLURM_CONF: set it to the slurm.conf of the test cluster (scripts/test.sh starts one)}"
CACHE="${SUANLI_PSIJ_CACHE:-$REPO/build/psij-cache}"
LAUNCHERS="${PSIJ_SUITE_LAUNCHERS:-single,multiple,srun,mpirun}"
OUT="${1:-}"
[ -n "$OUT" ] || OUT="$(mktemp -d)"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"

installed="$("$PY" -c 'import psij; print(psij.__version__)' 2>/dev/null || true)"
if [ "$installed" != "$VERSION" ]; then
    echo "run_suite.sh: psij-python $VERSION is not installed in $PY (found '${installed:-none}'); pip install 'suanli[psij]'" >&2
    exit 2
fi

# The pinned sdist, downloaded once into the cache.
SRC="$CACHE/psij-python-$VERSION"
if [ ! -f "$SRC/tests/test_executor.py" ]; then
    mkdir -p "$CACHE"
    "$PY" -m pip download -q --no-deps --no-binary :all: -d "$CACHE" "psij-python==$VERSION"
    tar -xzf "$CACHE/psij-python-$VERSION.tar.gz" -C "$CACHE"
fi

# A run folder: the sdist's tests, the helpers its sdist omits (tests/psij/support), a minimal conftest.
WORK="$OUT/work"
rm -rf "$WORK"
mkdir -p "$WORK/tests" "$WORK/home" "$WORK/suanli-config"
cp "$SRC"/tests/*.py "$WORK/tests/"
cp "$HERE/support/_test_tools.py" "$HERE/support/executor_test_params.py" "$HERE/support/test_nodefile.sh" "$WORK/tests/"
cp "$HERE/support/psij_conftest.py" "$WORK/tests/conftest.py"
printf '[pytest]\naddopts = -p no:cacheprovider\n' >"$WORK/pytest.ini"

# Exclusions: one place, each with its reason (tests/psij/excluded.txt).
args=()
while IFS='|' read -r target why; do
    case "$target" in '#'*) continue ;; esac
    read -r target _ <<<"$target"
    [ -n "$target" ] || continue
    if [[ "$target" == *::* ]]; then args+=("--deselect=tests/$target"); else args+=("--ignore=tests/$target"); fi
done <"$HERE/excluded.txt"

# suanli's view of the same cluster: its default cluster, MPI through mpirun (PSI/J's `mpirun` launcher).
cat >"$WORK/suanli-config/psijslurm.yaml" <<EOF
name: psijslurm
backend: slurm
slurm: {conf: $CONF}
partitions:
  - {name: debug, adapter: cpu, nodes: 1, cpus_per_node: 8, memory_per_node: 7000M, mpi_launcher: mpirun}
EOF
printf 'default_cluster: psijslurm\nstatus_poll_max_s: 2\n' >"$WORK/suanli-config/settings.yaml"

export HOME="$WORK/home" SUANLI_HOME="$WORK/suanli-home" SUANLI_CONFIG="$WORK/suanli-config" SLURM_CONF="$CONF"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
export PSIJ_SUITE_BATCH_POLL_S="${PSIJ_SUITE_BATCH_POLL_S:-1}"
unset SUANLI_CLUSTER

executors() { local ex="$1" out="" l; for l in ${LAUNCHERS//,/ }; do out="$out${out:+,}$ex:$l"; done; echo "$out"; }

run() {  # NAME EXECUTOR: one pytest process, in the background
    local name="$1"
    (
        cd "$WORK"
        start=$(date +%s)
        rc=0
        timeout 900 "$PY" -m pytest -q -rA "--junitxml=$OUT/$name.xml" "--executors=$(executors "$2")" "${args[@]}" \
            tests >"$OUT/$name.log" 2>&1 || rc=$?
        echo "$rc $(( $(date +%s) - start ))" >"$OUT/$name.rc"
    ) &
}

# The two runs at once: both mostly wait on the scheduler.
run slurm slurm
run suanli suanli
wait
for name in slurm suanli; do
    read -r rc secs <"$OUT/$name.rc"
    echo "$name: pytest exit $rc, wall $secs s; $(tail -n 1 "$OUT/$name.log")"
done
"$PY" "$HERE/compare.py" "$OUT/slurm.xml" "$OUT/suanli.xml" "$OUT/summary.json"
