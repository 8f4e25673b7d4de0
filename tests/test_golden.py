"""Golden sbatch scripts and argv per adapter: what each kind of partition sends to Slurm, reviewed as text.

Regenerate after an intended change with ``SUANLI_UPDATE_GOLDEN=1 pytest tests/test_golden.py`` and review
the diff. Machine-specific paths (interpreter, job folder, working folder) are replaced by placeholders.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest

from suanli import MPI, Array, Command, JobSpec, Resources, Training

GOLDEN = Path(__file__).parent / "golden"

CONFIG = """name: centre
backend: slurm
default_account: ai-lab
slurm: {conf: /etc/slurm/slurm.conf, signal_seconds: 90, max_array_size: 1001}
partitions:
  - {name: cpu, adapter: cpu, cpus_per_node: 64}
  - {name: kunpeng, adapter: kunpeng, cpus_per_node: 128, numa_nodes: 4, mpi_launcher: mpirun}
  - {name: phytium, adapter: phytium, cpus_per_node: 64, numa_nodes: 8}
  - {name: ascend, adapter: ascend, cpus_per_node: 192, accelerators_per_node: 8, max_time: 3d}
  - {name: nvidia, adapter: nvidia, cpus_per_node: 64, accelerators_per_node: 8}
"""

CASES: dict[str, JobSpec] = {
    "cpu-command": JobSpec(Command(["python", "sim.py", "--n", "1000"]), name="sim", partition="cpu",
                           resources=Resources(cpus_per_task=4, memory="8G", time="1h")),
    "kunpeng-mpi": JobSpec(MPI(["./lbm", "input.dat"], ranks=8), name="lbm", partition="kunpeng",
                           resources=Resources(nodes=2, tasks_per_node=4, cpus_per_task=32, time="4h")),
    "phytium-array": JobSpec(Command(["./sweep"]), name="sweep", partition="phytium", array=Array.parse("0-99%10"),
                             resources=Resources(cpus_per_task=8, time="30m")),
    "ascend-training": JobSpec(Training(script="train.py", args=("--epochs", "3")), name="llm",
                               partition="ascend", env={"HCCL_CONNECT_TIMEOUT": "3600"},
                               resources=Resources(nodes=2, accelerators="ascend:8", cpus_per_task=24, time="2d")),
    "nvidia-training": JobSpec(Training(module="trainer.main"), name="vit", partition="nvidia", max_restarts=2,
                               resources=Resources(accelerators="nvidia:4", cpus_per_task=8, time="12h")),
}


@pytest.fixture
def centre(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    (cfg / "centre.yaml").write_text(CONFIG)
    monkeypatch.setenv("SUANLI_CONFIG", str(cfg))
    from suanli.api import Client

    return Client()


def normalise(text: str, job_dir: str, job_id: str) -> str:
    return (text.replace(job_dir, "<JOB_DIR>").replace(job_id, "<JOB_ID>").replace(sys.executable, "<PYTHON>")
            .replace(os.getcwd(), "<WORKDIR>"))


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden_sbatch(centre: Any, case: str) -> None:
    plan, sub = centre.plan(CASES[case], cluster="centre")
    text = normalise(plan.script + "\n# sbatch argv:\n" + "\n".join(plan.argv) + "\n", plan.job_dir, plan.job_id)
    text = "\n".join(line for line in text.splitlines() if not line.startswith("export PYTHONPATH=")) + "\n"
    path = GOLDEN / f"{case}.sh"
    if os.environ.get("SUANLI_UPDATE_GOLDEN") == "1" or not path.exists():
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(text)
        if os.environ.get("SUANLI_UPDATE_GOLDEN") != "1":
            pytest.fail(f"{path} did not exist; written now: review it and commit it")
    assert text == path.read_text()


def test_golden_cases_differ_where_the_hardware_does(centre: Any) -> None:
    """What each adapter changes, checked on freshly planned scripts (not on the committed files)."""
    texts = {}
    for case, spec in CASES.items():
        plan, _ = centre.plan(spec, cluster="centre")
        texts[case] = plan.script + "\n" + "\n".join(plan.argv)
    assert "--gres=npu:8" in texts["ascend-training"] and "ASCEND_RT_VISIBLE_DEVICES" in texts["ascend-training"]
    assert "set_env.sh" in texts["ascend-training"] and "export HCCL_CONNECT_TIMEOUT=3600" in texts["ascend-training"]
    assert "--gres=gpu:4" in texts["nvidia-training"] and "--ntasks-per-node=4" in texts["nvidia-training"]
    assert "OMP_PROC_BIND=close" in texts["kunpeng-mpi"] and "mpirun" in texts["kunpeng-mpi"]
    assert "--map-by ppr:1:numa --bind-to numa" in texts["kunpeng-mpi"]  # 4 ranks per node on 4 NUMA nodes
    assert "OMP_PLACES=cores" in texts["phytium-array"] and "--array=0-99%10" in texts["phytium-array"]
    assert "--gres" not in texts["cpu-command"] and "OMP_PLACES" not in texts["cpu-command"]
    assert "--requeue" in texts["nvidia-training"] and "--no-requeue" in texts["cpu-command"]
