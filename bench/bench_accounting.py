"""Accounting at a centre's scale: 1M and 10M usage records (a year of a centre) on SQLite and PostgreSQL.

Prints, each against a baseline measured in the same run, and writes the figures to bench/results/*.json:
- sync ingest from sacct --parsable2 text through the real `accounting sync` path (streamed, tracking only the
  ids that hold reservations; on SQLite the bulk session and its writer process, on PostgreSQL each record's
  COPY line made by the parsing thread) in records/s and the peak
  RSS of the ingest process and of its writer (goals >= 50,000/s, <= 300 MB) vs parsing;
- every `suanli usage --by KEY` report (served by the roll-ups; goal < 500 ms) vs the records' GROUP BY scan,
  and `usage --by month` / `--by account` as whole processes;
- one admission check (quota sums from the roll-ups; goal < 2 ms) vs the records' scan it replaced.

  .venv/bin/python bench/bench_accounting.py --records 1000000,10000000 [--pg postgresql://postgres@HOST:PORT/postgres]
  .venv/bin/python bench/bench_accounting.py --plot      # bench/ledger_scale.png from bench/results/ledger-*.json
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import itertools
import json
import os
import random
import resource
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _util import median_s, pg_admin  # noqa: E402

from suanli.accounting.estimate import worst_case  # noqa: E402
from suanli.accounting.ledger import Ledger  # noqa: E402
from suanli.accounting.quota import Quota  # noqa: E402
from suanli.accounts_slurm import FIELDS, Booking, ParseStats, book_lines, usage_rows  # noqa: E402
from suanli.jobs.resources import Resources  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
PARSE_FLOOR_LINES = 1_000_000
#: Reports also timed as the records' GROUP BY scan they replace (each scan costs seconds at 10M).
SCANNED = ("month", "account", "account,month")
REPORTS = ("account", "user", "partition", "accelerator", "cluster", "month", "day", "account,month")
ACCOUNTS = [f"acct-{i:03d}" for i in range(100)]
USERS = [f"user{i:04d}" for i in range(1000)]


def sacct_lines(n: int, seed: int = 7) -> Iterator[str]:
    """sacct --parsable2 -X -D text for n finished allocations over the last year (as FIELDS orders them), in
    the order a sync reads them: one-day sacct windows, oldest first, so end times rise (with jitter)."""
    rnd = random.Random(seed)
    now = time.time()
    yield "|".join(FIELDS) + "\n"
    for i in range(n):
        end = now - 365 * 86400 * (1 - i / n) - rnd.random() * 3600
        elapsed = rnd.randint(10, 86400)
        start = end - elapsed
        cpus = rnd.choice((1, 4, 8, 32, 64))
        gpus = rnd.choice((0, 0, 0, 1, 8))
        tres = f"billing={cpus},cpu={cpus},mem={cpus * 4}G,node=1" + (f",gres/npu={gpus}" if gpus else "")
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(start))
        te = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(end))
        u = rnd.randrange(len(USERS))
        # A user charges their home account, and one in ten jobs a second project (as at a real centre).
        account = ACCOUNTS[u % len(ACCOUNTS)] if rnd.random() < 0.9 else ACCOUNTS[(u * 7 + 3) % len(ACCOUNTS)]
        yield (f"{1000000 + i}|{1000000 + i}|{USERS[u]}|{account}|"
               f"{'ai' if gpus else 'cpu'}|COMPLETED|{cpus}|1|{tres}|{elapsed}|{cpus * elapsed}|"
               f"{elapsed // 2}:00.000|{ts}|{ts}|{te}\n")


def child_ingest(path: str, url: str | None, home: str) -> None:
    """Runs in a fresh process so its peak RSS is the ingest's own; parses as `accounting sync` does (tracking
    only the ids that hold reservations: none here)."""
    led = Ledger(url, Path(home))
    booking = Booking("bench", "bench")
    t = time.perf_counter()
    with open(path) as fh, led.booking(booking) or contextlib.nullcontext() as session:
        n = book_lines(led, session, fh, booking, ParseStats(track=set()))  # what a sync runs
    dt = time.perf_counter() - t
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    writer_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # the SQLite sync's writer process
    print(f"{n} {dt} {rss_mb} {writer_mb}")
    led.close()


def row(what: str, value: str, extra: str = "") -> None:
    print(f"{what:<52} {value:>16}  {extra}")


def bench_db(label: str, url: str | None, home: Path, text: Path, n: int, parse_rps: float,
             env: dict[str, str]) -> dict[str, Any]:
    print(f"\n== {label}: {n:,} records")
    r = subprocess.run([sys.executable, __file__, "--child-ingest", str(text), "--home", str(home),
                        *(["--url", url] if url else [])], capture_output=True, text=True, env=env, check=True)
    stored, ingest_s, rss, writer_rss = r.stdout.split()
    out: dict[str, Any] = {"engine": label, "records": n, "parse_rps": parse_rps,
                           "ingest_rps": int(stored) / float(ingest_s), "ingest_rss_mb": float(rss),
                           "writer_rss_mb": float(writer_rss)}
    row("parse only (the floor)", f"{parse_rps:,.0f} rec/s")
    row("sync ingest (parse + store + roll-ups)", f"{out['ingest_rps']:,.0f} rec/s",
        f"peak RSS {float(rss):.0f} MB{f', its writer {float(writer_rss):.0f} MB' if float(writer_rss) else ''}  "
        f"({out['ingest_rps'] / parse_rps:.2f}x parse only)")
    if url:
        # What a centre's ledger is between syncs: the reports and admission below are not timed against the
        # autovacuum that 10M fresh records start (it took them from 1.4 to 2.0 ms in one run).
        t = time.perf_counter()
        pg_admin(url, "VACUUM (ANALYZE)")
        out["vacuum_s"] = time.perf_counter() - t
        row("VACUUM (ANALYZE) after the ingest (not timed in it)", f"{out['vacuum_s']:,.1f} s")
    led = Ledger(url, home)
    assert sum(x["jobs"] for x in led.report(["account", "month"])) == n, "the report does not add up"

    def scan(by: str) -> float:
        cols = ", ".join({"user": "user_name", "partition": "partition_name",
                          "accelerator": "accelerator_kind"}.get(k, k) for k in by.split(","))
        sql = (f"SELECT {cols}, COUNT(*), SUM(cpu_seconds), SUM(accelerator_seconds), SUM(charge) "
               f"FROM usage_records GROUP BY {cols} ORDER BY {cols}")

        def go() -> None:
            with led.db.transaction() as tx:
                tx.all(sql)
        return median_s(go, 1, 0)

    out["report_ms"], out["scan_ms"] = {}, {}
    for by in REPORTS:
        keys = by.split(",")
        api = median_s(functools.partial(led.report, keys), 5, 1)
        out["report_ms"][by] = api * 1000
        if by not in SCANNED:
            row(f"Ledger.report(--by {by})", f"{api * 1000:,.1f} ms")
            continue
        base = scan(by)
        out["scan_ms"][by] = base * 1000
        row(f"Ledger.report(--by {by})", f"{api * 1000:,.1f} ms", f"scan of the records {base * 1000:,.0f} ms "
            f"({base / api:,.0f}x faster)")
    cli_env = dict(env, SUANLI_HOME=str(home), **({"SUANLI_LEDGER_URL": url} if url else {}))
    out["cli_ms"] = {}
    for by in ("month", "account"):
        argv = [sys.executable, "-m", "suanli", "usage", "--by", by, "--json"]
        run = functools.partial(subprocess.run, argv, stdout=subprocess.DEVNULL, env=cli_env, check=True)
        cli = median_s(run, 5, 1)
        out["cli_ms"][by] = cli * 1000
        row(f"suanli usage --by {by} (whole process)", f"{cli * 1000:,.1f} ms")

    led.set_quota(Quota(account="acct-042", cpu_hours=1e9, accelerator_hours={"ascend": 1e9}, charge=1e12), "bench")
    est = worst_case(Resources(cpus_per_task=8, time="2h", accelerators="ascend:2"), 1, 1.0, 2.0)

    def admit() -> None:
        led.admit(job_id="bench", cluster="bench", account="acct-042", user="user0001", est=est, reserve=False)

    [q] = led.quotas("acct-042")
    win = q.window()
    assert win is not None

    def old_sum() -> None:  # what admission did before the roll-ups: the records of the account's month
        with led.db.transaction() as tx:
            led._sums(tx, "usage_records", q, win[1], win[2])

    b = median_s(old_sum, 3, 1)
    a = median_s(admit, 51, 5)
    out["admit_ms"], out["admit_scan_ms"] = a * 1000, b * 1000
    row("admission check (Ledger.admit, roll-ups)", f"{a * 1000:,.2f} ms",
        f"records' sums {b * 1000:,.1f} ms ({b / a:,.0f}x faster)")
    led.close()
    return out


def plot(paths: list[Path], png: Path) -> None:
    """Ingest rate, slowest report and admission against the number of records, per engine (each point the
    latest run of its size)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    newest: dict[tuple[str, int], dict[str, Any]] = {}  # paths sort by size, then time: the latest run wins
    for p in paths:
        for r in json.loads(p.read_text())["runs"]:
            newest[(r["engine"], r["records"])] = r
    runs = list(newest.values())
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    metrics = (("ingest_rps", "sync ingest (records/s)", 50_000),
               ("report_max_ms", "slowest `usage --by` report (ms)", 500), ("admit_ms", "admission (ms)", 2))
    for ax, (key, title, goal) in zip(axes, metrics, strict=True):
        for engine in sorted({r["engine"] for r in runs}):
            pts = sorted((r["records"], max(r["report_ms"].values()) if key == "report_max_ms" else r[key])
                         for r in runs if r["engine"] == engine)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=engine)
        ax.axhline(goal, color="grey", linestyle="--", label="goal")
        ax.set_xscale("log")
        ax.set_xlabel("records in the ledger")
        ax.set_title(title)
        ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    print(f"wrote {png}")


