"""NVIDIA GPU nodes: gres ``gpu``, torch on cuda with nccl."""

from __future__ import annotations

import os

from suanli.adapters.base import Adapter


class NvidiaAdapter(Adapter):
    name = "nvidia"
    accelerator_kind = "nvidia"
    gres_name = "gpu"
    torch_device = "cuda"
    torch_backend = "nccl"
    description = "NVIDIA GPU nodes"
    device_env_var = "CUDA_VISIBLE_DEVICES"


def visible_gpus(root: str = "/") -> int:
    """GPUs the NVIDIA driver shows in /proc, without running nvidia-smi (cheap enough for every command)."""
    path = os.path.join(root, "proc/driver/nvidia/gpus")
    try:
        return len(os.listdir(path))
    except OSError:
        return 0
