"""CLI start-up: `suanli --help` and `suanli status` with 1,000 jobs in the registry, whole-process medians,
beside `python3 -c pass` measured in the same run. Goal: under 100 ms on a 2-core machine.

    .venv/bin/python bench/bench_cli.py [--repeat 21]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import median_s, report, run_quiet  # noqa: E402

HEAVY = ("ray", "torch", "dask", "distributed", "submitit", "psycopg")


def fill_registry(home: Path, n: int) -> None:
    from suanli.compute.store import JobRow, Store, TaskUpdate
    from suanli.jobs.state import JobState

    store = Store(home)
    now = time.time()
    for i in range(n):
        jid = f"bench{i:05d}"
        store.insert(JobRow(jid, f"job-{i}", "local", "local", jid, "command", "local", None, "bench",
                            now - 3600 + i, str(home / "jobs" / jid), {}, True), [None], JobState.PENDING, None)
    store.update_tasks(TaskUpdate(f"bench{i:05d}", None, JobState.COMPLETED, None, 0, now - 60, now, 0)
                       for i in range(n))
    store.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=21)
    ap.add_argument("--jobs", type=int, default=1000)
    args = ap.parse_args()
    py = sys.executable
    exe = str(Path(py).with_name("suanli"))
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        fill_registry(home, args.jobs)
        env = dict(os.environ, SUANLI_HOME=str(home))
        rows = [
            ("python3 -c pass", median_s(run_quiet([py, "-c", "pass"], env), args.repeat)),
            ("suanli --help", median_s(run_quiet([exe, "--help"], env), args.repeat)),
            (f"suanli status ({args.jobs} jobs)", median_s(run_quiet([exe, "status"], env), args.repeat)),
            (f"suanli status --json ({args.jobs} jobs)", median_s(run_quiet([exe, "status", "--json"], env),
                                                                args.repeat)),
            ("python -m suanli --help", median_s(run_quiet([py, "-m", "suanli", "--help"], env), args.repeat)),
        ]
    report(f"CLI start-up, median of {args.repeat} whole-process runs ({os.cpu_count()} cores)", rows,
           "python3 -c pass")
    imp = subprocess.run([py, "-X", "importtime", "-m", "suanli", "--help"], capture_output=True, text=True)
    mods = {ln.split("|")[-1].strip() for ln in imp.stderr.splitlines() if "|" in ln}
    heavy = sorted(m for m in mods if m.split(".")[0] in HEAVY)
    print(f"\n`python -X importtime -m suanli --help`: {len(mods)} modules; heavy ones: {heavy or 'none'}")


if __name__ == "__main__":
    main()
