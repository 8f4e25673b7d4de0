#!/usr/bin/env bash
# The whole test suite, from a fresh Debian machine: installs what it needs, starts a throwaway Slurm cluster
# (tests/slurm/cluster.sh), a Ray head and a PostgreSQL server; runs pytest,
# then ruff and mypy, and stops the services again.
# Extra arguments go to pytest (bash scripts/test.sh -k local -x).
set -uo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
bash scripts/install.sh "$VENV" --tests >/dev/null || { echo "test.sh: install failed" >&2; exit 1; }
PY="$VENV/bin/python"

# The services the tests talk to: Slurm (tests/slurm/cluster.sh), a Ray head (tests/ray/head.sh) and a PostgreSQL
# server (tests/postgres/server.sh), each in its own folder, stopped on exit. SUANLI_SKIP_SLURM=1, SUANLI_SKIP_RAY=1,
# SUANLI_SKIP_POSTGRES=1 leave one out. The 3-node Slurm cluster in network namespaces (tests/slurm/multinode.sh,
# needs root) and the 2-node Ray cluster (tests/ray/multinode.sh) run the tests marked multinode;
# SUANLI_SKIP_MULTINODE=1 leaves them out, and `-m multinode` starts only them.
start_service() {  # NAME SCRIPT
    local name=$1 script=$2 dir
    dir=$(mktemp -d "/tmp/suanli-$name.XXXXXX")
    CLEANUP+=("bash $script stop $dir >/dev/null 2>&1; rm -rf $dir $dir.start.log")
    if bash "$script" start "$dir" > "$dir.start.log" 2>&1; then
        # The start script writes the variables the tests need (NAME=VALUE lines) into DIR/env.
        while IFS='=' read -r k v; do [ -n "$k" ] && export "$k=$v"; done < "$dir/env"
        echo "test.sh: $name up in $dir"
    else
        echo "test.sh: $name did not start:" >&2
        tail -n 30 "$dir.start.log" >&2
    fi
}
CLEANUP=()
trap 'for c in "${CLEANUP[@]}"; do eval "$c"; done' EXIT
only_multinode=0  # `-m multinode`: the multi-node tests alone need none of the other services
prev=""
for a in "$@"; do
    if { [ "$prev" = -m ] && [ "$a" = multinode ]; } || [ "$a" = -m=multinode ]; then only_multinode=1; fi
    prev=$a
done
if [ "$only_multinode" = 0 ]; then
    [ "${SUANLI_SKIP_SLURM:-0}" = 1 ] || start_service slurm tests/slurm/cluster.sh
    [ "${SUANLI_SKIP_RAY:-0}" = 1 ] || [ ! -f tests/ray/head.sh ] || start_service ray tests/ray/head.sh
    [ "${SUANLI_SKIP_POSTGRES:-0}" = 1 ] || [ ! -f tests/postgres/server.sh ] ||
        start_service postgres tests/postgres/server.sh
fi
[ "${SUANLI_SKIP_MULTINODE:-0}" = 1 ] || start_service multinode tests/slurm/multinode.sh
# The 2-node Ray cluster (head and worker in their own namespaces) for the multi-node Ray tests.
[ "${SUANLI_SKIP_MULTINODE:-0}" = 1 ] || start_service raymulti tests/ray/multinode.sh

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
