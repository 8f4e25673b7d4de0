"""Multi-node torch DDP through suanli against the same script under a hand-written ``sbatch`` + ``srun torchrun``
on the same 3-node cluster, in the same run: training throughput (samples/s measured inside the script, after a
warm-up) and start latency (submission to every rank running). Needs the 3-node test cluster and torch:

    bash tests/slurm/multinode.sh start /tmp/mn && export SLURM_CONF=/tmp/mn/slurm.conf
    .venv/bin/python bench/bench_multinode.py [--nodes 2,3] [--repeat 3] [--steps 60]

Runs alternate (suanli, hand-written, suanli, ...) so a busy machine weighs on both alike; medians are printed
with their ratio and written to bench/results/multinode.json. The hand-written job is what a user of this cluster
would write: torchrun's static rendezvous on the first node's address and GLOO_SOCKET_IFNAME set to the nodes'
interface (eth0 here), which suanli finds by itself, and OMP_NUM_THREADS set to the CPUs per task as suanli
sets it (without it two ranks on this 2-core machine fight over the cores and the hand-written job runs ~10x
slower).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TRAIN = r'''
import json, os, sys, time
t_start = time.time()
import torch, torch.distributed as dist
out = sys.argv[1]; steps = int(sys.argv[2])
rank = int(os.environ["RANK"])
open(os.path.join(out, f"start-{rank}"), "w").write(repr(t_start))
dist.init_process_group("gloo")
torch.manual_seed(0)
model = torch.nn.parallel.DistributedDataParallel(torch.nn.Sequential(
    torch.nn.Linear(256, 512), torch.nn.ReLU(), torch.nn.Linear(512, 10)))
opt = torch.optim.SGD(model.parameters(), lr=0.01)
x, y = torch.randn(128, 256), torch.randint(0, 10, (128,))
warm = 10
for step in range(warm + steps):
    if step == warm:
        dist.barrier(); t0 = time.perf_counter()
    opt.zero_grad(); torch.nn.functional.cross_entropy(model(x), y).backward(); opt.step()
dist.barrier()
rate = steps * 128 * dist.get_world_size() / (time.perf_counter() - t0)
if rank == 0:
    open(os.path.join(out, "rate"), "w").write(repr(rate))
dist.destroy_process_group()
'''

HAND = """#!/bin/bash
head=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
addr=$(scontrol show node "$head" | grep -o 'NodeAddr=[^ ]*' | cut -d= -f2)
export GLOO_SOCKET_IFNAME=eth0
export OMP_NUM_THREADS="$SLURM_CPUS_PER_TASK"  # torchrun leaves it unset for one process per node
# torchrun's static rendezvous: its c10d one resolves the node's own hostname, which no DNS here knows.
srun bash -c 'exec torchrun --nnodes="$SLURM_NNODES" --nproc_per_node=1 --node_rank="$SLURM_NODEID" \\
    --master_addr="$0" --master_port=29517 "$@"' "$addr" "$@"
"""


def wait_file(path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {path}")
        time.sleep(0.1)


def result(out: Path, nodes: int, t_submit: float, timeout: float) -> tuple[float, float]:
    """(samples/s, seconds from submission to the last rank's start)."""
    wait_file(out / "rate", timeout)
    starts = []
    for r in range(nodes):
        wait_file(out / f"start-{r}", 30)
        starts.append(float((out / f"start-{r}").read_text()))
    return float((out / "rate").read_text()), max(starts) - t_submit


def run_suanli(client: object, script: Path, out: Path, nodes: int, steps: int) -> tuple[float, float]:
    from suanli import JobSpec, Resources, Training

    t = time.time()
    job = client.submit_spec(JobSpec(  # type: ignore[attr-defined]
        Training(script=str(script), args=(str(out), str(steps))),
        resources=Resources(nodes=nodes, tasks_per_node=1, time="10m")))
    got = result(out, nodes, t, 300)
    job.wait(timeout=120)
    return got


def run_hand(conf: str, script: Path, hand: Path, out: Path, nodes: int, steps: int) -> tuple[float, float]:
    t = time.time()
    r = subprocess.run(["sbatch", "--parsable", "--partition=cpu", f"--nodes={nodes}", "--ntasks-per-node=1",
                        "--cpus-per-task=1", "--time=10", "--account=acct-a", f"--output={out}/hand.out",
                        str(hand), str(script), str(out), str(steps)],
                       capture_output=True, text=True, env=dict(os.environ, SLURM_CONF=conf,
                                                                 PATH=f"{Path(sys.executable).parent}:"
                                                                      f"{os.environ['PATH']}"))
    if r.returncode != 0:
        raise SystemExit(f"sbatch failed: {r.stderr.strip()}")
    return result(out, nodes, t, 300)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", default="2,3")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--steps", type=int, default=60)
    args = ap.parse_args()
    conf = os.environ.get("SLURM_CONF")
    if not conf:
        raise SystemExit("set SLURM_CONF to the 3-node cluster's slurm.conf (see the docstring)")
    results: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        base = Path(tmp)
        os.environ["SUANLI_HOME"] = str(base / "home")
        cfg = base / "cfg"
        cfg.mkdir()
        (cfg / "mn.yaml").write_text(f"name: mn\nbackend: slurm\ndefault_account: acct-a\nslurm: {{conf: {conf}}}\n"
                                     "partitions:\n  - {name: cpu, nodes: 3, cpus_per_node: 2}\n")
        (cfg / "settings.yaml").write_text("default_cluster: mn\nstatus_poll_max_s: 1\n")
        os.environ["SUANLI_CONFIG"] = str(cfg)
        script, hand = base / "train.py", base / "hand.sh"
        script.write_text(TRAIN)
        hand.write_text(HAND)
        from suanli.api import Client

        client = Client()
        for nodes in (int(n) for n in args.nodes.split(",")):
            rows: dict[str, list[tuple[float, float]]] = {"suanli": [], "hand": []}
            for i in range(args.repeat):
                for kind in ("suanli", "hand"):
                    out = base / f"{kind}-{nodes}-{i}"
                    out.mkdir()
                    got = (run_suanli(client, script, out, nodes, args.steps) if kind == "suanli"
                           else run_hand(conf, script, hand, out, nodes, args.steps))
                    rows[kind].append(got)
            med = {k: (statistics.median(r for r, _ in v), statistics.median(s for _, s in v))
                   for k, v in rows.items()}
            item = {"nodes": nodes, "suanli_samples_s": med["suanli"][0], "hand_samples_s": med["hand"][0],
                    "throughput_ratio": med["suanli"][0] / med["hand"][0],
                    "suanli_start_s": med["suanli"][1], "hand_start_s": med["hand"][1],
                    "start_ratio": med["suanli"][1] / med["hand"][1], "runs": rows}
            results.append(item)
            print(f"{nodes} nodes: throughput suanli {med['suanli'][0]:.0f} vs hand {med['hand'][0]:.0f} samples/s "
                  f"(x{item['throughput_ratio']:.3f}); start suanli {med['suanli'][1]:.2f} s vs hand "
                  f"{med['hand'][1]:.2f} s (x{item['start_ratio']:.2f})")
        client.close()
    dest = Path(__file__).resolve().parent / "results" / "multinode.json"
    dest.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {dest}")


if __name__ == "__main__":
    main()
