"""`suanli status` over a large registry (the "Scale" issue, item 3): the default view (jobs of the last day;
here 8 recent ones) with 1k, 10k and 100k old finished jobs in the registry, against the same command on a
registry of only the 8 recent jobs, and `suanli status --all --json` per job (its time over `suanli --help`,
divided by the jobs). Whole processes in interleaved rounds, medians.

    .venv/bin/python bench/bench_status_scale.py [--label after] [--sizes 1000,10000,100000] [--repeat 7]

Writes bench/results/cli_scale-<label>.json; bench/bench_scale_plot.py draws the curves.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import run_quiet  # noqa: E402


def fill_history(home: Path, old: int, recent: int) -> None:
    """``old`` jobs that ended three days ago and ``recent`` that ended a minute ago, written in one
    transaction (columns every schema version has, so the committed code can read it too)."""
    from suanli.compute.store import Store

    store = Store(home)
    now = time.time()
    meta = json.dumps({"resources": {"nodes": 1, "cpus_per_task": 1, "time_limit": 3600}, "array": None,
                       "dependencies": [], "adapter": "cpu", "layout": {}})
    jobs, tasks = [], []
    for i in range(old + recent):
        jid = f"h{i:07d}"
        at = now - (3 * 86400 if i < old else 60) + i * 1e-3
        jobs.append((jid, f"job-{i}", "local", "local", jid, "command", "local", None, "bench", at,
                     str(home / "jobs" / jid), meta, 1))
        tasks.append((jid, -1, "COMPLETED", None, 0, at + 1, at + 2, 0, None))
    with store._write() as c:
        c.executemany("INSERT INTO jobs (id, name, cluster, backend, native_id, kind, partition, account, user, "
                      "submitted_at, job_dir, meta, done) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", jobs)
        c.executemany("INSERT INTO tasks (job_id, task, state, reason, restarts, started_at, ended_at, exit_code, "
                      "native_id) VALUES (?,?,?,?,?,?,?,?,?)", tasks)
    store.close()


def interleaved(fns: dict[str, Callable[[], object]], repeat: int) -> dict[str, float]:
    """Median seconds of each command, in alternating rounds after one warm-up round."""
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(repeat + 1):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            if r:
                samples[name].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in samples.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--label", default="after")
    ap.add_argument("--sizes", default="1000,10000,100000")
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()
    exe = [sys.executable, "-m", "suanli"]
    out: dict[str, Any] = {"label": args.label, "when": time.strftime("%Y-%m-%dT%H:%M:%S"), "repeat": args.repeat,
                           "python": platform.python_version(), "cores": os.cpu_count(), "registry": []}
    # Bytecode is written and used (as users run suanli); without it each edited module is compiled again in
    # every process, which the figures would count as status time.
    base_env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    with tempfile.TemporaryDirectory() as tmp:
        empty = Path(tmp) / "empty"
        fill_history(empty, 0, 8)
        env_e = dict(base_env, SUANLI_HOME=str(empty))
        for n in [int(x) for x in args.sizes.split(",") if x]:
            home = Path(tmp) / f"h{n}"
            fill_history(home, n, 8)
            env_f = dict(base_env, SUANLI_HOME=str(home))
            med = interleaved({"empty": run_quiet([*exe, "status"], env_e), "full": run_quiet([*exe, "status"], env_f),
                               "all_json": run_quiet([*exe, "status", "--all", "--json"], env_f),
                               "startup": run_quiet([*exe, "--help"], env_e)}, args.repeat)
            per_job = max(0.0, med["all_json"] - med["startup"]) / (n + 8)
            out["registry"].append({"jobs": n + 8, "status_empty_s": med["empty"], "status_s": med["full"],
                                    "ratio": med["full"] / med["empty"], "all_json_s": med["all_json"],
                                    "startup_s": med["startup"], "all_json_us_per_job": per_job * 1e6})
            print(f"{n + 8:>7} jobs: status {med['full'] * 1000:7.1f} ms (8 jobs only: {med['empty'] * 1000:6.1f} ms, "
                  f"x{med['full'] / med['empty']:.2f});  status --all --json {med['all_json'] * 1000:8.1f} ms "
                  f"= {per_job * 1e6:5.1f} us/job over `suanli --help`", flush=True)
    dest = Path(__file__).resolve().parent / "results" / f"cli_scale-{args.label}.json"
    dest.parent.mkdir(exist_ok=True)
    dest.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {dest}")


if __name__ == "__main__":
    main()
