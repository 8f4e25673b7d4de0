"""The ledger's roll-ups (Scale issue, item 4): exact against a full scan of the records, on SQLite and PostgreSQL,
after random ingests, re-syncs with changed values, requeues, re-keying and deletes; and not writable by an
ordinary PostgreSQL role."""

from __future__ import annotations

import dataclasses
import random
import time
from pathlib import Path
from typing import Any

import pytest
from test_accounting import _pg_url, est, ledger, ledger_url, pg, pg_db  # noqa: F401 - fixtures

from suanli.accounting import db as dbmod
from suanli.accounting.db import ROLLUP_SUMS, ROLLUPS, LedgerPermissionError, micro
from suanli.accounting.ledger import REPORT_KEYS, Ledger
from suanli.accounting.quota import Quota
from suanli.accounting.records import UsageRecord
from suanli.accounting.rollups import rollup_sums

ACCOUNTS = ["lab", "phys", None]
USERS = ["u1", "u2", "u3"]
CLUSTERS = ["c1", "c2"]
KINDS = [None, "nvidia", "ascend"]


def _record(rnd: random.Random, i: int, attempt: int = 0, cluster: str | None = None) -> UsageRecord:
    """A finished attempt somewhere in the last three months, with fractional seconds and charge."""
    end = time.time() - rnd.uniform(60, 90 * 86400)
    kind = rnd.choice(KINDS)
    cpu = rnd.uniform(0, 1e6)
    c = cluster or rnd.choice(CLUSTERS)
    return UsageRecord(
        record_id=f"{c}|{i}|{attempt}|0", cluster=c, backend="slurm", native_id=str(i), job_id=None,
        array_task=None, attempt=attempt, user=rnd.choice(USERS), account=rnd.choice(ACCOUNTS),
        partition=rnd.choice(["p", "gpu", None]), adapter=None, accelerator_kind=kind, nodes=1, cpus=4,
        accelerators=1 if kind else 0, submit_time=end - 200, start_time=end - 100, end_time=end, elapsed_s=100.0,
        state="COMPLETED", cpu_seconds=cpu, accelerator_seconds=rnd.uniform(0, 1e5) if kind else 0.0,
        charge=cpu / 3600 * 0.37, total_cpu_s=None, source="test")


def _edges() -> list[float]:
    """The local midnights the admission checks below start at: this month's first, and 40 days ago."""
    t = time.localtime()
    ago = time.localtime(time.time() - 40 * 86400)
    return [time.mktime((t.tm_year, t.tm_mon, 1, 0, 0, 0, 0, 0, -1)),
            time.mktime((ago.tm_year, ago.tm_mon, ago.tm_mday, 0, 0, 0, 0, 0, -1))]


def _edge_record(rnd: random.Random, i: int) -> UsageRecord:
    """A record ending within a day of a window's start, sometimes booked by a writer in another time zone (its
    day one off the reader's): admission must count it by its end time."""
    r = _record(rnd, i)
    end = rnd.choice(_edges()) + rnd.uniform(-20 * 3600, 20 * 3600)
    end = min(end, time.time() - 60)
    shift = rnd.choice([-1, 0, 0, 1]) * 86400
    r = dataclasses.replace(r, end_time=end, start_time=end - 100, submit_time=end - 200,
                            booked_day=time.strftime("%Y-%m-%d", time.localtime(end + shift)))
    return r


def _rollups(led: Ledger, table: str) -> dict[tuple[Any, ...], tuple[int, ...]]:
    period, cols = ROLLUPS[table]
    keys = ", ".join((period, *cols))
    with led.db.transaction() as tx:
        rows = tx.all(f"SELECT {keys}, jobs, {', '.join(ROLLUP_SUMS)} FROM {table}")
    n = len(cols) + 1
    return {tuple(r[:n]): tuple(int(v) for v in r[n:]) for r in rows if any(int(v) for v in r[n:])}


