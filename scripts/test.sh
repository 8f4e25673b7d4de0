#!/usr/bin/env bash
# The whole test suite, from a fresh Debian machine: installs what it needs, runs pytest, ruff and mypy.
# Extra arguments go to pytest (bash scripts/test.sh -k local -x).
set -uo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
bash scripts/install.sh "$VENV" >/dev/null || { echo "test.sh: install failed" >&2; exit 1; }
PY="$VENV/bin/python"

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
