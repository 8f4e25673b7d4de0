"""The Hygon DCU adapter, added through the adapter seams only: kinds, GRES, device variable, Ray resource,
detection from real captured hy-smi / rocm-smi / cpuinfo outputs (tests/fixtures/hardware/README.md), and a
``dcu`` job end to end on the Slurm test cluster (fake ``dcu`` GRES) with its usage booked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import run_cli

from suanli.adapters import accelerator_kinds, get_adapter
from suanli.adapters.detect import detect, parse_cpuinfo
from suanli.adapters.hygon import HygonAdapter, is_hygon_cpu, parse_hy_smi
from suanli.errors import UsageError
from suanli.jobs.resources import Resources
from suanli.jobs.state import JobState

HW = Path(__file__).parent / "fixtures" / "hardware"
K100 = HW / "hy-smi" / "paddlenlp__K100_AI_x4_hy-smi_dtk-24.04.1.txt"
Z100L = HW / "hy-smi" / "flagperf__Z100L_x8_rocm-smi_dtk-23.10.1_indented.txt"
HYGON_CPUINFO = HW / "cpuinfo" / "inclavare-shelter__hygon-c86-7365_csv-guest_1cpu_cpuinfo.txt"
NPU_SMI = HW / "npu-smi" / "vllm-ascend-issue-901__910B2_x8_npu-smi-23.0.3.txt"
NVIDIA_CSV = HW / "nvidia-smi" / "nvidia_gpu_exporter__H100-80GB-HBM3_x1_590.48.01_idle_query-gpu-all-fields.csv"


# ---------------------------------------------------------------- kinds and adapter facts
def test_dcu_is_a_kind_because_the_hygon_adapter_offers_it() -> None:
    assert "dcu" in accelerator_kinds()
    assert Resources(accelerators="dcu:4").accelerator_kind == "dcu"
    assert Resources(accelerators="hygon:2").accelerator_kind == "dcu"
    assert Resources(accelerators="npu:8").accelerator_kind == "ascend"  # the others keep their aliases
    assert Resources(accelerators="gpu:1").accelerator_kind == "nvidia"
    with pytest.raises(UsageError, match=r"valid kinds: .*dcu"):
        Resources(accelerators="tpu:4")


def test_hygon_adapter_facts() -> None:
    a = get_adapter("hygon")
    assert isinstance(a, HygonAdapter)
    assert (a.accelerator_kind, a.gres_name, a.device_env_var) == ("dcu", "dcu", "HIP_VISIBLE_DEVICES")
    assert (a.torch_device, a.torch_backend, a.scheduler_sets_devices) == ("cuda", "nccl", False)
    res = Resources(nodes=2, accelerators="dcu:4", cpus_per_task=8)
    assert a.ray_resources(res) == {"num_cpus": 16.0, "num_gpus": 8.0}
    env = a.environment(res)
    assert env["OMP_NUM_THREADS"] == "8" and env["HSA_FORCE_FINE_GRAIN_PCIE"] == "1"
    assert any("env.sh" in line and "/opt/dtk" in line for line in a.setup_lines())
    a.check(res, "partition dcu")
    with pytest.raises(UsageError, match="not ascend"):
        a.check(Resources(accelerators="ascend:1"), "partition dcu")
    # Eight NUMA nodes on a 2-socket Hygon node: one rank per NUMA node is bound to it.
    assert a.mpi_binding("srun", 8, 8) == ["--cpu-bind=ldoms"]


# ---------------------------------------------------------------- detection on real captured outputs
def test_hy_smi_tables_from_public_captures() -> None:
    (k100,) = parse_hy_smi(K100.read_text())
    assert (k100.kind, k100.count, k100.memory_mb, k100.health) == ("dcu", 4, None, "OK")
    (z100,) = parse_hy_smi(Z100L.read_text())  # older layout: Fan column, no Mode, indented lines
    assert (z100.count, z100.health) == (8, "OK")
    na = K100.read_text().replace("Normal", "N/A")  # the Mode a driver that does not report it prints
    assert parse_hy_smi(na)[0].health == "Unknown"
    with pytest.raises(UsageError, match="not `hy-smi`"):
        parse_hy_smi(NPU_SMI.read_text(), "--smi x")


def test_hygon_cpu_ids_from_cpuinfo() -> None:
    cpu = parse_cpuinfo(HYGON_CPUINFO.read_text())
    assert (cpu.vendor, cpu.family, cpu.cores) == ("HygonGenuine", "0x18", 1)
    assert cpu.model == "Hygon C86 7365 24-core Processor" and is_hygon_cpu(cpu)
    amd = parse_cpuinfo((HW / "sysroot-util-linux-x86_64-hpdl585/proc/cpuinfo").read_text())
    assert amd.family == "0x10" and not is_hygon_cpu(amd)


def test_tool_outputs_go_to_the_adapter_that_claims_them() -> None:
    hygon, ascend, nvidia = get_adapter("hygon"), get_adapter("ascend"), get_adapter("nvidia")
    assert hygon.claims_tool_output(K100.read_text()) and hygon.claims_tool_output(Z100L.read_text())
    assert not hygon.claims_tool_output(NPU_SMI.read_text()) and not hygon.claims_tool_output(NVIDIA_CSV.read_text())
    assert not ascend.claims_tool_output(K100.read_text()) and not nvidia.claims_tool_output(K100.read_text())
    # ROCm's own words ("GPU" column): a Hygon DCU only on a Hygon CPU host, not an AMD GPU elsewhere.
    rocm_words = K100.read_text().replace("DCU     Temp", "GPU     Temp")
    assert not hygon.claims_tool_output(rocm_words, None)
    assert hygon.claims_tool_output(rocm_words, parse_cpuinfo(HYGON_CPUINFO.read_text()))


def test_detect_classifies_a_dcu_node_from_any_smi_file() -> None:
    cpu_only = detect(cpuinfo=str(HYGON_CPUINFO))
    assert cpu_only.adapter == "cpu" and cpu_only.accelerators == []  # a Hygon CPU alone is a plain x86 node
    hw = detect(cpuinfo=str(HYGON_CPUINFO), smi=[str(K100)])
    assert hw.adapter == "hygon" and [(a.kind, a.count) for a in hw.accelerators] == [("dcu", 4)]
    mixed = detect(cpuinfo=str(HYGON_CPUINFO), smi=[str(NPU_SMI), str(NVIDIA_CSV)])  # old tools, generic flag
    assert {a.kind for a in mixed.accelerators} == {"ascend", "nvidia"} and mixed.adapter == "ascend"
    with pytest.raises(UsageError, match=r"--smi .*hy-smi"):
        detect(cpuinfo=str(HYGON_CPUINFO), smi=[str(HYGON_CPUINFO)])


def test_cli_hardware_smi_flag(home: Path) -> None:
    r = run_cli("hardware", "--json", "--cpuinfo", str(HYGON_CPUINFO), "--smi", str(Z100L))
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["adapter"] == "hygon" and data["cpu"]["family"] == "0x18"
    assert data["accelerators"] == [{"kind": "dcu", "model": "Hygon DCU", "count": 8, "memory_mb": None,
                                     "health": "OK"}]
    text = run_cli("hardware", "--cpuinfo", str(HYGON_CPUINFO), "--smi", str(K100))
    assert "adapter:      hygon" in text.stdout and "(family 0x18)" in text.stdout
    assert "4 x dcu Hygon DCU" in text.stdout
    entry = run_cli("hardware", "--partition-entry", "dcu", "--cpuinfo", str(HYGON_CPUINFO), "--smi", str(K100))
    assert "adapter: hygon" in entry.stdout and "accelerators_per_node: 4" in entry.stdout
    bad = run_cli("hardware", "--cpuinfo", str(HYGON_CPUINFO), "--smi", str(HYGON_CPUINFO))
    assert bad.returncode == 2 and "--smi" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


# ---------------------------------------------------------------- Ray: a DCU is a Ray GPU
def test_ray_up_declares_dcus_as_gpus(home: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "ray.yaml"
    cfg.write_text("name: rdcu\nbackend: ray\nray: {address: http://127.0.0.1:8999}\npartitions:\n"
                   "  - {name: dcu, adapter: hygon, nodes: 1, cpus_per_node: 32, accelerators_per_node: 4}\n"
                   "  - {name: npu, adapter: ascend, nodes: 1, cpus_per_node: 32, accelerators_per_node: 8}\n")
    r = run_cli("ray", "up", "--config", str(cfg), "--cluster", "rdcu", "--partition", "dcu", "--dry-run", "--json")
    assert r.returncode == 0, r.stderr
    argv = json.loads(r.stdout)["argv"]
    assert argv[argv.index("--num-gpus") + 1] == "4" and "--resources" not in argv
    r = run_cli("ray", "up", "--config", str(cfg), "--cluster", "rdcu", "--partition", "npu", "--dry-run", "--json")
    argv = json.loads(r.stdout)["argv"]
    assert "--num-gpus" not in argv and json.loads(argv[argv.index("--resources") + 1]) == {"NPU": 8.0}


# ---------------------------------------------------------------- inside a job
def test_runtime_takes_the_named_hygon_adapter() -> None:
    from suanli.runtime.env import runtime_adapter

    a = runtime_adapter({"SUANLI_ADAPTER": "hygon"})
    assert a.name == "hygon" and (a.torch_device, a.torch_backend) == ("cuda", "nccl")
    # This test machine has no ROCm/DTK torch: hygon is not found by itself.
    assert HygonAdapter().present() is False


# ---------------------------------------------------------------- end to end on Slurm
@pytest.fixture
def dcu_client(slurm: Any, slurm_conf: str) -> Iterator[Any]:
    """A Client with a cluster config whose partition ``dcu`` uses the hygon adapter on the test cluster
    (tests/slurm/cluster.sh gives its node Gres=dcu:4 and a dcu partition)."""
    env = dict(os.environ, SLURM_CONF=slurm_conf)
    node = subprocess.run(["scontrol", "show", "node"], capture_output=True, text=True, env=env).stdout
    if "dcu:4" not in node:
        if os.environ.get("CI") == "true":
            pytest.fail("the Slurm test cluster has no dcu GRES: start it with tests/slurm/cluster.sh")
        pytest.skip("this Slurm test cluster predates the dcu GRES of tests/slurm/cluster.sh; restart it")
    cfg = Path(os.environ["SUANLI_CONFIG"]) / "testslurm-dcu.yaml"
    cfg.write_text(f"name: testslurm-dcu\nbackend: slurm\ndefault_account: acct-a\nslurm: {{conf: {slurm_conf}}}\n"
                   "partitions:\n  - {name: dcu, adapter: hygon, nodes: 1, cpus_per_node: 8, accelerators_per_node: 4,"
                   " max_time: 2h, charge: {accelerator_hour: 0.8}}\n")
    from suanli.api import Client

    c = Client()
    yield c
    open_jobs = [r for r in c.store.query(only_open=True) if r.native_id]
    if open_jobs:
        subprocess.run(["scancel", *[n for r in open_jobs for n in (r.native_id or "").split(",")]],
                       capture_output=True, env=env)
    c.store.close()


@pytest.mark.slurm
def test_dcu_job_end_to_end_on_slurm(dcu_client: Any, home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from suanli.accounting.ledger import Ledger

    dry = run_cli("submit", "--dry-run", "--cluster", "testslurm-dcu", "--partition", "dcu", "--accelerators",
                  "dcu:2", "--time", "1h", "--", "python", "train.py")
    assert dry.returncode == 0, dry.stderr
    assert "--gres=dcu:2" in dry.stdout and "2 dcu accelerator-hours" in dry.stdout
    Ledger(None, home).close()  # a ledger exists: ended jobs are booked into it
    monkeypatch.setenv("HIP_VISIBLE_DEVICES", "3")  # the submitter's value must not leak into the job
    job = dcu_client.submit(["sh", "-c", 'echo "$HIP_VISIBLE_DEVICES"; sleep 2'], cluster="testslurm-dcu",
                            partition="dcu", accelerators="dcu:2", time="5m")
    assert job.wait(timeout=180) is JobState.COMPLETED, job.logs("stderr")
    ids = job.logs().strip().split(",")
    assert len(ids) == 2 and all(i.isdigit() and 0 <= int(i) < 4 for i in ids), ids
    script = (Path(dcu_client.store.get(job.id).job_dir) / "job.sh").read_text()
    assert "GRES=dcu:" in script and 'export HIP_VISIBLE_DEVICES="$SUANLI_ACCELERATOR_IDS"' in script
    # Booked from sacct's AllocTRES gres/dcu=2: accelerator kind dcu, 2 DCUs x the elapsed time.
    # slurmdbd may have the job's end before the rest of its record (its partition): a record booked then is
    # rewritten whole by the next sync (an upsert on the record id), so wait for the partition to be there.
    ledger = Ledger(None, home)
    deadline = time.time() + 90
    while True:
        dcu_client.accounts.sync("testslurm-dcu", since=time.time() - 3600)
        with ledger.db.transaction() as tx:
            row = tx.one("SELECT accelerator_kind, accelerators, accelerator_seconds, elapsed_s, charge "
                         "FROM usage_records WHERE job_id = ? AND partition_name IS NOT NULL", (job.id,))
        if row is not None or time.time() > deadline:
            break
        time.sleep(1)
    ledger.close()
    assert row is not None, "the dcu job was never booked"
    kind, count, acc_s, elapsed, charge = row
    assert (kind, count) == ("dcu", 2) and elapsed >= 2
    assert acc_s == pytest.approx(2 * elapsed) and charge == pytest.approx(0.8 * acc_s / 3600)


def test_hygon_needs_no_backend_change() -> None:
    """The adapter module is the only place that names dcu: jobs/, compute/, runtime/ and cli/ do not."""
    root = Path(__file__).parent.parent / "suanli"
    for layer in ("jobs", "compute", "runtime", "cli", "accounting"):
        for f in (root / layer).rglob("*"):
            if f.is_file() and f.suffix in (".py", ".tmpl"):
                text = f.read_text().lower()
                assert "dcu" not in text and "hygon" not in text and "hip_visible" not in text, f
    assert sys.modules.get("suanli.adapters.hygon") is not None
