"""Hygon DCU nodes (Sugon's DCU accelerators on Hygon x86 CPUs): gres ``dcu``, HIP_VISIBLE_DEVICES, torch of the
ROCm/DTK build on its ``cuda`` device API with nccl (RCCL underneath), the DTK toolkit's environment.

Detection reads the concise table that ``hy-smi`` (and DTK's ``rocm-smi``) print, and Hygon CPU ids in
/proc/cpuinfo or lscpu (vendor ``HygonGenuine``, family 0x18: the Dhyana cores). Captured outputs from public
sources are in tests/fixtures/hardware/hy-smi/ (README.md there names them).
"""

from __future__ import annotations

import importlib.util
import re
from typing import TYPE_CHECKING, Any

from suanli.adapters.base import PinnedCpuAdapter
from suanli.errors import UsageError

if TYPE_CHECKING:
    from suanli.jobs.resources import Resources  # types only: jobs/ asks the adapters for kinds

if TYPE_CHECKING:
    from suanli.adapters.detect import Accelerator, Cpu

HYGON_VENDOR = "HygonGenuine"
HYGON_FAMILY = "0x18"  # Dhyana (C86 3000/5000/7000 series)
#: The header of the concise table: ``DCU  Temp  AvgPwr ...`` (``GPU`` where a DTK rocm-smi prints ROCm's words).
_HEADER = re.compile(r"^\s*(DCU|GPU)\s+Temp\s+\S")
_ROW = re.compile(r"^\s*(\d+)\s+\S")


def is_hygon_cpu(cpu: Cpu | None) -> bool:
    """A Hygon x86 CPU (family 0x18; lscpu texts without a family line count by vendor alone)."""
    return cpu is not None and cpu.vendor == HYGON_VENDOR and cpu.family in (None, HYGON_FAMILY)


def parse_hy_smi(text: str, source: str = "hy-smi") -> list[Accelerator]:
    """``hy-smi`` / ``rocm-smi`` (DTK) concise table: one row per DCU under the ``DCU Temp AvgPwr ...`` header.
    The table names no model and no memory size; its ``Mode`` column (``Normal``; ``N/A`` where the driver does
    not report it) is the nearest to a health, so ``Normal`` or no column is OK and anything else Unknown."""
    from suanli.adapters.detect import group_devices

    lines = text.splitlines()
    start = next((i for i, ln in enumerate(lines) if _HEADER.match(ln)), None)
    if start is None:
        raise UsageError(f"{source}: not `hy-smi` / `rocm-smi` output (no 'DCU  Temp  AvgPwr ...' header line); "
                         "give the table that `hy-smi` prints")
    columns = lines[start].split()
    mode = columns.index("Mode") if "Mode" in columns else None
    devices: list[tuple[str, str, int | None]] = []
    for line in lines[start + 1:]:
        if line.strip().startswith("="):
            break  # the table's closing rule
        if not _ROW.match(line):
            continue
        cells = line.split()
        state = cells[mode] if mode is not None and mode < len(cells) else "Normal"
        devices.append(("Hygon DCU", "OK" if state == "Normal" else "Unknown", None))
    if not devices:
        raise UsageError(f"{source}: `hy-smi` output with a header but no DCU rows")
    return group_devices(devices, "dcu")


class HygonAdapter(PinnedCpuAdapter):
    """Hygon CPUs are Dhyana (Zen-derived) x86 parts with four NUMA nodes per socket, so OpenMP threads and MPI
    ranks are pinned as on the many-NUMA ARM nodes; the DCUs are HIP devices behind torch's cuda API."""

    name = "hygon"
    accelerator_kind = "dcu"
    kind_aliases = ("hygon-dcu",)
    gres_name = "dcu"
    device_env_var = "HIP_VISIBLE_DEVICES"
    scheduler_sets_devices = False  # no Slurm GRES plugin for "dcu": the script reads scontrol's IDX
    # Ray has no DCU accelerator of its own and treats ROCm devices as GPUs; torch sees DCUs as cuda devices and
    # HIP honours the CUDA_VISIBLE_DEVICES that Ray sets for num_gpus, so a DCU is a Ray GPU.
    ray_resource = "num_gpus"
    torch_device = "cuda"
    torch_backend = "nccl"  # RCCL, under NCCL's name in the DTK build of torch
    description = "Hygon DCU (Sugon) nodes on Hygon x86 CPUs"
    probe_commands = (("hy-smi",), ("rocm-smi",))

    def setup_lines(self) -> list[str]:
        # DTK's env.sh (ROCM_PATH, HIP and library paths) where the toolkit is installed; hy-smi from hyhal.
        return [
            '_dtk="${DTK_HOME:-${ROCM_PATH:-/opt/dtk}}/env.sh"; if [ -f "$_dtk" ]; then . "$_dtk"; fi; unset _dtk',
            'if [ -d /opt/hyhal/bin ]; then export PATH="$PATH:/opt/hyhal/bin"; fi',
        ]

    def environment(self, resources: Resources) -> dict[str, str]:
        env = super().environment(resources)
        # Hygon's guides for multi-DCU training: fine-grained PCIe memory lets RCCL move data between DCUs.
        env.setdefault("HSA_FORCE_FINE_GRAIN_PCIE", "1")
        return env

    # ------------------------------------------------------------ detection
    def claims_tool_output(self, text: str, cpu: Cpu | None = None) -> bool:
        """hy-smi's table (``DCU`` column); a ``GPU``-headed rocm-smi table only on a Hygon CPU host."""
        header = next((m for m in map(_HEADER.match, text.splitlines()) if m), None)
        if header is None:
            return False
        return header.group(1) == "DCU" or is_hygon_cpu(cpu)

    def parse_tool_output(self, text: str, source: str, cpu: Cpu | None = None) -> list[Accelerator]:
        return parse_hy_smi(text, source)

    # ------------------------------------------------------------ inside a job
    def present(self) -> bool:
        """A ROCm/DTK build of torch (``torch.version.hip``) that sees at least one device."""
        if importlib.util.find_spec("torch") is None:
            return False
        import torch

        if not getattr(torch.version, "hip", None):
            return False
        try:
            return bool(torch.cuda.is_available())
        except RuntimeError:
            return False

    def torch_setup(self, local_rank: int) -> Any:
        import torch

        device = torch.device("cuda", local_rank % max(1, torch.cuda.device_count()))
        torch.cuda.set_device(device)
        return device
