"""`suanli status ARRAY_ID` on the local backend for arrays of 1k, 10k and 50k tasks (it must be linear: the
per-task cost stays flat), and the submission of an array of the largest accepted size (100,000 on local):
wall time and the submitting process's peak memory (RSS).

Each array runs `sleep 600` one task at a time (``%1``), so while it is open one task runs and the rest wait;
"open" times status while the runner supervises it (state file read, registry refreshed), "ended" after it
was cancelled (terminal states come from the registry alone). Whole CLI processes, as a user runs them.

    .venv/bin/python bench/bench_status_array.py [--sizes 1000,10000,50000] [--repeat 3]

Writes bench/results/status_array.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import median_s, run_quiet  # noqa: E402

MAX_LOCAL_ARRAY = 100_000


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "suanli", *args]


def submit(size: int) -> tuple[str, float, float]:
    """Submit an array of ``size`` tasks; its id, wall seconds and the submitter's peak RSS in MiB."""
    t = time.perf_counter()
    proc = subprocess.Popen(cli("submit", "--array", f"0-{size - 1}%1", "-t", "1h", "--", "sleep", "600"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    proc.returncode = os.waitstatus_to_exitcode(status)
    out = proc.stdout.read() if proc.stdout else ""
    err = proc.stderr.read() if proc.stderr else ""
    if proc.returncode != 0:
        raise SystemExit(f"submit of {size} tasks failed: {err.strip()}")
    job = out.strip().split()[-1]
    return job, wall, usage.ru_maxrss / 1024


def wait_running(job: str) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        r = subprocess.run(cli("status", f"{job}_0", "--json"), capture_output=True, text=True)
        if r.returncode == 0 and json.loads(r.stdout)[0]["state"] == "RUNNING":
            return
        time.sleep(0.2)
    raise SystemExit(f"task 0 of {job} never started")


def end(job: str) -> None:
    subprocess.run(cli("cancel", job), capture_output=True, check=True)
    subprocess.run(cli("wait", job, "--timeout", "600"), capture_output=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1000,10000,50000")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    rows: list[dict[str, float | int]] = []
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["SUANLI_HOME"] = str(Path(tmp) / "home")
        os.environ.pop("SUANLI_CONFIG", None)
        os.chdir(tmp)
        # The largest accepted array first, so its submission runs on an empty registry like any first one.
        big, big_wall, big_rss = submit(MAX_LOCAL_ARRAY)
        end(big)
        for n in sizes:
            job, sub_wall, sub_rss = submit(n)
            wait_running(job)
            status = run_quiet(cli("status", job))
            open_s = median_s(status, args.repeat, warmup=1)
            end(job)
            ended_s = median_s(status, args.repeat, warmup=1)
            rows.append({"tasks": n, "submit_s": sub_wall, "submit_rss_mib": sub_rss, "status_open_s": open_s,
                         "status_ended_s": ended_s})
    result = {
        "python": platform.python_version(), "cpus": os.cpu_count(), "repeat": args.repeat,
        "status": rows,
        "max_array": {"tasks": MAX_LOCAL_ARRAY, "submit_s": big_wall, "submit_peak_rss_mib": big_rss},
    }
    out = Path(__file__).resolve().parent / "results"
    out.mkdir(exist_ok=True)
    (out / "status_array.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"\n`suanli status ARRAY_ID`, local backend, median of {args.repeat} CLI runs")
    print(f"{'tasks':>8} {'open s':>8} {'us/task':>8} {'ended s':>8} {'us/task':>8} {'submit s':>9} {'RSS MiB':>8}")
    for r in rows:
        n = int(r["tasks"])
        print(f"{n:>8} {r['status_open_s']:>8.2f} {r['status_open_s'] / n * 1e6:>8.1f} "
              f"{r['status_ended_s']:>8.2f} {r['status_ended_s'] / n * 1e6:>8.1f} {r['submit_s']:>9.2f} "
              f"{r['submit_rss_mib']:>8.0f}")
    print(f"\nsubmit of the largest accepted array ({MAX_LOCAL_ARRAY} tasks): {big_wall:.2f} s, "
          f"peak RSS {big_rss:.0f} MiB")


if __name__ == "__main__":
    main()
