"""Hardware detection on real captured outputs (tests/fixtures/hardware/README.md names each source)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import run_cli

from suanli.adapters.detect import detect, parse_cpuinfo, parse_lscpu, parse_npu_smi, parse_nvidia_csv
from suanli.errors import UsageError

HW = Path(__file__).parent / "fixtures" / "hardware"


def text(rel: str) -> str:
    return (HW / rel).read_text()


def count(pattern: str, rel: str) -> int:
    return len(re.findall(pattern, text(rel), re.M))


@pytest.mark.parametrize(("rel", "adapter", "impl", "part"), [
    ("cpuinfo/hrw-arm-socs-table__kunpeng-920_taishan-2280_2x48_cpuinfo.txt", "kunpeng", "0x48", "0xd01"),
    ("cpuinfo/hrw-arm-socs-table__phytium-d2000-8_cpuinfo.txt", "phytium", "0x70", "0x663"),
    ("cpuinfo/hrw-arm-socs-table__phytium-ft2000-4_cpuinfo_spaces.txt", "phytium", "0x70", "0x663"),
    ("cpuinfo/hrw-arm-socs-table__phytium-d3000_cpuinfo_spaces.txt", "phytium", "0x70", "0x862"),
    ("sysroot-util-linux-x86_64-hpdl585/proc/cpuinfo", "cpu", None, None),
    ("sysroot-util-linux-arm-A510-A710-A715-X3/proc/cpuinfo", "cpu", "0x41", None),
])
def test_cpuinfo_ids_decide_the_adapter(rel: str, adapter: str, impl: str | None, part: str | None) -> None:
    hw = detect(cpuinfo=str(HW / rel))
    assert hw.adapter == adapter
    assert hw.cpu.implementer == impl
    if part:
        assert hw.cpu.part == part
    assert hw.cpu.cores == count(r"^processor\s*:\s*\d+", rel)


def test_x86_sockets_come_from_physical_ids() -> None:
    rel = "sysroot-util-linux-x86_64-hpdl585/proc/cpuinfo"
    cpu = parse_cpuinfo(text(rel))
    assert cpu.sockets == len(set(re.findall(r"^physical id\s*:\s*(\d+)", text(rel), re.M)))
    assert cpu.vendor == "AuthenticAMD" and "Opteron" in (cpu.model or "")


@pytest.mark.parametrize(("rel", "adapter", "sockets"), [
    ("lscpu/vllm-ascend-issue-901__kunpeng-920-5250_4x48_8numa_lscpu.txt", "kunpeng", 4),
    ("lscpu/vllm-ascend-issue-6842__kunpeng-920-3210_2x24_2numa_lscpu.txt", "kunpeng", 2),
    ("lscpu/core-to-core-latency-issue-103__phytium-d2000_8core_lscpu-tree-format.txt", "phytium", 1),
    ("lscpu/cpufetch-issue-125__phytium-ft2000-4_vendor-0x70_lscpu.txt", "phytium", 1),
    ("lscpu/vllm-ascend-issue-3974__hisilicon-unnamed-model_320cpu_4cluster_8numa_lscpu.txt", "kunpeng", None),
    ("lscpu/util-linux__expected__lscpu-x86_64-hpdl585.txt", "cpu", 4),
])
def test_lscpu_numa_layout_and_adapter(rel: str, adapter: str, sockets: int | None) -> None:
    hw = detect(lscpu=str(HW / rel))
    assert hw.adapter == adapter
    expected_numa = count(r"^\s*NUMA node\d+ CPU\(s\):", rel)
    assert len(hw.cpu.numa_nodes) == max(1, expected_numa)
    total = int(re.search(r"^CPU\(s\):\s*(\d+)", text(rel), re.M).group(1))  # type: ignore[union-attr]
    assert hw.cpu.cores == total
    if expected_numa:
        assert sum(len(n.cpus) for n in hw.cpu.numa_nodes) == total
    if sockets is not None:
        assert hw.cpu.sockets == sockets


def test_ft2500_lscpu_has_16_numa_nodes_of_8() -> None:
    cpu = parse_lscpu(text("lscpu/plantegg-blog__phytium-ft2500_2x64_16numa_lscpu-old-format.txt"))
    assert len(cpu.numa_nodes) == 16 and all(len(n.cpus) == 8 for n in cpu.numa_nodes)
    assert cpu.sockets == 2 and cpu.cores == 128


def test_kunpeng_lscpu_names_the_bios_model() -> None:
    cpu = parse_lscpu(text("lscpu/vllm-ascend-issue-901__kunpeng-920-5250_4x48_8numa_lscpu.txt"))
    assert cpu.implementer == "0x48" and cpu.part == "0xd01" and "5250" in (cpu.model or "")


def npu_rows(rel: str) -> list[tuple[str, str]]:
    """(name, health) of every chip, read independently of the parser: the first row of each row pair."""
    rows = []
    for line in text(rel).splitlines():
        if "Process id" in line:
            break
        m = re.match(r"^\|\s*\d+\s+(\S+)\s*\|\s*(OK|Warning|Alarm|Critical)\s*\|", line)
        if m:
            rows.append((m.group(1), m.group(2)))
    return rows


@pytest.mark.parametrize("rel", sorted(str(p.relative_to(HW)) for p in (HW / "npu-smi").glob("*.txt")))
def test_npu_smi_every_layout(rel: str) -> None:
    accs = parse_npu_smi(text(rel))
    rows = npu_rows(rel)
    assert sum(a.count for a in accs) == len(rows) > 0
    assert {a.model for a in accs} == {name for name, _ in rows}
    assert all(a.kind == "ascend" and a.memory_mb and a.memory_mb > 1000 for a in accs)


def test_npu_smi_memory_and_health() -> None:
    (b2,) = parse_npu_smi(text("npu-smi/vllm-ascend-issue-901__910B2_x8_npu-smi-23.0.3.txt"))
    assert (b2.model, b2.count, b2.memory_mb, b2.health) == ("910B2", 8, 65536, "OK")
    (pro,) = parse_npu_smi(text("npu-smi/vllm-ascend-issue-1047__910ProB_x8_npu-smi-24.1.0.txt"))
    assert pro.memory_mb == 32768  # the HBM column, not the DDR one
    (b4,) = parse_npu_smi(text("npu-smi/nputop__npusmi_nohbm__310B4_npu-smi-23.0.0.txt"))
    assert (b4.memory_mb, b4.health) == (15609, "Alarm")
    (duo,) = parse_npu_smi(text("npu-smi/vllm-ascend-issue-6842__310P3-Duo_4card-x-2chip_npu-smi-25.3.rc1.txt"))
    assert duo.count == 8  # four cards, two chips each


def test_nvidia_csv() -> None:
    rel = "nvidia-smi/nvidia_gpu_exporter__H100-80GB-HBM3_x1_590.48.01_idle_query-gpu-all-fields.csv"
    (gpu,) = parse_nvidia_csv(text(rel))
    assert gpu.model == "NVIDIA H100 80GB HBM3" and gpu.count == 1 and gpu.memory_mb == 81559
    assert parse_nvidia_csv("index, name, memory.total [MiB]\n0, A100, 40960 MiB\n1, A100, 40960 MiB\n")[0].count == 2


def test_wrong_inputs_are_usage_errors() -> None:
    lscpu_text = text("lscpu/vllm-ascend-issue-901__kunpeng-920-5250_4x48_8numa_lscpu.txt")
    with pytest.raises(UsageError, match="not /proc/cpuinfo"):
        parse_cpuinfo(lscpu_text)
    with pytest.raises(UsageError, match="not lscpu"):
        parse_lscpu(text("npu-smi/vllm-ascend-issue-901__910B2_x8_npu-smi-23.0.3.txt"))
    with pytest.raises(UsageError, match="npu-smi"):
        parse_npu_smi(lscpu_text)
    with pytest.raises(UsageError, match="name"):
        parse_nvidia_csv(lscpu_text)


def test_cli_hardware_json_and_errors(home: Path) -> None:
    r = run_cli("hardware", "--json", "--lscpu",
                str(HW / "lscpu/vllm-ascend-issue-901__kunpeng-920-5250_4x48_8numa_lscpu.txt"),
                "--npu-smi", str(HW / "npu-smi/vllm-ascend-issue-901__910B2_x8_npu-smi-23.0.3.txt"))
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["adapter"] == "ascend"
    assert set(data["cpu"]) == {"vendor", "model", "implementer", "part", "family", "sockets", "cores",
                                "numa_nodes"}
    assert data["cpu"]["numa_nodes"][1] == {"id": 1, "cpus": list(range(24, 48))}
    assert data["accelerators"] == [{"kind": "ascend", "model": "910B2", "count": 8, "memory_mb": 65536,
                                     "health": "OK"}]
    bad = run_cli("hardware", "--npu-smi", str(HW / "lscpu/util-linux__expected__lscpu-x86_64-hpdl585.txt"))
    assert bad.returncode == 2 and "npu-smi" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    missing = run_cli("hardware", "--cpuinfo", "/nonexistent/cpuinfo")
    assert missing.returncode == 2 and "cannot read" in missing.stderr
    entry = run_cli("hardware", "--partition-entry", "ai", "--lscpu",
                    str(HW / "lscpu/vllm-ascend-issue-901__kunpeng-920-5250_4x48_8numa_lscpu.txt"),
                    "--npu-smi", str(HW / "npu-smi/vllm-ascend-issue-901__910B2_x8_npu-smi-23.0.3.txt"))
    assert "adapter: ascend" in entry.stdout and "accelerators_per_node: 8" in entry.stdout
    assert "cpus_per_node: 192" in entry.stdout and "numa_nodes: 8" in entry.stdout


def test_this_machine_and_sysroot(home: Path) -> None:
    live = run_cli("hardware", "--json")
    assert live.returncode == 0, live.stderr
    data = json.loads(live.stdout)
    import os

    assert data["cpu"]["cores"] == len(re.findall(r"^processor\s*:", Path("/proc/cpuinfo").read_text(), re.M))
    assert data["adapter"] in ("cpu", "nvidia", "kunpeng", "phytium", "ascend", "hygon")
    assert os.cpu_count() is not None
    root = run_cli("hardware", "--json", "--sysroot", str(HW / "sysroot-util-linux-arm-A510-A710-A715-X3"))
    assert root.returncode == 0 and json.loads(root.stdout)["cpu"]["implementer"] == "0x41"
