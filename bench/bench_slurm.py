"""Slurm submission and status against the raw Slurm commands and submitit, measured in the same run on the
same cluster. Needs a running cluster (SLURM_CONF), e.g. the test one:

    bash tests/slurm/cluster.sh start /tmp/slurm-bench && export SLURM_CONF=/tmp/slurm-bench/slurm.conf
    .venv/bin/python bench/bench_slurm.py [--items 1000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import bench_cluster, median_s, report, run_quiet  # noqa: E402


def noop(x: int) -> int:
    return x


def scancel_all() -> None:
    subprocess.run(["scancel", "--user", os.environ.get("USER", "root")], capture_output=True)
    subprocess.run(["scancel", "-u", str(os.getuid())], capture_output=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--partition", default="debug")
    ap.add_argument("--account", default="acct-a")
    args = ap.parse_args()
    conf = os.environ.get("SLURM_CONF")
    if not conf:
        raise SystemExit("set SLURM_CONF to a running cluster's slurm.conf (see the docstring)")
    import submitit

    with tempfile.TemporaryDirectory() as tmp:
        bench_cluster(tmp, f"backend: slurm\ndefault_account: {args.account}\nslurm: {{conf: {conf}}}\n"
                           f"partitions:\n  - {{name: {args.partition}, nodes: 1}}\n")
        from suanli.api import Client
        from suanli.compute.slurm import backend as sb

        client = Client()
        executor = submitit.AutoExecutor(folder=Path(tmp) / "submitit", cluster="slurm")
        executor.update_parameters(slurm_partition=args.partition, slurm_account=args.account, timeout_min=5)
        n = args.items
        raw_array = ["sbatch", "--parsable", f"--partition={args.partition}", f"--account={args.account}",
                     "--hold", f"--array=0-{n - 1}", "--wrap", "true"]
        raw_one = ["sbatch", "--parsable", f"--partition={args.partition}", f"--account={args.account}", "--hold",
                   "--wrap", "true"]

        calls: list[str] = []
        real_run = sb.SlurmBackend.run

        def counting(self: sb.SlurmBackend, argv: list[str], what: str, input_text: str | None = None):  # type: ignore[no-untyped-def]
            calls.append(argv[0])
            return real_run(self, argv, what, input_text)

        sb.SlurmBackend.run = counting  # type: ignore[method-assign]

        def suanli_map() -> None:
            calls.clear()
            client.map(noop, range(n), time="5m")
            assert calls.count("sbatch") == 1, calls

        rows = [
            (f"raw sbatch --array=0-{n - 1}", median_s(run_quiet(raw_array), args.repeat, 1, scancel_all)),
            (f"suanli.map of {n} items (one sbatch)", median_s(suanli_map, args.repeat, 1, scancel_all)),
            (f"submitit map_array of {n} items", median_s(lambda: executor.map_array(noop, range(n)), args.repeat,
                                                           1, scancel_all)),
        ]
        scancel_all()
        report(f"map of {n} items: time until queued (median of {args.repeat})", rows, rows[0][0])
        rows = [
            ("raw sbatch (one job)", median_s(run_quiet(raw_one), args.repeat * 3, 2, scancel_all)),
            ("suanli.submit(fn)", median_s(lambda: client.submit(noop, 1, time="5m"), args.repeat * 3, 2,
                                           scancel_all)),
            ("submitit executor.submit(fn)", median_s(lambda: executor.submit(noop, 1), args.repeat * 3, 2,
                                                      scancel_all)),
        ]
        scancel_all()
        report("single Function submission", rows, rows[0][0])

        # Status of n unfinished jobs: n held jobs registered as suanli jobs, one refresh vs one raw sacct.
        from suanli.compute.store import JobRow
        from suanli.jobs.state import JobState

        ids = []
        for _ in range(n):
            ids.append(subprocess.run(raw_one, capture_output=True, text=True, check=True).stdout.strip())
        store = client.store
        now = time.time()
        for i, nid in enumerate(ids):
            store.insert(JobRow(f"st{i:05d}", "held", "bench", "slurm", nid, "command", args.partition,
                                args.account, "bench", now, str(Path(tmp) / "jobs" / f"st{i:05d}"), {}, False),
                         [None], JobState.PENDING, None)
        rows_db = store.query(only_open=True)
        rows_db = [r for r in rows_db if r.id.startswith("st")]
        sacct = ["sacct", "--parsable2", "--noheader", "-X", "-D", "-j", ",".join(ids), "-o",
                 "JobID,JobIDRaw,State,ExitCode,Start,End,Reason"]
        raw_t = median_s(run_quiet(sacct), args.repeat)
        per_poll: list[int] = []

        def poll() -> None:
            calls.clear()
            client.refresh(rows_db)
            per_poll.append(len(calls))

        ours = median_s(poll, args.repeat)
        scancel_all()
        report(f"status of {n} unfinished jobs (median of {args.repeat})",
               [("raw sacct -j <all ids>", raw_t), ("suanli refresh (status_many)", ours)], "raw sacct -j <all ids>")
        print(f"scheduler calls per poll: {statistics.mode(per_poll)} (max {max(per_poll)})")

        exe = str(Path(sys.executable).with_name("suanli"))
        env = dict(os.environ)
        rows = [
            ("sbatch (whole process)", median_s(run_quiet(raw_one, env), args.repeat * 2, 2, scancel_all)),
            ("suanli submit -- true (whole process)", median_s(run_quiet([exe, "submit", "--", "true"], env),
                                                                args.repeat * 2, 2, scancel_all)),
        ]
        scancel_all()
        report("one command submission, whole process", rows, rows[0][0])


if __name__ == "__main__":
    main()
