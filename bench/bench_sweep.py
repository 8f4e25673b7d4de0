"""A sweep of many short tasks, end to end (submit, run, results in hand): the dask engine (pilot workers) against
one Slurm array through suanli (the default engine), on the same cluster in the same run. Optionally also Ray
tasks on a running Ray cluster. Needs a running Slurm cluster (SLURM_CONF), e.g. the test one:

    bash tests/slurm/cluster.sh start /tmp/slurm-bench && export SLURM_CONF=/tmp/slurm-bench/slurm.conf
    .venv/bin/python bench/bench_sweep.py [--items 500] [--task-ms 10] [--workers 2] [--ray-address ADDR]
"""

from __future__ import annotations

import argparse
import os
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


def scancel_all() -> None:
    subprocess.run(["scancel", "-u", str(os.getuid())], capture_output=True)


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
    args = ap.parse_args()
    TASK_S = args.task_ms / 1000.0
    conf = os.environ.get("SLURM_CONF")
    if not conf:
        raise SystemExit("set SLURM_CONF to a running cluster's slurm.conf (see the docstring)")
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
                scancel_all()
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


if __name__ == "__main__":
    main()
