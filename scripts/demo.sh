#!/usr/bin/env bash
# The demo on the embedded local backend, from a fresh Debian machine: installs what it needs, then runs a
# Function job, a map, a 2-process DDP training, an mpi4py simulation and shows the status table.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
bash scripts/install.sh "$VENV"
export SUANLI_HOME=${SUANLI_HOME:-$PWD/.demo-home}
cd examples
exec "../$VENV/bin/python" demo.py
