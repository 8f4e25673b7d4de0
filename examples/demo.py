"""The suanli demo on the embedded local backend: a Function job, a 2-process DDP training on synthetic
data, an mpi4py simulation, then the status table. Run it with `make demo`."""

from __future__ import annotations

import random
import subprocess
import sys

import suanli
from suanli import MPI, JobSpec, Resources, Training


def estimate_pi(samples: int, seed: int = 0) -> float:
    rng = random.Random(seed)
    inside = sum(1 for _ in range(samples) if rng.random() ** 2 + rng.random() ** 2 <= 1.0)
    return 4.0 * inside / samples


def main() -> int:
    print("1) a Python function as a job")
    job = suanli.submit(estimate_pi, 200_000, kwargs={"seed": 7}, name="estimate-pi", time="5m")
    print(f"   job {job.id}: pi ~ {job.result(timeout=120):.4f}")

    print("2) a sweep: suanli.map over 8 seeds (one array job)")
    sweep = suanli.map(estimate_pi, [20_000] * 8, name="pi-sweep", time="5m")
    values = sweep.results(timeout=300)
    print(f"   array {sweep.id}: mean of {len(values)} estimates {sum(values) / len(values):.4f}")

    print("3) DDP training with 2 processes (torch.distributed, gloo on CPU)")
    train = suanli.submit(JobSpec(
        Training(script="train_ddp.py", args=("--steps", "30"), nproc_per_node=2),
        name="ddp-synthetic", resources=Resources(tasks_per_node=2, time="10m"),
    ))
    print("4) an MPI simulation with 2 ranks (mpi4py)")
    sim = suanli.submit(JobSpec(
        MPI([sys.executable, "mpi_sim.py", "--steps", "300"], ranks=2),
        name="heat-1d", resources=Resources(tasks_per_node=2, time="10m"),
    ))
    failed = 0
    for j in (train, sim):
        state = j.wait(timeout=600)
        out = [line for line in j.logs().splitlines() if line.startswith(("ddp:", "mpi:"))]
        print(f"   job {j.id} {state.value}: {out[-1] if out else '(no summary line)'}")
        if not state.is_success:
            failed += 1
            print(j.logs("stderr")[-2000:], file=sys.stderr)
    print("5) suanli status")
    subprocess.run([sys.executable, "-m", "suanli", "status"], check=False)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
