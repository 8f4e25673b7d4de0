#!/usr/bin/env bash
# The whole test suite, from a fresh Debian machine: installs what it needs, starts a throwaway Slurm cluster
# (tests/slurm/cluster.sh), runs pytest, then ruff and mypy, and stops the cluster again.
# Extra arguments go to pytest (bash scripts/test.sh -k local -x).
set -uo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
bash scripts/install.sh "$VENV" >/dev/null || { echo "test.sh: install failed" >&2; exit 1; }
PY="$VENV/bin/python"

if [ "${SUANLI_SKIP_SLURM:-0}" != 1 ]; then
    SLURM_DIR=$(mktemp -d /tmp/suanli-slurm.XXXXXX)
    trap 'bash tests/slurm/cluster.sh stop "$SLURM_DIR" >/dev/null 2>&1; rm -rf "$SLURM_DIR" "$SLURM_DIR.start.log"' EXIT
    if bash tests/slurm/cluster.sh start "$SLURM_DIR" > "$SLURM_DIR.start.log" 2>&1; then
        export SUANLI_TEST_SLURM_CONF="$SLURM_DIR/slurm.conf"
        echo "test.sh: Slurm test cluster up in $SLURM_DIR"
    else
        echo "test.sh: the Slurm test cluster did not start:" >&2
        tail -n 30 "$SLURM_DIR.start.log" >&2
    fi
fi

"$PY" -m pytest -p no:cacheprovider "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
    echo "test.sh: pytest collected no tests: that is a failure here" >&2
    exit 1
fi
[ "$rc" -eq 0 ] || exit "$rc"
if [ $# -eq 0 ]; then
    "$PY" -m ruff check suanli tests bench examples || exit 1
    "$PY" -m mypy || exit 1
fi
echo "test.sh: all checks passed"