def _scan(led: Ledger, table: str) -> dict[tuple[Any, ...], tuple[int, ...]]:
    period, cols = ROLLUPS[table]
    keys = ", ".join(f"COALESCE({k}, '')" for k in (period, *cols))
    sums = ", ".join(f"SUM({micro(led.db.dialect, c)})" for c in ROLLUP_SUMS.values())
    with led.db.transaction() as tx:
        rows = tx.all(f"SELECT {keys}, COUNT(*), {sums} FROM usage_records GROUP BY {keys}")
    n = len(cols) + 1
    return {tuple(r[:n]): tuple(int(v) for v in r[n:]) for r in rows}


def _assert_exact(led: Ledger) -> None:
    for table in ROLLUPS:
        assert _rollups(led, table) == _scan(led, table), table


def _scan_report(led: Ledger, by: list[str], since_day: str | None = None,
                 account: str | None = None) -> list[dict[str, Any]]:
    """The report as a GROUP BY over the records; a window counts whole booked days, as `--by day` shows them."""
    cols = ", ".join(REPORT_KEYS[k] for k in by)
    where = " AND ".join(c for c, v in (("day >= ?", since_day), ("account = ?", account)) if v) or "1 = 1"
    params = [v for v in (since_day, account) if v]
    with led.db.transaction() as tx:
        rows = tx.all(f"SELECT {cols}, COUNT(*) FROM usage_records WHERE {where} GROUP BY {cols}", params)
    return [{**{k: (v or None) for k, v in zip(by, r, strict=False)}, "jobs": int(r[len(by)])} for r in rows]


def _key(rows: list[dict[str, Any]], by: list[str]) -> dict[tuple[Any, ...], int]:
    return {tuple(r[k] for k in by): r["jobs"] for r in rows}


def test_rollups_equal_a_full_scan_after_random_changes(ledger: Ledger) -> None:  # noqa: F811
    rnd = random.Random(20261130)
    live: dict[str, tuple[int, int, str]] = {}  # record id -> (native id, attempt, cluster), as stored
    next_id = 0
    for _ in range(16):
        op = rnd.choice(["ingest", "ingest", "resync", "requeue", "delete", "rekey"])
        if op == "ingest" or not live:
            batch = [_record(rnd, next_id + k) for k in range(rnd.randint(1, 300))]
            batch += [_edge_record(rnd, next_id + len(batch) + k) for k in range(rnd.randint(0, 30))]
            next_id += len(batch)
            # A stream takes the threaded path (a transaction per batch); in SQLite a batch of 64 or more
            # moves the roll-ups set-based, a smaller one through the row triggers.
            ledger.record(iter(batch), batch=rnd.choice([7, 100])) if rnd.random() < 0.7 else ledger.record(batch)
        elif op == "resync":  # the same record ids with changed values, account, user, day, kind
            ledger.record(iter([dataclasses.replace(_record(rnd, n, a, c), record_id=rid) for rid, (n, a, c)
                                in rnd.sample(sorted(live.items()), min(len(live), 150))]), batch=rnd.choice([9, 90]))
        elif op == "requeue":  # a new attempt of a booked job: a record of its own
            ledger.record([_record(rnd, n, a + 1, c) for _, (n, a, c) in rnd.sample(sorted(live.items()),
                                                                                   min(len(live), 10))])
        elif op == "delete":
            gone = rnd.sample(sorted(live), min(len(live), 8))
            with ledger.db.transaction() as tx:
                tx.execute(f"DELETE FROM usage_records WHERE record_id IN ({', '.join('?' * len(gone))})", gone)
        else:  # adopt_keys re-keys the records of config c1 (an UPDATE of the key; duplicates deleted)
            ledger.adopt_keys(["c1"], "slurm:phys")
        with ledger.db.transaction() as tx:
            live = {str(r[0]): (int(r[1]), int(r[2]), str(r[3])) for r in tx.all(
                "SELECT record_id, native_id, attempt, cluster FROM usage_records")}
        _assert_exact(ledger)
    assert ledger.totals()["records"] > 20
    # The reports served from the roll-ups group like the scan (whole months, and a window of whole days).
    for by in (["account", "month"], ["user", "accelerator"], ["cluster", "partition", "day"], ["day"],
               ["account", "accelerator", "day"]):
        assert _key(ledger.report(by), by) == _key(_scan_report(ledger, by), by)
    t = time.localtime(time.time() - 40 * 86400)
    since = _edges()[1]
    for by in (["account"], ["month", "user"], ["day"]):
        assert _key(ledger.report(by, since=since, account="lab"), by) == _key(
            _scan_report(ledger, by, time.strftime("%Y-%m-%d", time.localtime(since)), "lab"), by)
    # Admission sums the roll-ups: the same as the records' scan of its window.
    ledger.set_quota(Quota(account="lab", cpu_hours=1e12, accelerator_hours={"nvidia": 1e12}), "admin")
    ledger.set_quota(Quota(account="phys", period="total", start=time.strftime("%Y-%m-%d", t), cpu_hours=1e12), "a")
    for c in ledger.quota_status():
        win = c.quota.window()
        assert win is not None
        with ledger.db.transaction() as tx:
            scan = ledger._sums(tx, "usage_records", c.quota, win[1], win[2])
        expect = (sum(v[0] for v in scan.values()) / 3600 if c.resource == "cpu_hours"
                  else scan.get(c.kind, (0.0, 0.0, 0.0))[1] / 3600)
        assert c.used == pytest.approx(expect, rel=1e-9, abs=1e-6) and c.used > 0
    # A window with both ends at past midnights, records booked across each end (the edge records): the
    # corrections at both ends count, as admission sums them, equal to the records' scan.
    lo, hi = sorted(_edges())
    for q in (Quota(account="lab", period="total", cpu_hours=1e12), Quota(account="phys", period="total",
                                                                          user=USERS[0], cpu_hours=1e12)):
        with ledger.db.transaction() as tx:
            got = rollup_sums(tx, q, lo, hi)
            scan = ledger._sums(tx, "usage_records", q, lo, hi)
        assert got is not None and set(got) == set(scan) and scan
        for kind, sums in scan.items():
            assert got[kind] == pytest.approx(sums, rel=1e-9, abs=1e-4)  # whole millionths per record


