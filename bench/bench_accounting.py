"""Accounting at a centre's scale: 1,000,000 usage records on SQLite (and PostgreSQL when a server is given).

Prints, each against a baseline measured in the same run:
- `suanli usage --by account,month` as a whole process vs the bare GROUP BY query it runs (goal < 1 s);
- sync ingest from sacct --parsable2 text (parse + store, streamed) in records/s and the child's peak RSS
  (goals >= 50,000/s, < 300 MB) vs parsing alone;
- one admission check (the quota sums of one account) vs the bare SUM query (goal < 5 ms).

  .venv/bin/python bench/bench_accounting.py [--records 1000000] [--pg postgresql://postgres@127.0.0.1:15432/postgres]
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _util import median_s  # noqa: E402

from suanli.accounting.estimate import worst_case  # noqa: E402
from suanli.accounting.ledger import Ledger  # noqa: E402
from suanli.accounting.quota import Quota  # noqa: E402
from suanli.accounting.sacct import FIELDS, parse_usage  # noqa: E402
from suanli.jobs.resources import Resources  # noqa: E402

ACCOUNTS = [f"acct-{i:03d}" for i in range(100)]
USERS = [f"user{i:04d}" for i in range(1000)]


def sacct_lines(n: int, seed: int = 7) -> Iterator[str]:
    """sacct --parsable2 -X -D text for n finished allocations over the last year (as FIELDS orders them)."""
    rnd = random.Random(seed)
    now = time.time()
    yield "|".join(FIELDS) + "\n"
    for i in range(n):
        end = now - rnd.random() * 365 * 86400
        elapsed = rnd.randint(10, 86400)
        start = end - elapsed
        cpus = rnd.choice((1, 4, 8, 32, 64))
        gpus = rnd.choice((0, 0, 0, 1, 8))
        tres = f"billing={cpus},cpu={cpus},mem={cpus * 4}G,node=1" + (f",gres/npu={gpus}" if gpus else "")
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(start))
        te = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(end))
        yield (f"{1000000 + i}|{1000000 + i}|{rnd.choice(USERS)}|{rnd.choice(ACCOUNTS)}|"
               f"{'ai' if gpus else 'cpu'}|COMPLETED|{cpus}|1|{tres}|{elapsed}|{cpus * elapsed}|"
               f"{elapsed // 2}:00.000|{ts}|{ts}|{te}\n")


def child_ingest(path: str, url: str | None, home: str) -> None:
    """Runs in a fresh process so its peak RSS is the ingest's own."""
    led = Ledger(url, Path(home))
    t = time.perf_counter()
    with open(path) as fh:
        n = led.record(parse_usage(fh, "bench"))
    dt = time.perf_counter() - t
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{n} {dt} {rss_mb}")
    led.close()


def bench_db(label: str, url: str | None, home: Path, text: Path, n: int, env: dict[str, str]) -> None:
    print(f"\n== {label}: {n:,} records")
    # Parsing alone, the floor of any ingest.
    t = time.perf_counter()
    with open(text) as fh:
        parsed = sum(1 for _ in parse_usage(fh, "bench"))
    parse_s = time.perf_counter() - t
    r = subprocess.run([sys.executable, __file__, "--child-ingest", str(text), "--home", str(home),
                        *(["--url", url] if url else [])], capture_output=True, text=True, env=env, check=True)
    stored, ingest_s, rss = r.stdout.split()
    print(f"{'parse only':<44} {parsed / parse_s:>12,.0f} records/s")
    print(f"{'sync ingest (parse + store, streamed)':<44} {int(stored) / float(ingest_s):>12,.0f} records/s  "
          f"peak RSS {float(rss):.0f} MB  ({float(ingest_s) / parse_s:.2f}x parse only)")

    led = Ledger(url, home)
    rows = led.report(["account", "month"])
    assert sum(x["jobs"] for x in rows) == n, "the report does not add up to the records"
    raw_sql = ("SELECT account, month, COUNT(*), SUM(cpu_seconds), SUM(accelerator_seconds), SUM(charge) "
               "FROM usage_records GROUP BY account, month ORDER BY account, month")

    def raw_query() -> None:
        with led.db.transaction() as tx:
            tx.all(raw_sql)

    raw = median_s(raw_query, 5, 1)
    api = median_s(lambda: led.report(["account", "month"]), 5, 1)
    cli_env = dict(env, SUANLI_HOME=str(home), **({"SUANLI_LEDGER_URL": url} if url else {}))
    cli = median_s(lambda: subprocess.run([sys.executable, "-m", "suanli", "usage", "--by", "account,month",
                                           "--json"], stdout=subprocess.DEVNULL, env=cli_env, check=True), 5, 1)
    print(f"{'GROUP BY account, month (bare SQL)':<44} {raw * 1000:>10.1f} ms")
    print(f"{'Ledger.report(account, month)':<44} {api * 1000:>10.1f} ms  ({api / raw:.2f}x)")
    print(f"{'suanli usage --by account,month (process)':<44} {cli * 1000:>10.1f} ms  ({cli / raw:.2f}x)")

    led.set_quota(Quota(account="acct-042", cpu_hours=1e9, accelerator_hours={"ascend": 1e9}, charge=1e12), "bench")
    est = worst_case(Resources(cpus_per_task=8, time="2h", accelerators="ascend:2"), 1, 1.0, 2.0)

    def admit() -> None:
        led.admit(job_id="bench", cluster="bench", account="acct-042", user="user0001", est=est, reserve=False)

    def bare_sum() -> None:
        with led.db.transaction() as tx:
            lo, hi = time.time() - 30 * 86400, time.time()
            tx.all("SELECT accelerator_kind, SUM(cpu_seconds), SUM(accelerator_seconds), SUM(charge) "
                   "FROM usage_records WHERE account = ? AND month >= ? AND month <= ? AND end_time >= ? "
                   "AND end_time < ? GROUP BY accelerator_kind",
                   ("acct-042", time.strftime("%Y-%m", time.localtime(lo)), time.strftime("%Y-%m"), lo, hi))

    b = median_s(bare_sum, 51, 5)
    a = median_s(admit, 51, 5)
    print(f"{'quota sums of one account (bare SQL)':<44} {b * 1000:>10.2f} ms")
    print(f"{'admission check (Ledger.admit)':<44} {a * 1000:>10.2f} ms  ({a / b:.2f}x)")
    led.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--pg", help="a PostgreSQL superuser URL; a scratch database is made and dropped")
    ap.add_argument("--child-ingest")
    ap.add_argument("--home")
    ap.add_argument("--url")
    args = ap.parse_args()
    if args.child_ingest:
        child_ingest(args.child_ingest, args.url, args.home)
        return
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    with tempfile.TemporaryDirectory() as tmp:
        text = Path(tmp) / "sacct.txt"
        with open(text, "w") as fh:
            fh.writelines(sacct_lines(args.records))
        print(f"sacct --parsable2 text: {text.stat().st_size / 1e6:.0f} MB for {args.records:,} allocations")
        bench_db("SQLite", None, Path(tmp) / "sqlite-home", text, args.records, env)
        if args.pg:
            import psycopg

            db = "bench_" + secrets.token_hex(4)
            with psycopg.connect(args.pg, autocommit=True) as c:
                c.execute(f"CREATE DATABASE {db}")  # type: ignore[arg-type]
            try:
                url = args.pg.rsplit("/", 1)[0] + "/" + db
                bench_db("PostgreSQL", url, Path(tmp) / "pg-home", text, args.records, env)
            finally:
                with psycopg.connect(args.pg, autocommit=True) as c:
                    c.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
