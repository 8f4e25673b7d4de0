"""NVIDIA GPU nodes: gres ``gpu``, torch on cuda with nccl."""

from __future__ import annotations

import importlib.util
import os
from typing import Any

from suanli.adapters.base import Adapter


class NvidiaAdapter(Adapter):
    name = "nvidia"
    accelerator_kind = "nvidia"
    gres_name = "gpu"
    torch_device = "cuda"
    torch_backend = "nccl"
    description = "NVIDIA GPU nodes"
    device_env_var = "CUDA_VISIBLE_DEVICES"

    def present(self) -> bool:
        """A CUDA build of torch that sees at least one device (CUDA_VISIBLE_DEVICES respected)."""
        if importlib.util.find_spec("torch") is None:
            return False
        import torch

        try:
            return bool(torch.cuda.is_available())
        except RuntimeError:  # a broken driver install: report no GPU rather than crash the job here
            return False

    def torch_setup(self, local_rank: int) -> Any:
        import torch

        device = torch.device("cuda", local_rank % max(1, torch.cuda.device_count()))
        torch.cuda.set_device(device)
        return device


def visible_gpus(root: str = "/") -> int:
    """GPUs the NVIDIA driver shows in /proc, without running nvidia-smi (cheap enough for every command)."""
    path = os.path.join(root, "proc/driver/nvidia/gpus")
    try:
        return len(os.listdir(path))
    except OSError:
        return 0
