"""Training through real torchrun and MPI through real mpirun, on the local backend."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from suanli import MPI, JobSpec, JobState, Resources, Training

REPO = Path(__file__).resolve().parents[1]

needs_torch = pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch not installed")
needs_mpi4py = pytest.mark.skipif(importlib.util.find_spec("mpi4py") is None, reason="mpi4py not installed")

RANK_PROBE = """
import json, os, sys
import torch, torch.distributed as dist
from suanli.runtime import environment, init_distributed, shutdown
env = environment()
device = init_distributed()
t = torch.tensor([float(env.rank + 1)])
dist.all_reduce(t)
keys = ["RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"]
out = {k: os.environ.get(k) for k in keys}
out.update(sum=t.item(), backend=dist.get_backend(), launcher=env.launcher, argv=sys.argv[1:])
json.dump(out, open(os.path.join(sys.argv[1], f"rank{env.rank}.json"), "w"))
shutdown()
"""


@pytest.mark.slow
@needs_torch
def test_training_gives_every_rank_the_torchrun_environment(client: Any, tmp_path: Path) -> None:
    script = tmp_path / "probe.py"
    script.write_text(RANK_PROBE)
    out = tmp_path / "out"
    out.mkdir()
    job = client.submit(JobSpec(Training(script=str(script), args=(str(out), "x y"), nproc_per_node=2),
                                resources=Resources(tasks_per_node=2, time="5m")))
    assert job.wait(timeout=300) is JobState.COMPLETED, job.logs("stderr")[-3000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["RANK"] for r in ranks] == ["0", "1"]
    assert [r["LOCAL_RANK"] for r in ranks] == ["0", "1"]
    assert all(r["WORLD_SIZE"] == "2" and r["LOCAL_WORLD_SIZE"] == "2" for r in ranks)
    assert all(r["MASTER_ADDR"] and r["MASTER_PORT"] and r["MASTER_PORT"].isdigit() for r in ranks)
    assert all(r["sum"] == 3.0 and r["backend"] == "gloo" and r["launcher"] == "torchrun" for r in ranks)
    assert ranks[0]["argv"] == [str(out), "x y"]


@pytest.mark.slow
@needs_torch
def test_example_ddp_training_runs(client: Any) -> None:
    job = client.submit(JobSpec(
        Training(script=str(REPO / "examples" / "train_ddp.py"), args=("--steps", "5"), nproc_per_node=2),
        resources=Resources(tasks_per_node=2, time="5m"),
    ))
    assert job.wait(timeout=300) is JobState.COMPLETED, job.logs("stderr")[-3000:]
    line = [x for x in job.logs().splitlines() if x.startswith("ddp:")]
    assert line and "world_size=2" in line[0] and "backend=gloo" in line[0]


@pytest.mark.slow
@needs_mpi4py
def test_mpi_job_runs_the_requested_ranks(client: Any, tmp_path: Path) -> None:
    prog = tmp_path / "ranks.py"
    # One file per rank: mpirun forwards the ranks' stdout in fragments that may interleave.
    prog.write_text("import sys\nfrom mpi4py import MPI\nc = MPI.COMM_WORLD\ns = c.allreduce(c.Get_rank() + 1)\n"
                    "open(f'{sys.argv[1]}/{c.Get_rank()}', 'w').write(f'{c.Get_rank()} {c.Get_size()} {s}')\n")
    out = tmp_path / "out"
    out.mkdir()
    # ranks=2 with tasks_per_node=1: the ranks decide what runs (and what is held: 2 CPUs, within a 2-core node).
    job = client.submit(JobSpec(MPI([sys.executable, str(prog), str(out)], ranks=2),
                                resources=Resources(tasks_per_node=1, time="5m")))
    assert job.wait(timeout=300) is JobState.COMPLETED, job.logs("stderr")[-3000:]
    rows = sorted(tuple(map(int, p.read_text().split())) for p in out.iterdir())
    assert rows == [(0, 2, 3), (1, 2, 3)]


@pytest.mark.slow
@needs_mpi4py
def test_example_mpi_simulation_conserves_heat(client: Any) -> None:
    job = client.submit(JobSpec(MPI([sys.executable, str(REPO / "examples" / "mpi_sim.py"), "--steps", "50"],
                                    ranks=2), resources=Resources(tasks_per_node=2, time="5m")))
    assert job.wait(timeout=300) is JobState.COMPLETED, job.logs("stderr")[-3000:]
    line = [x for x in job.logs().splitlines() if x.startswith("mpi:")][0]
    total = float(line.rsplit("total_heat=", 1)[1])
    assert abs(total - 100.0 * 1000) < 1e-6  # 10% of 10,000 cells at 100 degrees


ENV_PROBE = (
    "import json, os, sys\nfrom suanli.runtime import environment\ne = environment()\n"
    "open(os.path.join(sys.argv[1], str(e.rank)), 'w').write(json.dumps([e.launcher, e.rank, e.world_size, "
    "e.local_rank, e.local_world_size]))\n"
)


@pytest.mark.slow
def test_runtime_environment_under_real_mpirun(client: Any, tmp_path: Path) -> None:
    prog = tmp_path / "env_probe.py"
    prog.write_text(ENV_PROBE)
    out = tmp_path / "out"
    out.mkdir()
    job = client.submit(JobSpec(MPI([sys.executable, str(prog), str(out)], ranks=2),
                                resources=Resources(tasks_per_node=2, time="5m")))
    assert job.wait(timeout=120) is JobState.COMPLETED, job.logs("stderr")[-2000:]
    got = sorted(json.loads(p.read_text()) for p in out.iterdir())
    assert got == [["mpirun", 0, 2, 0, 2], ["mpirun", 1, 2, 1, 2]]
