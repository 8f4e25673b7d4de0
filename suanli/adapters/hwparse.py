"""Pure parsers of what a node's tools print (/proc/cpuinfo, lscpu, ``npu-smi info``, ``nvidia-smi`` CSV) into
the hardware types, tested on real captured outputs. Apart from ``detect.py`` (which reads a machine and asks the
adapters) because these read text only and the adapters call them too.

ARM CPUs are recognised by their implementer and part ids; lscpu's names for them changed between versions, so
names are only a fallback.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

from suanli.errors import UsageError

ARM_VENDORS = {0x41: "ARM", 0x48: "HiSilicon", 0x70: "Phytium"}
#: (implementer, part) -> marketing model. Kunpeng 920's TSV110 is 0xd01 (newer util-linux also lists
#: 0xd02, 0xd03 and 0xd22); 0xd06 is Kunpeng 950. Phytium FTC66x cores: 0x662 in FT-2000+/64, 0x663 in
#: S2500/FT-2500 and D2000.
ARM_PARTS = {
    (0x48, 0xD01): "Kunpeng 920",
    (0x48, 0xD02): "Kunpeng 920",
    (0x48, 0xD03): "Kunpeng 920",
    (0x48, 0xD22): "Kunpeng 920",
    (0x48, 0xD06): "Kunpeng 950",
    (0x70, 0x660): "FTC660 (FT-1500A)",
    (0x70, 0x661): "FTC661",
    (0x70, 0x662): "FTC662 (FT-2000+/64)",
    (0x70, 0x663): "FTC663 (S2500/FT-2500/D2000)",
    (0x70, 0x664): "FTC664",
    (0x70, 0x862): "FTC862 (D3000)",
    (0x70, 0x303): "FTC310",
}
#: lscpu's names, old and new, mapped back to vendor ids (when lscpu text is all there is).
LSCPU_VENDORS = {"hisilicon": 0x48, "huawei": 0x48, "phytium": 0x70, "arm": 0x41, "0x48": 0x48, "0x70": 0x70,
                 "0x41": 0x41}
LSCPU_PARTS = {"tsv110": 0xD01, "kunpeng-920": 0xD01, "kunpeng 920": 0xD01, "taishan-v110": 0xD01,
               "ftc662": 0x662, "ft-2000+/64": 0x662, "ftc663": 0x663, "s2500": 0x663, "ft-2500": 0x663,
               "d2000": 0x663, "ft-2000/4": 0x663, "ftc660": 0x660, "ftc661": 0x661, "ftc664": 0x664,
               "ftc862": 0x862}
HEALTH_ORDER = ["OK", "Warning", "Alarm", "Critical", "Unknown"]


@dataclass
class NumaNode:
    id: int
    cpus: list[int]


@dataclass
class Cpu:
    vendor: str | None = None
    model: str | None = None
    implementer: str | None = None  # "0x48"
    part: str | None = None  # "0xd01"
    family: str | None = None  # x86 ``cpu family`` in hex: "0x18" on Hygon Dhyana
    sockets: int | None = None
    cores: int = 0  # logical CPUs, as lscpu's CPU(s)
    numa_nodes: list[NumaNode] = field(default_factory=list)


@dataclass
class Accelerator:
    kind: str  # an adapter's accelerator_kind: ascend | nvidia | dcu ...
    model: str
    count: int
    memory_mb: int | None
    health: str


@dataclass
class Hardware:
    adapter: str
    cpu: Cpu
    accelerators: list[Accelerator]
    os: str | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------- small helpers
def parse_cpulist(text: str) -> list[int]:
    """``0-3,8,10-11`` -> [0, 1, 2, 3, 8, 10, 11]."""
    out: list[int] = []
    for part in text.strip().split(","):
        part = part.strip()
        if not part:
            continue
        lo, _, hi = part.partition("-")
        out.extend(range(int(lo), int(hi) + 1) if hi else [int(lo)])
    return out


def _hex(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(value, 16) if value.lower().startswith("0x") else int(value)
    except ValueError:
        return None


def _family(value: str | None) -> str | None:
    """x86 ``cpu family`` (decimal in /proc/cpuinfo and lscpu) as hex, the way vendors document it."""
    return f"0x{int(value):x}" if value and value.strip().isdigit() else None


def _arm_model(impl: int | None, part: int | None) -> str | None:
    if impl is None or part is None:
        return None
    return ARM_PARTS.get((impl, part))


# ---------------------------------------------------------------- /proc/cpuinfo
def parse_cpuinfo(text: str, source: str = "cpuinfo") -> Cpu:
    """x86 (vendor_id, model name, physical id) and ARM (CPU implementer/part; old Phytium kernels print only
    ``model name : Phytium ...``)."""
    processors = 0
    fields: dict[str, list[str]] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key = key.strip().lower()
        value = value.strip()
        if key == "processor" and value.isdigit():
            processors += 1
        fields.setdefault(key, []).append(value)
    if processors == 0:
        raise UsageError(f"{source}: not /proc/cpuinfo text (no 'processor : N' lines); give the file that "
                         "`cat /proc/cpuinfo` prints")
    cpu = Cpu(cores=processors)
    impls = [v for v in fields.get("cpu implementer", []) if v]
    parts = [v for v in fields.get("cpu part", []) if v]
    names = [v for v in fields.get("model name", []) if v]
    if impls:
        impl = _hex(max(set(impls), key=impls.count))
        # big.LITTLE parts differ per core: report the most common one.
        part = _hex(max(set(parts), key=parts.count)) if parts else None
        cpu.implementer = f"0x{impl:02x}" if impl is not None else None
        cpu.part = f"0x{part:03x}" if part is not None else None
        cpu.vendor = ARM_VENDORS.get(impl or -1, cpu.implementer)
        cpu.model = names[0] if names else _arm_model(impl, part)  # a kernel's own name is the most specific
    else:
        vendors = fields.get("vendor_id")
        cpu.vendor = vendors[0] if vendors else None
        cpu.model = names[0] if names else None
        families = fields.get("cpu family")
        cpu.family = _family(families[0]) if families else None
        if cpu.model and cpu.model.lower().startswith("phytium"):
            cpu.vendor, cpu.implementer = "Phytium", "0x70"
    ids = set(fields.get("physical id", []))
    if ids:
        cpu.sockets = len(ids)
    return cpu


# ---------------------------------------------------------------- lscpu
def parse_lscpu(text: str, source: str = "lscpu") -> Cpu:
    """Both layouts (flat ``Key: value`` and the indented tree of util-linux 2.38+)."""
    kv: dict[str, str] = {}
    numa: list[NumaNode] = []
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key, value = key.strip(), value.strip()
        m = re.fullmatch(r"NUMA node(\d+) CPU\(s\)", key)
        if m:
            numa.append(NumaNode(int(m.group(1)), parse_cpulist(value) if value else []))
            continue
        kv.setdefault(key, value)
    if "CPU(s)" not in kv or not kv["CPU(s)"].isdigit():
        raise UsageError(f"{source}: not lscpu output (no 'CPU(s):' line); give the text that `lscpu` prints")
    cpu = Cpu(cores=int(kv["CPU(s)"]), numa_nodes=numa)
    sockets = kv.get("Socket(s)") or kv.get("CPU socket(s)", "")  # the second is util-linux before 2.19
    if sockets.isdigit():
        cpu.sockets = int(sockets)
    vendor_text = kv.get("Vendor ID") or kv.get("BIOS Vendor ID")
    model_text = kv.get("Model name") or kv.get("BIOS Model name")
    impl = LSCPU_VENDORS.get((vendor_text or "").lower())
    if impl is None and model_text:
        low = model_text.lower()
        impl = 0x48 if "kunpeng" in low else 0x70 if ("phytium" in low or low.startswith("ft")) else None
    part = None
    for text_ in (model_text, kv.get("BIOS Model name")):
        if text_:
            low = text_.lower()
            part = next((p for name, p in LSCPU_PARTS.items() if name in low), None)
            if part is not None:
                break
    if impl is not None:
        cpu.implementer = f"0x{impl:02x}"
        cpu.vendor = ARM_VENDORS.get(impl)
        if part is not None:
            cpu.part = f"0x{part:03x}"
        cpu.model = _arm_model(impl, part) or model_text
    else:
        cpu.vendor, cpu.model = vendor_text, model_text
        cpu.family = _family(kv.get("CPU family"))
    bios = kv.get("BIOS Model name")
    if bios and cpu.model and bios not in cpu.model and "kunpeng" in bios.lower():
        cpu.model = f"{cpu.model} ({bios})"
    return cpu


# ---------------------------------------------------------------- npu-smi
_NPU_ROW1 = re.compile(r"^\|\s*(\d+)\s+(\S+)\s*\|\s*([A-Za-z]+)\s*\|")
_NPU_ROW2 = re.compile(r"^\|\s*(\d+)(?:\s+\S+)?\s*\|\s*(\S+)\s*\|(.*)\|\s*$")
_PAIR = re.compile(r"(\d+)\s*/\s*(\d+)")


def parse_npu_smi(text: str, source: str = "npu-smi") -> list[Accelerator]:
    """``npu-smi info``: each chip row pair is one device (boards with two chips per NPU count twice);
    memory is the HBM total where the table has an HBM column with a size, else the Memory-Usage total."""
    if "npu-smi" not in text:
        raise UsageError(f"{source}: not `npu-smi info` output (no 'npu-smi' header line)")
    devices: list[tuple[str, str, int | None]] = []
    pending: tuple[str, str] | None = None
    for line in text.splitlines():
        line = line.rstrip()
        if "Process id" in line or "Process name" in line:
            break  # the process table follows
        # The second row of a pair can look like a first one ("| 0  0 | NA |" on 310B), so it goes first.
        m2 = _NPU_ROW2.match(line) if pending is not None else None
        if m2 is None:
            m1 = _NPU_ROW1.match(line)
            if m1 and not line.lstrip("| ").startswith(("NPU", "Chip")):
                pending = (m1.group(2), m1.group(3))
            continue
        if pending is not None:
            pairs = [(int(a), int(b)) for a, b in _PAIR.findall(m2.group(3))]
            memory = None
            if len(pairs) >= 2 and pairs[-1][1] > 0:
                memory = pairs[-1][1]
            elif pairs:
                memory = pairs[0][1] or None
            devices.append((pending[0], pending[1], memory))
            pending = None
    if not devices:
        raise UsageError(f"{source}: `npu-smi info` output with no NPU rows that could be read")
    return group_devices(devices, "ascend")


def group_devices(devices: list[tuple[str, str, int | None]], kind: str) -> list[Accelerator]:
    """One entry per model: count, memory per device (the smallest seen), worst health."""
    out: dict[str, Accelerator] = {}
    for model, health, memory in devices:
        health = health if health in HEALTH_ORDER else ("OK" if health.upper() == "OK" else "Unknown")
        acc = out.get(model)
        if acc is None:
            out[model] = Accelerator(kind, model, 1, memory, health)
            continue
        acc.count += 1
        if memory is not None and (acc.memory_mb is None or memory < acc.memory_mb):
            acc.memory_mb = memory
        if HEALTH_ORDER.index(health) > HEALTH_ORDER.index(acc.health):
            acc.health = health
    return list(out.values())


# ---------------------------------------------------------------- nvidia-smi
NVIDIA_QUERY = ["nvidia-smi", "--query-gpu=index,name,memory.total", "--format=csv"]  # as NvidiaAdapter runs it


def parse_nvidia_csv(text: str, source: str = "nvidia-smi") -> list[Accelerator]:
    """``nvidia-smi --query-gpu=...,name,memory.total,... --format=csv`` (with its header line)."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        raise UsageError(f"{source}: empty; give the output of `{' '.join(NVIDIA_QUERY)}`")
    header = [h.strip() for h in lines[0].split(",")]
    names = [h.split(" [", 1)[0] for h in header]
    if "name" not in names:
        raise UsageError(f"{source}: not `nvidia-smi --query-gpu ... --format=csv` output (no 'name' column in "
                         f"the header); run `{' '.join(NVIDIA_QUERY)}`")
    i_name = names.index("name")
    i_mem = names.index("memory.total") if "memory.total" in names else None
    devices: list[tuple[str, str, int | None]] = []
    for line in lines[1:]:
        cells = [c.strip() for c in line.split(",")]
        if len(cells) < len(header):
            continue
        memory = None
        if i_mem is not None:
            m = re.match(r"(\d+)", cells[i_mem])
            memory = int(m.group(1)) if m else None
        devices.append((cells[i_name], "OK", memory))
    if not devices:
        raise UsageError(f"{source}: the CSV has a header but no GPU rows")
    return group_devices(devices, "nvidia")
