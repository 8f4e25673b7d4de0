"""Ray submission and status against the raw Jobs API client, measured in the same run on the same head. Needs
a running head, e.g. the test one:

    bash tests/ray/head.sh start /tmp/ray-bench && export $(cat /tmp/ray-bench/env)
    .venv/bin/python bench/bench_ray.py [--address http://127.0.0.1:8275] [--repeat 15] [--jobs 200]

Submissions alternate (raw, suanli, raw, ...) so both see the same load on the head.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import bench_cluster, report  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--address", default=os.environ.get("SUANLI_TEST_RAY_ADDRESS"))
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--jobs", type=int, default=200)
    args = ap.parse_args()
    if not args.address:
        raise SystemExit("give --address or set SUANLI_TEST_RAY_ADDRESS (see the docstring)")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    from ray.job_submission import JobSubmissionClient

    with tempfile.TemporaryDirectory() as tmp:
        bench_cluster(tmp, f"backend: ray\nray: {{address: '{args.address}'}}\n"
                           "partitions:\n  - {name: cpu, nodes: 1}\n")
        from suanli.api import Client
        from suanli.compute.base import JobRef
        from suanli.compute.ray.backend import RayBackend

        client = Client()
        raw = JobSubmissionClient(args.address)
        submitted: list[str] = []

        # The raw client sends exactly what suanli sends for the same job (entrypoint, resources, runtime_env,
        # metadata; a job folder written once, untimed), so the ratio is suanli's own overhead.
        from suanli.api import build_spec

        template, _ = client.plan(build_spec(["true"], time="5m"))
        template.write_job_dir()
        same = {k: v for k, v in template.details["submit_job"].items() if k != "submission_id"}

        def raw_submit() -> None:
            submitted.append(raw.submit_job(**same))

        def suanli_submit() -> None:
            submitted.append(client.submit(["true"], time="5m").id)

        raw_t: list[float] = []
        ours_t: list[float] = []
        for i in range(args.repeat + 2):  # two warm-up rounds
            for fn, out in ((raw_submit, raw_t), (suanli_submit, ours_t)):
                t = time.perf_counter()
                fn()
                if i >= 2:
                    out.append(time.perf_counter() - t)
        rows = [("raw JobSubmissionClient.submit_job(same request)", statistics.median(raw_t)),
                ("suanli Client.submit(['true'])", statistics.median(ours_t))]
        report(f"one command submission (median of {args.repeat}, interleaved)", rows, rows[0][0])
        print(f"ratio suanli/raw: {rows[1][1] / rows[0][1]:.2f} (goal <= 1.10)")

        # Status of N jobs: N refs over the jobs just submitted, one status_many vs one raw list_jobs.
        backend = client.backend("bench", "ray")
        assert isinstance(backend, RayBackend)
        refs = [JobRef(f"st{i:05d}", submitted[i % len(submitted)], str(Path(tmp) / "jobs" / f"st{i:05d}"), (None,))
                for i in range(args.jobs)]
        calls: list[int] = []
        bclient: Any = backend.client()
        real_list = bclient.list_jobs

        def counting() -> Any:
            calls.append(1)
            return real_list()

        bclient.list_jobs = counting
        per_poll: list[int] = []
        raw_s: list[float] = []
        ours_s: list[float] = []
        for _ in range(args.repeat):
            t = time.perf_counter()
            raw.list_jobs()
            raw_s.append(time.perf_counter() - t)
            calls.clear()
            t = time.perf_counter()
            got = backend.status_many(refs)
            ours_s.append(time.perf_counter() - t)
            per_poll.append(len(calls))
            assert len(got) == args.jobs
        n_ray = len(raw.list_jobs())
        rows = [("raw list_jobs()", statistics.median(raw_s)), ("suanli status_many", statistics.median(ours_s))]
        report(f"status of {args.jobs} jobs (median of {args.repeat}; the head holds {n_ray} job records)", rows,
               rows[0][0])
        print(f"list_jobs calls per poll: {statistics.mode(per_poll)} (max {max(per_poll)})")
        # Leave the head idle: let the queued `true` jobs finish (Ray would still run a job stopped while pending).
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and any(not j.status.is_terminal() for j in raw.list_jobs()):
            time.sleep(1)
        client.store.close()


if __name__ == "__main__":
    main()