def split(n: int, tmp: str | None) -> None:
    """Where SQLite ingest's time goes, for ``n`` records: parsing alone, storing rows already parsed (the
    database side alone), and the two together as a sync runs them (parsing in a thread while storing)."""
    import shutil

    lines = list(sacct_lines(n))
    t = time.perf_counter()
    parsed = list(usage_rows(iter(lines), "bench", stats=ParseStats(track=set())))
    parse_s = time.perf_counter() - t
    out = {"records": n, "parse_rps": n / parse_s}
    sources: dict[str, Callable[[], Iterator[tuple[object, ...]]]] = {
        "store_rps": lambda: iter(parsed),
        "sync_rps": lambda: usage_rows(iter(lines), "bench", stats=ParseStats(track=set())),
    }
    with tempfile.TemporaryDirectory(dir=tmp) as folder:
        for label, source in sources.items():
            home = Path(folder) / label
            led = Ledger(None, home)
            t = time.perf_counter()
            stored = led.record_rows(source())
            out[label] = stored / (time.perf_counter() - t)
            led.close()
            shutil.rmtree(home)
    for key, what in (("parse_rps", "parsing alone"), ("store_rps", "storing parsed rows (the database side alone)"),
                      ("sync_rps", "both, as a sync runs them")):
        row(f"SQLite, {n:,} records: {what}", f"{out[key]:,.0f} rec/s", f"{1e6 / out[key]:.1f} us/record")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"ingest-split-{n}.json").write_text(json.dumps(out, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", default="1000000", help="comma-separated sizes, e.g. 1000000,10000000")
    ap.add_argument("--pg", help="a PostgreSQL superuser URL; a scratch database is made and dropped")
    ap.add_argument("--engines", default="sqlite,postgresql")
    ap.add_argument("--tmp", help="where the sacct text and the SQLite ledger go (default: the system's)")
    ap.add_argument("--plot", action="store_true", help="plot bench/results/ledger-*.json to bench/ledger_scale.png")
    ap.add_argument("--tag", help="added to the results file's name (ledger-N-STAMP-TAG.json)")
    ap.add_argument("--split", type=int, metavar="N",
                    help="SQLite only: time parsing, storing and both for N records (where ingest's time goes)")
    ap.add_argument("--child-ingest")
    ap.add_argument("--home")
    ap.add_argument("--url")
    args = ap.parse_args()
    if args.child_ingest:
        child_ingest(args.child_ingest, args.url, args.home)
        return
    if args.split:
        split(args.split, args.tmp)
        return
    if args.plot:
        plot(sorted(RESULTS.glob("ledger-*.json")), Path(__file__).resolve().parent / "ledger_scale.png")
        return
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    engines = args.engines.split(",")
    RESULTS.mkdir(exist_ok=True)
    for n in (int(x) for x in args.records.split(",")):
        runs: list[dict[str, Any]] = []
        stamp = time.strftime("%Y%m%dT%H%M%S")
        out = RESULTS / f"ledger-{n}-{stamp}{'-' + args.tag if args.tag else ''}.json"

        with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
            text = Path(tmp) / "sacct.txt"
            with open(text, "w") as fh:
                fh.writelines(sacct_lines(n))
            print(f"\nsacct --parsable2 text: {text.stat().st_size / 1e6:.0f} MB for {n:,} allocations")
            t = time.perf_counter()
            with open(text) as fh:  # the rate is flat in n: the first million lines measure it
                lines = itertools.islice(fh, PARSE_FLOOR_LINES + 1)
                parsed = sum(1 for _ in usage_rows(lines, "bench", stats=ParseStats(track=set())))
            parse_rps = parsed / (time.perf_counter() - t)
            if "sqlite" in engines:
                runs.append(bench_db("SQLite", None, Path(tmp) / "sqlite-home", text, n, parse_rps, env))
                save(out, stamp, runs)
            if args.pg and "postgresql" in engines:
                runs.append(bench_pg(args.pg, Path(tmp) / "pg-home", text, n, parse_rps, env))
                save(out, stamp, runs)


def save(out: Path, stamp: str, runs: list[dict[str, Any]]) -> None:
    """Written after each engine, so a run stopped during the next keeps what it measured."""
    out.write_text(json.dumps({"command": " ".join(sys.argv), "date": stamp, "runs": runs}, indent=1))
    print(f"wrote {out}")


def bench_pg(pg: str, home: Path, text: Path, n: int, parse_rps: float, env: dict[str, str]) -> dict[str, Any]:
    db = "bench_" + secrets.token_hex(4)
    pg_admin(pg, f"CREATE DATABASE {db}")
    try:
        return bench_db("PostgreSQL", pg.rsplit("/", 1)[0] + "/" + db, home, text, n, parse_rps, env)
    finally:
        pg_admin(pg, f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")




if __name__ == "__main__":
    main()
