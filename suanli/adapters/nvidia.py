"""NVIDIA GPU nodes: gres ``gpu``, torch on cuda with nccl."""

from __future__ import annotations

import importlib.util
import os
from typing import TYPE_CHECKING, Any

from suanli.adapters.base import Adapter

if TYPE_CHECKING:
    from suanli.adapters.detect import Accelerator, Cpu

NVIDIA_QUERY = ("nvidia-smi", "--query-gpu=index,name,memory.total", "--format=csv")


class NvidiaAdapter(Adapter):
    name = "nvidia"
    accelerator_kind = "nvidia"
    gres_name = "gpu"
    torch_device = "cuda"
    torch_backend = "nccl"
    description = "NVIDIA GPU nodes"
    device_env_var = "CUDA_VISIBLE_DEVICES"
    kind_aliases = ("cuda",)
    scheduler_sets_devices = True  # Slurm's gpu GRES plugin exports CUDA_VISIBLE_DEVICES
    ray_resource = "num_gpus"
    probe_commands = (NVIDIA_QUERY,)

    def claims_tool_output(self, text: str, cpu: Cpu | None = None) -> bool:
        """A ``--query-gpu ... --format=csv`` output: its first line is a header with a ``name`` column."""
        first = next((ln for ln in text.splitlines() if ln.strip()), "")
        return "," in first and "name" in [h.strip().split(" [", 1)[0] for h in first.split(",")]

    def parse_tool_output(self, text: str, source: str, cpu: Cpu | None = None) -> list[Accelerator]:
        from suanli.adapters.detect import parse_nvidia_csv

        return parse_nvidia_csv(text, source)

    def present(self) -> bool:
        """A CUDA build of torch that sees at least one device (CUDA_VISIBLE_DEVICES respected). A ROCm/DTK build
        answers torch.cuda too; it is not NVIDIA, so it is left to the adapter of that hardware."""
        if importlib.util.find_spec("torch") is None:
            return False
        import torch

        if getattr(torch.version, "hip", None):
            return False
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
