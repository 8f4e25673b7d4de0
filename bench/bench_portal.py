"""The portal under load: page latency with a large ledger and registry, /metrics time, and many concurrent
browser-like clients, all on loopback against a real `suanli serve` process.

    .venv/bin/python bench/bench_portal.py [--records 1000000] [--jobs 100000] [--clients 50] [--seconds 60]
                                           [--repeat 40] [--json bench/results/portal.json]

The ledger (SQLite) gets ``--records`` usage records over 180 days, 40 accounts, 200 users, 2 clusters, 3
partitions and 3 accelerator kinds, plus a quota per account; the registry gets ``--jobs`` finished jobs of
which 300 ended this week (the ones /jobs lists) and 20 unfinished local jobs. Each page is fetched ``--repeat``
times in a row (p50/p95), then ``--clients`` threads, each with its own keep-alive connection, loop over the
pages for ``--seconds`` (every status, the error count, p95). Goals (issue 13): every page p95 < 300 ms,
/metrics < 100 ms, no error under load.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def fill_ledger(home: Path, n: int) -> float:
    from suanli.accounting.ledger import Ledger
    from suanli.accounting.quota import Quota
    from suanli.accounting.records import UsageRecord

    rng = random.Random(7)
    now = time.time()

    def records() -> Iterator[UsageRecord]:
        for i in range(n):
            kind = ("ascend", "nvidia", None)[i % 3]
            end = now - rng.random() * 180 * 86400
            el = 60.0 + rng.random() * 7200
            cpus = rng.choice((1, 4, 16, 64))
            accs = rng.choice((1, 2, 8)) if kind else 0
            yield UsageRecord(
                record_id=f"slurm:c{i % 2}|{i}|-1|0", cluster=f"c{i % 2}", backend="slurm", native_id=str(i),
                job_id=None, array_task=None, attempt=0, user=f"u{i % 200}", account=f"acct{i % 40}",
                partition=("cpu", "npu", "gpu")[i % 3], adapter=None, accelerator_kind=kind, nodes=1, cpus=cpus,
                accelerators=accs, submit_time=end - el - 30, start_time=end - el, end_time=end, elapsed_s=el,
                state="COMPLETED", cpu_seconds=cpus * el, accelerator_seconds=accs * el,
                charge=cpus * el / 3600 + 2 * accs * el / 3600, total_cpu_s=None, source="sacct")

    t = time.perf_counter()
    ledger = Ledger(None, home)
    ledger.record(records())
    for a in range(40):
        ledger.set_quota(Quota(account=f"acct{a}", cpu_hours=1e6, accelerator_hours={"ascend": 1e5}), "bench")
    ledger.close()
    return time.perf_counter() - t


def fill_registry(home: Path, n: int, user: str) -> str:
    """``n`` finished jobs (300 of them this week) and 20 unfinished ones; returns a recent job's id."""
    from suanli.compute.store import Store

    store = Store(home)
    now = time.time()
    meta = json.dumps({"resources": {"nodes": 1, "cpus_per_task": 1}, "array": None, "dependencies": [],
                       "adapter": "cpu", "layout": {}})
    jobs, tasks = [], []
    for i in range(n):
        jid = f"p{i:07d}"
        at = now - (30 * 86400 if i < n - 300 else 3600) + i * 1e-3
        jobs.append((jid, f"job-{i}", "local", "local", jid, "command", "local", f"acct{i % 40}", user, at,
                     str(home / "jobs" / jid), meta, 1))
        tasks.append((jid, -1, "COMPLETED", None, 0, at + 1, at + 2, 0, None))
    with store._write() as c:
        c.executemany("INSERT INTO jobs (id, name, cluster, backend, native_id, kind, partition, account, user, "
                      "submitted_at, job_dir, meta, done) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", jobs)
        c.executemany("INSERT INTO tasks (job_id, task, state, reason, restarts, started_at, ended_at, exit_code, "
                      "native_id) VALUES (?,?,?,?,?,?,?,?,?)", tasks)
    store.close()
    return f"p{n - 1:07d}"


def submit_open(env: dict[str, str], k: int) -> list[str]:
    out = []
    for _ in range(k):
        r = subprocess.run([sys.executable, "-m", "suanli", "submit", "-A", "acct1", "--time", "2h", "--", "sleep",
                            "600"], env=env,
                           capture_output=True, text=True, check=True)
        out.append(r.stdout.split()[-1])
    return out


