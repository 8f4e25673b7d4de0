"""A sweep of many short tasks, end to end (submit, run, results in hand): the dask engine (pilot workers) against
one Slurm array through suanli (the default engine), on the same cluster in the same run. Optionally also Ray
tasks on a running Ray cluster. Needs a running Slurm cluster (SLURM_CONF), e.g. the test one:

    bash tests/slurm/cluster.sh start /tmp/slurm-bench && export SLURM_CONF=/tmp/slurm-bench/slurm.conf
    .venv/bin/python bench/bench_sweep.py [--items 500] [--task-ms 10] [--workers 2] [--ray-address ADDR]

``--compare-direct`` instead times dask-jobqueue's own ``SLURMCluster`` against suanli's dask engine, the same
tasks and pilot count, interleaved for ``--rounds`` rounds; it prints medians and writes them as JSON to
bench/results/ (``first`` is the time from the call to the first item finishing: the pilots' start; ``tail`` the
time from the last item finishing to the call returning: the teardown):

    .venv/bin/python bench/bench_sweep.py --compare-direct --items 200 --task-ms 10 --workers 4 --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import bench_cluster, report  # noqa: E402

TASK_S = 0.01


def work(x: int) -> int:
    time.sleep(TASK_S)
    return x * x


def stamped(x: int) -> tuple[int, float]:
    """``work`` plus the wall-clock time it finished, to measure how long the sweep takes to return after."""
    time.sleep(TASK_S)
    return x * x, time.time()


def scancel_own(client: Any) -> None:
    """Cancel the Slurm jobs this run submitted (its own registry), never anyone else's on a shared cluster."""
    ids = [n for r in client.store.query(only_open=True) if r.native_id for n in r.native_id.split(",")]
    if ids:
        subprocess.run(["scancel", *ids], capture_output=True)


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def main() -> None:
    global TASK_S
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=500)
    ap.add_argument("--task-ms", type=float, default=10.0)
    ap.add_argument("--workers", type=int, default=2, help="dask pilot workers (max_concurrent)")
    ap.add_argument("--partition", default="debug")
    ap.add_argument("--account", default="acct-a")
    ap.add_argument("--timeout", type=float, default=900.0, help="give up on the array after this many seconds")
    ap.add_argument("--skip-array", action="store_true")
    ap.add_argument("--ray-address", default=None,
                    help="also time the same tasks as Ray tasks on this running Ray cluster (ray.init(address=...))")
    ap.add_argument("--compare-direct", action="store_true",
                    help="time dask-jobqueue's SLURMCluster directly against suanli's dask engine (JSON results)")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds of --compare-direct")
    args = ap.parse_args()
    TASK_S = args.task_ms / 1000.0
    conf = os.environ.get("SLURM_CONF")
    if not conf:
        raise SystemExit("set SLURM_CONF to a running cluster's slurm.conf (see the docstring)")
    if args.compare_direct:
        compare_direct(args, conf)
        return
    n = args.items
    expected = [i * i for i in range(n)]
    rows: list[tuple[str, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        bench_cluster(tmp, f"backend: slurm\ndefault_account: {args.account}\nslurm: {{conf: {conf}}}\n"
                           f"partitions:\n  - {{name: {args.partition}, nodes: 1}}\n", "status_poll_max_s: 1\n")
        from suanli.api import Client

        client = Client()
        label = f"{n} x {args.task_ms:g} ms"
        secs, sweep = timed(lambda: client.map(work, range(n), engine="dask", max_concurrent=args.workers,
                                               time="30m"))
        assert sweep.results() == expected
        rows.append((f"dask engine, {args.workers} pilot workers", secs))
        print(f"dask: {secs:.1f} s, pilot jobs {sweep.pilot_jobs}", flush=True)
        if not args.skip_array:
            def array() -> list[Any]:
                handle = client.map(work, range(n), time="30m")
                return handle.results(timeout=args.timeout)  # type: ignore[no-any-return]

            try:
                secs, out = timed(array)
                assert out == expected
                rows.append(("slurm array (engine array)", secs))
                print(f"array: {secs:.1f} s", flush=True)
            finally:
                scancel_own(client)
        if args.ray_address:
            import ray

            ray.init(address=args.ray_address)
            remote = ray.remote(work)

            def ray_tasks() -> list[Any]:
                return ray.get([remote.remote(i) for i in range(n)])  # type: ignore[no-any-return]

            secs, out = timed(ray_tasks)
            assert out == expected
            rows.append(("ray tasks", secs))
            ray.shutdown()
        client.store.close()
    report(f"sweep of {label}: wall time end to end (one run each)", rows, rows[0][0])


# ---------------------------------------------------------------- dask-jobqueue directly vs suanli's dask engine
def run_direct(n: int, workers: int, partition: str, account: str, memory_mb: int) -> tuple[list[Any], float]:
    """dask-jobqueue as its documentation shows it: SLURMCluster + adapt + Client, closed on the way out."""
    import distributed
    from dask_jobqueue.slurm import SLURMCluster

    dist: Any = distributed
    with SLURMCluster(cores=1, processes=1, memory=f"{memory_mb}MiB", queue=partition, account=account,
                      walltime="00:30:00", python=sys.executable, interface="lo",
                      scheduler_options={"dashboard_address": None}, silence_logs="error") as cluster:
        cluster.adapt(minimum_jobs=0, maximum_jobs=workers)
        with dist.Client(cluster) as dclient:
            out = dclient.gather(dclient.map(stamped, range(n), pure=False))
    return out, time.time()


def run_suanli(client: Any, n: int, workers: int, memory_mb: int) -> tuple[list[Any], float]:
    sweep = client.map(stamped, range(n), engine="dask", max_concurrent=workers, time="30m", memory=f"{memory_mb}M")
    return sweep.results(), time.time()  # type: ignore[no-any-return]


def compare_direct(args: argparse.Namespace, conf: str) -> None:
    """Interleaved rounds (direct, suanli, direct, ...), so load from other users of the cluster hits both."""
    n, expected = args.items, [i * i for i in range(args.items)]
    memory_mb = 1000  # the same --mem and worker memory limit for both
    samples: dict[str, dict[str, list[float]]] = {k: {"wall_s": [], "first_s": [], "tail_s": []}
                                                  for k in ("direct", "suanli")}
    # Slurm may still write a cancelled pilot's output file while the folder is removed: not an error.
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as tmp:
        bench_cluster(tmp, f"backend: slurm\ndefault_account: {args.account}\nslurm: {{conf: {conf}}}\n"
                           f"partitions:\n  - {{name: {args.partition}, nodes: 1}}\n", "status_poll_max_s: 1\n")
        from suanli.api import Client

        client = Client()
        try:
            for rnd in range(args.rounds):
                for what in ("direct", "suanli"):
                    t, t_wall = time.perf_counter(), time.time()
                    if what == "direct":
                        out, returned = run_direct(n, args.workers, args.partition, args.account, memory_mb)
                    else:
                        out, returned = run_suanli(client, n, args.workers, memory_mb)
                    wall = time.perf_counter() - t
                    assert [v for v, _ in out] == expected
                    first = min(stamp for _, stamp in out) - t_wall
                    tail = returned - max(stamp for _, stamp in out)
                    samples[what]["wall_s"].append(wall)
                    samples[what]["first_s"].append(first)
                    samples[what]["tail_s"].append(tail)
                    print(f"round {rnd + 1} {what}: {wall:.2f} s (first item done after {first:.2f} s, "
                          f"tail {tail:.2f} s)", flush=True)
        finally:
            scancel_own(client)
            client.store.close()
    medians = {k: {m: statistics.median(v) for m, v in d.items()} for k, d in samples.items()}
    label = f"{n} x {args.task_ms:g} ms, {args.workers} pilot workers, {args.rounds} rounds"
    report(f"sweep of {label}: wall time end to end (median)",
           [("dask-jobqueue SLURMCluster directly", medians["direct"]["wall_s"]),
            ("suanli map(engine='dask')", medians["suanli"]["wall_s"])], "dask-jobqueue SLURMCluster directly")
    for metric, what in (("first_s", "call -> first item done"), ("tail_s", "last item done -> call returned")):
        print(f"{what}, median: direct {medians['direct'][metric]:.2f} s, suanli {medians['suanli'][metric]:.2f} s")
    out_dir = Path(__file__).resolve().parent / "results"
    out_dir.mkdir(exist_ok=True)
    path = out_dir / f"sweep-direct-vs-suanli-{time.strftime('%Y%m%dT%H%M%S')}.json"
    path.write_text(json.dumps({
        "benchmark": "bench_sweep.py --compare-direct", "command": sys.argv, "items": n, "task_ms": args.task_ms,
        "workers": args.workers, "rounds": args.rounds, "memory_mb": memory_mb, "partition": args.partition,
        "machine": {"host": platform.node(), "python": platform.python_version(), "cpus": os.cpu_count()},
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "samples": samples, "medians": medians,
    }, indent=2) + "\n")
    print(f"results: {path}")


if __name__ == "__main__":
    main()
