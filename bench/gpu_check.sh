#!/usr/bin/env bash
# On a GPU node: plain torchrun (no suanli launch, no SUANLI_ADAPTER) must train on the GPU with nccl, found by
# the adapters' own detection (suanli.runtime.runtime_adapter). Prints the device/backend each run chose and the
# throughput, GPU (detected) next to CPU (forced with SUANLI_ADAPTER=cpu).
# Usage: bash bench/gpu_check.sh [PYTHON]     (needs torch with CUDA; suanli is taken from this checkout)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
unset SUANLI_ADAPTER
nvidia-smi --query-gpu=index,name,memory.total --format=csv || true
"$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available(), torch.cuda.device_count())'
"$PY" -c 'from suanli.runtime import runtime_adapter; a = runtime_adapter(); print("detected adapter:", a.name, a.torch_device, a.torch_backend)'
big=(--batch-size 8192 --hidden 4096 --features 128)
echo "== plain torchrun, 1 process, adapter detected"
"$PY" -m torch.distributed.run --standalone --nproc_per_node=1 examples/train_ddp.py "${big[@]}" --steps 200
n=$("$PY" -c 'import torch; print(torch.cuda.device_count())')
if [ "$n" -ge 2 ]; then
    echo "== plain torchrun, 2 processes, adapter detected"
    "$PY" -m torch.distributed.run --standalone --nproc_per_node=2 examples/train_ddp.py "${big[@]}" --steps 200
fi
echo "== plain torchrun, 1 process, SUANLI_ADAPTER=cpu (what the runtime did before detection)"
SUANLI_ADAPTER=cpu "$PY" -m torch.distributed.run --standalone --nproc_per_node=1 examples/train_ddp.py \
    "${big[@]}" --steps 5 --warmup 1