def test_migration_builds_rollups_from_records_booked_before(ledger_url: str | None, home: Path,  # noqa: F811
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A ledger written by the version without roll-ups gets them, exact, on its first open."""
    rnd = random.Random(5)
    with monkeypatch.context() as m:
        m.setattr(dbmod, "SCHEMA_VERSION", 1)
        m.setattr(dbmod, "migrations", lambda dialect, f=dbmod.migrations: {1: f(dialect)[1]})
        old = Ledger(ledger_url, home)
        old.record([_record(rnd, i) for i in range(40)])
        old.close()
    led = Ledger(ledger_url, home)
    assert led.totals()["records"] == 40
    _assert_exact(led)
    assert sum(r["jobs"] for r in led.report(["account", "month"])) == 40
    led.close()


def test_an_ordinary_role_cannot_write_rollups(pg_db: str, home: Path) -> None:  # noqa: F811
    admin = Ledger(_pg_url("suanli_admin", pg_db), home)
    admin.set_quota(Quota(account="lab", cpu_hours=10), "suanli_admin")
    with admin.db.transaction() as tx:
        tx.execute("GRANT suanli_user TO alice")
    alice = Ledger(_pg_url("alice", pg_db), home)
    rnd = random.Random(1)
    mine = dataclasses.replace(_record(rnd, 1), user="alice", account="lab", cpu_seconds=7200.0,
                               end_time=time.time() - 60, submit_time=None, start_time=None)
    alice.record([mine])  # her trigger-written roll-up moves (the trigger runs with the owner's rights)
    [c] = alice.quota_status()
    assert c.used == pytest.approx(2.0)
    alice.record([dataclasses.replace(mine, cpu_seconds=0.0)])  # a rewrite is ignored for her: nothing lowers
    for table in ROLLUPS:
        for sql in (f"UPDATE {table} SET cpu_us = 0", f"DELETE FROM {table}",
                    f"INSERT INTO {table} SELECT * FROM {table}"):
            with pytest.raises(LedgerPermissionError, match="role alice may not do this"), \
                    alice.db.transaction() as tx:
                tx.execute(sql)
    [c] = alice.quota_status()
    assert c.used == pytest.approx(2.0)
    _assert_exact(admin)
    alice.close()
    admin.close()
