"""Hardware detection: which CPU, NUMA layout and accelerators a node has, and so which adapter applies.

:func:`detect` reads a live machine, a ``--sysroot`` copy of one (sysfs NUMA nodes, os-release), or captured
outputs, through the pure parsers of ``hwparse.py`` (re-exported here). Accelerator tool outputs go to the
adapter that claims them (each adapter names its tools and parses them, see ``Adapter.parse_tool_output``), and
the adapters decide which of them a node calls for.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from suanli.adapters.hwparse import (
    ARM_PARTS,
    ARM_VENDORS,
    HEALTH_ORDER,
    LSCPU_PARTS,
    LSCPU_VENDORS,
    NVIDIA_QUERY,
    Accelerator,
    Cpu,
    Hardware,
    NumaNode,
    group_devices,
    parse_cpuinfo,
    parse_cpulist,
    parse_lscpu,
    parse_npu_smi,
    parse_nvidia_csv,
)
from suanli.errors import UsageError

__all__ = ["ARM_PARTS", "ARM_VENDORS", "HEALTH_ORDER", "LSCPU_PARTS", "LSCPU_VENDORS", "NVIDIA_QUERY", "Accelerator",
           "Cpu", "Hardware", "NumaNode", "classify", "detect", "group_devices", "parse_cpuinfo", "parse_cpulist",
           "parse_lscpu", "parse_npu_smi", "parse_nvidia_csv", "partition_entry", "read_numa", "read_os",
           "tool_outputs"]


# ---------------------------------------------------------------- sysfs
def read_numa(sysroot: Path) -> list[NumaNode]:
    base = sysroot / "sys/devices/system/node"
    nodes: list[NumaNode] = []
    if not base.is_dir():
        return nodes
    for d in sorted(base.glob("node[0-9]*"), key=lambda p: int(p.name[4:])):
        try:
            nodes.append(NumaNode(int(d.name[4:]), parse_cpulist((d / "cpulist").read_text())))
        except (OSError, ValueError):
            continue
    return nodes


def read_os(sysroot: Path) -> str | None:
    try:
        text = (sysroot / "etc/os-release").read_text()
    except OSError:
        return None
    m = re.search(r'^PRETTY_NAME="?([^"\n]*)"?', text, re.M)
    return m.group(1) if m else None


# ---------------------------------------------------------------- classification and detection
def classify(cpu: Cpu, accelerators: list[Accelerator]) -> str:
    """The adapter a node calls for: the first registered one offering a kind it has, else the first whose CPU
    it has (Kunpeng, Phytium), else cpu. The adapters say; nothing here knows their names."""
    from suanli.adapters import adapter_names, get_adapter

    adapters = [get_adapter(n) for n in adapter_names()]
    kinds = {a.kind for a in accelerators}
    for adapter in adapters:
        if adapter.accelerator_kind and adapter.accelerator_kind in kinds:
            return adapter.name
    for adapter in adapters:
        if adapter.matches_cpu(cpu):
            return adapter.name
    return "cpu"


def _read(path: str, flag: str) -> str:
    try:
        return Path(path).read_text(errors="replace")
    except OSError as exc:
        raise UsageError(f"{flag} {path}: cannot read: {exc.strerror}") from None


def _run(argv: list[str]) -> str | None:
    if shutil.which(argv[0]) is None:
        return None
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout if proc.returncode == 0 else None


def detect(sysroot: str | None = None, lscpu: str | None = None, cpuinfo: str | None = None,
           npu_smi: str | None = None, nvidia_smi: str | None = None, smi: list[str] | None = None) -> Hardware:
    """Describe a node. Captured outputs (``lscpu`` ... paths; ``smi``: any accelerator tool's output, given to
    the adapter that claims it) win; otherwise files under ``sysroot`` (``/`` by default); the adapters' tools
    are run only when probing this machine itself."""
    root = Path(sysroot or "/")
    if sysroot and not root.is_dir():
        raise UsageError(f"--sysroot {sysroot}: not a folder")
    live = sysroot is None and lscpu is None and cpuinfo is None
    if cpuinfo:
        cpu = parse_cpuinfo(_read(cpuinfo, "--cpuinfo"), f"--cpuinfo {cpuinfo}")
    elif lscpu:
        cpu = parse_lscpu(_read(lscpu, "--lscpu"), f"--lscpu {lscpu}")
    else:
        path = root / "proc/cpuinfo"
        if not path.exists():
            raise UsageError(f"--sysroot {root}: no proc/cpuinfo under it")
        cpu = parse_cpuinfo(path.read_text(errors="replace"), str(path))
    if lscpu and cpuinfo:  # both given: ids from cpuinfo, sockets and NUMA from lscpu
        extra = parse_lscpu(_read(lscpu, "--lscpu"), f"--lscpu {lscpu}")
        cpu.sockets = cpu.sockets or extra.sockets
        cpu.numa_nodes = extra.numa_nodes
    if not cpu.numa_nodes and not lscpu:
        cpu.numa_nodes = read_numa(root) if (sysroot or live) else []
    if not cpu.numa_nodes:
        cpu.numa_nodes = [NumaNode(0, list(range(cpu.cores)))]
    named = [(npu_smi, "--npu-smi", "ascend"), (nvidia_smi, "--nvidia-smi", "nvidia")]
    accelerators = tool_outputs(cpu, named, smi or [], live)
    return Hardware(adapter=classify(cpu, accelerators), cpu=cpu, accelerators=accelerators,
                    os=read_os(root) if (sysroot or live) else None)


def tool_outputs(cpu: Cpu, named: list[tuple[str | None, str, str]], smi: list[str], live: bool) -> list[Accelerator]:
    """Accelerators from captured tool outputs: ``named`` (path, flag, adapter) for the flags kept for one tool
    each, ``smi`` for any tool (the first adapter that claims the text parses it); on a live machine, every
    accelerator adapter's ``probe_commands`` whose output it claims (adapters with a captured output excepted)."""
    from suanli.adapters import accelerator_adapters, get_adapter

    out: list[Accelerator] = []
    given: set[str] = set()
    for path, flag, name in named:
        if path:
            out += get_adapter(name).parse_tool_output(_read(path, flag), f"{flag} {path}", cpu)
            given.add(name)
    adapters = accelerator_adapters()
    for path in smi:
        text = _read(path, "--smi")
        owner = next((a for a in adapters if a.claims_tool_output(text, cpu)), None)
        if owner is None:
            tools = ", ".join(dict.fromkeys(argv[0] for a in adapters for argv in a.probe_commands))
            raise UsageError(f"--smi {path}: not the output of a tool the adapters read ({tools}); give the text "
                             "one of them prints")
        out += owner.parse_tool_output(text, f"--smi {path}", cpu)
        given.add(owner.name)
    for adapter in adapters if live else []:
        for argv in adapter.probe_commands if adapter.name not in given else ():
            found = _run(list(argv))
            if found and adapter.claims_tool_output(found, cpu):
                out += adapter.parse_tool_output(found, " ".join(argv), cpu)
                break
    return out


def partition_entry(hw: Hardware, name: str | None = None) -> str:
    """A ``partitions:`` item for cluster_configs/ describing one such node."""
    acc = sum(a.count for a in hw.accelerators if a.kind)
    lines = [f"  - name: {name or hw.adapter}", f"    adapter: {hw.adapter}", f"    cpus_per_node: {hw.cpu.cores}"]
    if acc:
        lines.append(f"    accelerators_per_node: {acc}")
    lines.append(f"    numa_nodes: {len(hw.cpu.numa_nodes)}")
    return "\n".join(lines) + "\n"

