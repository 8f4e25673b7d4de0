"""Adapters: what each kind of hardware adds to a job, and the in-job runtime's errors without the hardware."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from suanli.adapters import adapter_names, get_adapter
from suanli.errors import UsageError
from suanli.jobs.resources import Resources


def test_registry_lists_builtins_and_refuses_unknown() -> None:
    assert adapter_names()[:5] == ["cpu", "kunpeng", "phytium", "ascend", "nvidia"]
    with pytest.raises(UsageError, match="valid adapters: cpu, kunpeng, phytium, ascend, nvidia"):
        get_adapter("sparc")


@pytest.mark.parametrize(("name", "device", "backend", "gres"), [
    ("cpu", "cpu", "gloo", None), ("kunpeng", "cpu", "gloo", None), ("phytium", "cpu", "gloo", None),
    ("ascend", "npu", "hccl", "npu"), ("nvidia", "cuda", "nccl", "gpu"),
])
def test_torch_device_backend_and_gres(name: str, device: str, backend: str, gres: str | None) -> None:
    a = get_adapter(name)
    assert (a.torch_device, a.torch_backend, a.gres_name) == (device, backend, gres)


def test_environment_per_adapter() -> None:
    res = Resources(cpus_per_task=6, accelerators="ascend:4")
    env = get_adapter("ascend").environment(res)
    assert env["OMP_NUM_THREADS"] == "6" and int(env["HCCL_CONNECT_TIMEOUT"]) >= 120
    assert "set_env.sh" in get_adapter("ascend").setup_lines()[0]
    k = get_adapter("kunpeng").environment(Resources(cpus_per_task=32))
    assert k == {"OMP_NUM_THREADS": "32", "OMP_PLACES": "cores", "OMP_PROC_BIND": "close"}
    assert get_adapter("cpu").environment(Resources()) == {"OMP_NUM_THREADS": "1"}


def test_ray_requests_are_per_job() -> None:
    res = Resources(nodes=2, cpus_per_task=8, accelerators="ascend:8")
    assert get_adapter("ascend").ray_resources(res) == {"num_cpus": 16.0, "NPU": 16.0}
    assert get_adapter("nvidia").ray_resources(Resources(accelerators="nvidia:2")) == {"num_cpus": 1.0,
                                                                                       "num_gpus": 2.0}


def test_mpi_binding_follows_the_numa_layout() -> None:
    k = get_adapter("kunpeng")
    assert k.mpi_binding("mpirun", 4, 4) == ["--map-by", "ppr:1:numa", "--bind-to", "numa"]
    assert k.mpi_binding("mpirun", 128, 4) == ["--map-by", "core", "--bind-to", "core"]
    assert k.mpi_binding("srun", 8, 8) == ["--cpu-bind=ldoms"]
    assert get_adapter("cpu").mpi_binding("srun", 8, 8) == []


def test_accelerator_kind_mismatch_is_refused() -> None:
    with pytest.raises(UsageError, match="nvidia"):
        get_adapter("ascend").check(Resources(accelerators="nvidia:1"), "partition 'ai'")
    with pytest.raises(UsageError, match="no accelerators"):
        get_adapter("kunpeng").check(Resources(accelerators=2), "partition 'kp'")


def test_init_distributed_on_ascend_without_torch_npu_names_what_to_install() -> None:
    pytest.importorskip("torch")
    code = ("import os; os.environ['SUANLI_ADAPTER'] = 'ascend'\n"
            "from suanli.runtime import init_distributed\n"
            "try:\n    init_distributed()\nexcept RuntimeError as e:\n    print(e)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "torch-npu" in r.stdout or "torch_npu" in r.stdout, r.stdout + r.stderr


# ---------------------------------------------------------------- the adapter of a job started without suanli
def test_runtime_adapter_follows_suanli_launch_when_named() -> None:
    from suanli.runtime import runtime_adapter

    assert runtime_adapter({"SUANLI_ADAPTER": "kunpeng"}).name == "kunpeng"
    assert runtime_adapter({"SUANLI_ADAPTER": "nvidia"}).torch_backend == "nccl"


def test_runtime_adapter_detects_visible_hardware_when_not_named(monkeypatch: pytest.MonkeyPatch) -> None:
    """Plain torchrun on a GPU node (no SUANLI_ADAPTER) must pick the GPU, not cpu + gloo (the H200 defect):
    the runtime asks each accelerator adapter, in registration order, whether this process sees its hardware."""
    from suanli.adapters.ascend import AscendAdapter
    from suanli.adapters.nvidia import NvidiaAdapter
    from suanli.runtime import environment, runtime_adapter

    asked: list[str] = []

    def seen(name: str, answer: bool) -> object:
        def present(self: object) -> bool:
            asked.append(name)
            return answer
        return present

    monkeypatch.setattr(NvidiaAdapter, "present", seen("nvidia", True))
    monkeypatch.setattr(AscendAdapter, "present", seen("ascend", False))
    picked = runtime_adapter({})
    assert (picked.name, picked.torch_device, picked.torch_backend) == ("nvidia", "cuda", "nccl")
    assert asked == ["ascend", "nvidia"]  # CPU-only adapters are never asked: they have nothing to find
    assert environment({}).adapter == "auto"

    monkeypatch.setattr(NvidiaAdapter, "present", seen("nvidia", False))
    assert runtime_adapter({}).name == "cpu"


def test_this_machine_without_accelerators_trains_on_cpu_with_gloo() -> None:
    """The real detection on this (GPU-less) machine, in a fresh process as plain torchrun would start it."""
    pytest.importorskip("torch")
    code = ("import os; os.environ.pop('SUANLI_ADAPTER', None)\n"
            "from suanli.runtime import init_distributed, runtime_adapter\n"
            "a = runtime_adapter(); d = init_distributed(); print(a.name, d.type, a.torch_backend)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["cpu", "cpu", "gloo"]


def test_hygon_is_registered_and_nvidia_leaves_rocm_torch_alone() -> None:
    assert "hygon" in adapter_names()
    a = get_adapter("hygon")
    assert (a.torch_device, a.torch_backend, a.gres_name, a.accelerator_kind) == ("cuda", "nccl", "dcu", "dcu")
    assert get_adapter("nvidia").scheduler_sets_devices and not get_adapter("ascend").scheduler_sets_devices
    assert get_adapter("ascend").ray_resource == "NPU" and get_adapter("nvidia").ray_resource == "num_gpus"


THIRD_PARTY = '''
from suanli.adapters.base import Adapter

class TpuAdapter(Adapter):
    name = "faketpu"
    accelerator_kind = "tpu"
    kind_aliases = ("tensor",)
    gres_name = "tpu"
    device_env_var = "TPU_VISIBLE_CHIPS"
    ray_resource = None  # a kind Ray cannot place
'''


def test_a_third_party_adapter_adds_its_kind_through_the_entry_point_group(tmp_path: Path) -> None:
    """An installed package that registers an adapter in ``suanli.adapters`` adds an accelerator kind that
    resources, GRES booking and Ray requests know, with no change to suanli (a real dist-info on sys.path)."""
    (tmp_path / "faketpu.py").write_text(THIRD_PARTY)
    info = tmp_path / "faketpu-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: faketpu\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[suanli.adapters]\nfaketpu = faketpu:TpuAdapter\n")
    code = '''
import json
from suanli.adapters import accelerator_kinds, get_adapter
from suanli.accounts_slurm import parse_usage
from suanli.errors import UsageError
from suanli.jobs.resources import Resources
res = Resources(accelerators="tensor:2")
lines = ["JobID|State|AllocCPUS|AllocNodes|AllocTRES|ElapsedRaw|CPUTimeRAW|Start|End",
         "7|COMPLETED|4|1|cpu=4,gres/tpu=2,mem=1G,node=1|100|400|2024-01-01T00:00:00|2024-01-01T00:01:40"]
(rec,) = parse_usage(lines, "c")
try:
    get_adapter("faketpu").ray_resources(res)
    ray = "accepted"
except UsageError as exc:
    ray = str(exc)
print(json.dumps([accelerator_kinds(), res.accelerator_kind, rec.accelerator_kind, rec.accelerators, ray]))
'''
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), *sys.path]))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    kinds, kind, booked, count, ray = json.loads(r.stdout)
    assert "tpu" in kinds and kind == "tpu" and (booked, count) == ("tpu", 2)
    assert "Ray has no resource for tpu" in ray
