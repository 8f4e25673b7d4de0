#!/usr/bin/env bash
# Installs everything suanli's demo and tests need on a fresh Debian machine: Open MPI (for mpi4py and the
# MPI jobs), a virtual environment with suanli and its extras, and torch's CPU wheel. `install.sh VENV --tests`
# (what scripts/test.sh runs) also installs the tools only the tests use: chromium and its driver (the portal's
# browser tests; no browser download is possible or needed) and tmux (`suanli top`'s test).
set -euo pipefail
VENV=${1:-.venv}
TESTS=${2:-}
cd "$(dirname "$0")/.."

need=()
command -v mpirun >/dev/null 2>&1 || need+=(openmpi-bin)
ls /usr/lib/*/openmpi/include/mpi.h >/dev/null 2>&1 || need+=(libopenmpi-dev)
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need+=(python3-venv)
command -v gcc >/dev/null 2>&1 || need+=(gcc python3-dev)
if [ "$TESTS" = --tests ]; then
    command -v chromium >/dev/null 2>&1 || need+=(chromium)
    command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
    command -v tmux >/dev/null 2>&1 || need+=(tmux)
fi
if [ ${#need[@]} -gt 0 ]; then
    echo "install.sh: installing Debian packages: ${need[*]}"
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)
# torch: the CPU build (a range in the extra keeps a GPU user's CUDA build; here pin the CPU wheel first,
# so the range below is already satisfied and no multi-GB CUDA build is pulled).
if ! "$VENV/bin/python" -c 'import torch' >/dev/null 2>&1; then
    "${PIP[@]}" torch==2.13.0
fi
"${PIP[@]}" -e ".[dev,mpi,torch,slurm,ray,dask,postgres,plot,psij,portal]"
echo "install.sh: ready: $VENV"