def token(env: dict[str, str], *args: str) -> str:
    r = subprocess.run([sys.executable, "-m", "suanli", "serve", "token", "create", *args], env=env,
                       capture_output=True, text=True, check=True)
    return r.stdout.split()[-1]


def fetch(conn: http.client.HTTPConnection, path: str, tok: str) -> tuple[int, float]:
    t = time.perf_counter()
    conn.request("GET", path, headers={"Authorization": f"Bearer {tok}", "Accept": "text/html"})
    r = conn.getresponse()
    r.read()
    return r.status, time.perf_counter() - t


def p95(xs: list[float]) -> float:
    return sorted(xs)[min(len(xs) - 1, int(0.95 * len(xs)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--jobs", type=int, default=100_000)
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--repeat", type=int, default=40)
    ap.add_argument("--json", type=Path, default=REPO / "bench" / "results" / "portal.json")
    args = ap.parse_args()
    from suanli.compute.base import current_user

    tmp = Path(tempfile.mkdtemp(prefix="suanli-portal-bench-"))
    home = tmp / "home"
    env = dict(os.environ, SUANLI_HOME=str(home), HOME=str(tmp))
    env.pop("SUANLI_CONFIG", None)
    env.pop("SUANLI_LEDGER_URL", None)
    os.environ.update(SUANLI_HOME=str(home))
    load_s = fill_ledger(home, args.records)
    recent = fill_registry(home, args.jobs, current_user())
    print(f"filled: {args.records} records in {load_s:.0f} s, {args.jobs} jobs", flush=True)
    open_jobs = submit_open(env, 20)
    user, admin = token(env, "--user", current_user()), token(env, "--user", "boss", "--admin")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "suanli", "serve", "--port", str(port)], env=env, cwd=tmp,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pages = [("/jobs", user), (f"/jobs/{recent}", user), ("/usage", user), ("/quotas", user),
             ("/usage?by=account,month", admin), ("/usage?by=user,partition,accelerator", admin),
             ("/usage?by=account,day&since=30d", admin), ("/jobs", admin), ("/metrics", admin)]
    results: dict[str, Any] = {"records": args.records, "jobs": args.jobs, "pages": {}}
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                c.request("GET", "/healthz")
                if c.getresponse().status == 200:
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit("suanli serve did not answer /healthz in 60 s") from None
                time.sleep(0.2)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        print(f"{'page':<44} {'p50 ms':>8} {'p95 ms':>8}")
        for path, tok in pages:
            who = "admin" if tok == admin else "user"
            fetch(conn, path, tok)  # warm
            times = []
            for _ in range(args.repeat):
                status, dt = fetch(conn, path, tok)
                assert status == 200, (path, status)
                times.append(dt)
            key = f"{path} ({who})"
            results["pages"][key] = {"p50_ms": 1e3 * statistics.median(times), "p95_ms": 1e3 * p95(times)}
            print(f"{key:<44} {1e3 * statistics.median(times):8.1f} {1e3 * p95(times):8.1f}", flush=True)
        results["load"] = load(port, pages, args.clients, args.seconds)
        ld = results["load"]
        print(f"\n{args.clients} clients x {args.seconds:g} s: {ld['requests']} requests, {ld['errors']} errors, "
              f"p50 {ld['p50_ms']:.0f} ms, p95 {ld['p95_ms']:.0f} ms, {ld['rps']:.0f} req/s")
    finally:
        server.terminate()
        server.wait(15)
        subprocess.run([sys.executable, "-m", "suanli", "cancel", *open_jobs], env=env, capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")


def load(port: int, pages: list[tuple[str, str]], clients: int, seconds: float) -> dict[str, Any]:
    """``clients`` threads, each one keep-alive connection looping over the pages, for ``seconds``."""
    stop = time.monotonic() + seconds
    times: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()

    def client(i: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        k = i
        while time.monotonic() < stop:
            path, tok = pages[k % len(pages)]
            k += 1
            try:
                status, dt = fetch(conn, path, tok)
            except (OSError, http.client.HTTPException) as exc:
                with lock:
                    errors.append(f"{path}: {exc}")
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                continue
            with lock:
                times.append(dt)
                if status != 200:
                    errors.append(f"{path}: HTTP {status}")

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {"clients": clients, "seconds": seconds, "requests": len(times), "errors": len(errors),
            "first_errors": errors[:5], "p50_ms": 1e3 * statistics.median(times), "p95_ms": 1e3 * p95(times),
            "rps": len(times) / wall}


if __name__ == "__main__":
    main()
