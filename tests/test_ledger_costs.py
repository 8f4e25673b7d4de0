"""What the ledger costs a submit and an ingest (Scale issue, items 4 and 5): a PostgreSQL ledger loads only the
driver and the admission code, opening a current ledger is one statement, a transaction's BEGIN rides with its
first statement, COPY carries any text unchanged, and a SQLite batch probes the records it rewrites once."""

from __future__ import annotations

import random
import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import run_cli, wait_until
from test_accounting import _pg_url, est, ledger_url, pg, pg_db  # noqa: F401 - fixtures
from test_ledger_rollups import _assert_exact, _record

from suanli.accounting.db import Database, LedgerError
from suanli.accounting.ledger import Ledger
from suanli.accounting.quota import Quota
from suanli.accounting.records import COLUMNS
from suanli.errors import QuotaExceeded


class _Counted(Database):
    """A real Database whose connection reports every statement it is sent (sqlite3's trace callback; a psycopg2
    cursor class that notes each execute), from the first one after connecting."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sent: list[str] = []

    def _connect_sqlite(self) -> sqlite3.Connection:
        conn = super()._connect_sqlite()
        conn.set_trace_callback(self.sent.append)
        return conn

    def _connect_pg(self) -> Any:
        import psycopg2.extensions

        sent = self.sent

        class Cursor(psycopg2.extensions.cursor):  # type: ignore[misc]
            def execute(self, sql: str, params: Any = None) -> Any:
                sent.append(sql)
                return super().execute(sql, params)

        conn = super()._connect_pg()
        conn.cursor_factory = Cursor
        return conn


def _counted(url: str | None, home: Path) -> tuple[Ledger, _Counted]:
    led = Ledger(url, home)
    led.db = db = _Counted(url, home / "ledger.db")
    return led, db


def test_opening_a_current_ledger_is_one_statement(ledger_url: str | None, home: Path) -> None:  # noqa: F811
    """Every submit with a ledger opens it: the schema check, the role and its right to rewrite usage come in one
    statement (before: a transaction of two, then one transaction each for the role and the right)."""
    setup = Ledger(ledger_url, home)
    setup.db.connect()  # creates the schema
    setup.close()
    led, db = _counted(ledger_url, home)
    led.db.connect()
    assert led.db.user == (None if ledger_url is None else "suanli_admin")
    assert led.db.may_rewrite is True
    assert len(db.sent) == 1, db.sent
    led.close()


def test_an_admission_is_one_round_trip_per_statement(ledger_url: str | None, home: Path) -> None:  # noqa: F811
    """PostgreSQL: BEGIN and the advisory lock travel with a transaction's first statement, so admission sends the
    quotas (with BEGIN and the lock), the used and reserved sums (one statement), the reservation with the
    COMMIT: three round trips (before: seven, then five); a one-statement read or write (the reservations,
    binding a native id) is one."""
    setup = Ledger(ledger_url, home)
    setup.set_quota(Quota(account="lab", cpu_hours=100), "admin")
    setup.close()
    led, db = _counted(ledger_url, home)
    led.db.connect()
    db.sent.clear()
    checks = led.admit(job_id="j1", cluster="c1", account="lab", user="suanli_admin", est=est())
    assert [c.fits for c in checks] == [True]
    sent = [s.strip().split()[0].upper() for s in db.sent]
    if ledger_url is None:
        assert sent[0] == "BEGIN" and sent[-1] == "COMMIT"  # SQLite: in process, no round trips to save
    else:
        assert "BEGIN" not in sent and db.sent[0].startswith("BEGIN; SELECT pg_advisory_xact_lock"), db.sent
        # Three since the sums share a statement and the reservation rides with the COMMIT
        # (tests/test_ledger_submit_cost.py).
        assert "FROM quotas" in db.sent[0] and len(sent) == 3 and db.sent[-1].endswith("; COMMIT"), db.sent
    db.sent.clear()
    led.bind("j1", "123")
    assert [r["native_id"] for r in led.reservations()] == ["123"]
    if ledger_url is not None:
        assert [s.split()[0] for s in db.sent] == ["UPDATE", "SELECT"], db.sent
    led.close()


def test_a_batch_keeps_any_text_and_null_exactly(ledger_url: str | None, home: Path) -> None:  # noqa: F811
    """A batch (PostgreSQL: COPY's text format, escaped by suanli) stores tabs, newlines, backslashes, a literal
    ``\\N``, non-ASCII text and NULLs as they were; a small booking (one multi-row INSERT) too."""
    rnd = random.Random(3)
    odd = ["tab\there", "new\nline", "back\\slash", "\\N", "cr\rlf", "中文 ünï", "", "end\\"]
    recs = []
    for i in range(130):
        r = _record(rnd, i)
        r.native_id = odd[i % len(odd)] + str(i)
        r.partition = None if i % 3 == 0 else odd[(i + 1) % len(odd)]
        r.user = "suanli_admin"
        recs.append(r)
    led = Ledger(ledger_url, home)
    assert led.record(iter(recs[:100]), batch=100) == 100  # the batch path
    assert led.record(recs[100:]) == 30  # a few jobs: the small path
    cols = ", ".join(COLUMNS)
    with led.db.transaction() as tx:
        stored = {r[0]: tuple(r) for r in tx.all(f"SELECT {cols} FROM usage_records")}
    assert stored == {r.record_id: r.row() for r in recs}
    _assert_exact(led)
    led.close()


def test_a_sqlite_batch_reads_the_records_it_rewrites_once(home: Path) -> None:
    """A batch that rewrites records moves the roll-ups from one table of deltas: the records it rewrites read
    once, each record's millionths computed once per side. A batch of new records only is copied in as it is
    (no probe, no deltas), its records added up once per finest group, and each roll-up moved by the groups."""
    rnd = random.Random(11)
    recs = [_record(rnd, i) for i in range(300)]
    Ledger(None, home).record(recs[:100])  # some are there already: the first batch rewrites them
    led, db = _counted(None, home)
    assert led.record(iter(recs), batch=150) == 300
    read_old = [s for s in db.sent if "FROM usage_records WHERE record_id IN (SELECT record_id FROM usage_stage" in s]
    deltas = [s for s in db.sent if "round(" in s and "usage_delta" in s]
    staged = [s for s in db.sent if s.startswith("INSERT INTO usage_stage")]
    added = [s for s in db.sent if "round(" in s and "usage_delta" not in s]
    from_groups = [s for s in db.sent if s.startswith("INSERT INTO usage_") and "FROM usage_groups" in s]
    assert len(read_old) == 1 and len(deltas) == 2, (read_old, deltas)
    assert len(staged) == 300 and len(added) == 1, (len(staged), added)  # the new batch: grouped once
    assert len(from_groups) == 3, from_groups  # then one statement per roll-up
    _assert_exact(led)
    led.close()


@pytest.fixture
def pg_url(pg_db: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:  # noqa: F811
    url = _pg_url("suanli_admin", pg_db)
    monkeypatch.setenv("SUANLI_LEDGER_URL", url)
    yield url


def test_a_submit_with_a_postgresql_ledger_loads_only_the_driver_and_admission(pg_url: str, home: Path) -> None:
    """`import psycopg` alone cost ~290 ms; the ledger uses psycopg2 (~25 ms) and admits a local job without the
    Slurm side of accounting (sacct reader, sync)."""
    led = Ledger(pg_url, home)
    led.set_quota(Quota(account="lab", cpu_hours=100), "admin")
    r = run_cli("submit", "-A", "lab", "-t", "1m", "--", "true", env={"PYTHONPROFILEIMPORTTIME": "1"})
    assert r.returncode == 0, r.stderr
    imported = {ln.split("|")[-1].strip() for ln in r.stderr.splitlines() if ln.startswith("import time:")}
    assert "psycopg2" in imported and "suanli.accounting.admission" in imported
    unwanted = {m for m in imported if m.split(".")[0] == "psycopg"
                or m in ("suanli.accounts_slurm", "suanli.compute.slurm.sacct_usage", "suanli.compute.slurm.sacct")}
    assert not unwanted, unwanted
    job = r.stdout.split()[-1]
    assert [x["job_id"] for x in led.reservations()] == [job]  # admission ran and reserved
    assert run_cli("wait", "--timeout", "60", job).returncode == 0
    # Its end is booked (one record, a multi-row INSERT) and its reservation released.
    wait_until(lambda: led.totals()["records"] == 1, "the job to be booked", 30)
    assert led.reservations() == []
    led.close()


def test_without_the_driver_the_error_names_the_extra(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No psycopg2 installed (simulated: the import fails): one line that names the driver and the fix."""
    monkeypatch.setitem(sys.modules, "psycopg2", None)
    with pytest.raises(LedgerError) as err:
        Database("postgresql://nobody@127.0.0.1:1/none", home / "ledger.db").connect()
    assert str(err.value) == "ledger: a PostgreSQL ledger needs psycopg2; pip install 'suanli[postgres]'"


def test_an_account_name_with_quotes_and_percent_signs_is_locked_and_admitted(ledger_url: str | None,  # noqa: F811
                                                                               home: Path) -> None:
    """The lock key (``quota:`` + the account) is quoted into the statement it rides with: a quote, a percent sign
    or non-ASCII text in an account name neither breaks the statement nor its parameters."""
    led = Ledger(ledger_url, home)
    odd = "50%s%% o'neil ü"
    led.set_quota(Quota(account=odd, cpu_hours=1.5), "admin")
    assert [c.fits for c in led.admit(job_id="j1", cluster="c1", account=odd, user="suanli_admin", est=est())] == [True]
    with pytest.raises(QuotaExceeded, match="may use up to 1.0 cpu-hours"):
        led.admit(job_id="j2", cluster="c1", account=odd, user="suanli_admin", est=est())
    assert [(r["job_id"], r["account"]) for r in led.reservations()] == [("j1", odd)]
    led.close()


def test_sqlite_admission_reads_only_the_records_near_the_window_ends(home: Path) -> None:
    """The window-end corrections take each OR-ed range as its own (account, day) index range on SQLite. With the
    account outside the OR-ed terms, SQLite read every record of the account instead: at 1M records admission
    went from 0.33 to 2.9 ms, as slow as the full sums the roll-ups replace."""
    import time

    from suanli.accounting import rollups

    led = Ledger(None, home)
    led.db.connect()
    q = Quota(account="lab", user="u1", cpu_hours=1)
    win = q.window(time.time())
    assert win is not None
    statements = rollups._edge_sql("sqlite", [("account", "lab"), ("user_name", "u1")], win[1], win[2])
    assert statements
    conn = led.db._conn
    assert isinstance(conn, sqlite3.Connection)
    for sql, params in statements:
        plan = [str(row[3]) for row in conn.execute("EXPLAIN QUERY PLAN " + sql, params)]
        searches = [p for p in plan if p.startswith(("SEARCH", "SCAN"))]
        assert searches and all("usage_by_day_end (account=? AND day=? AND end_time" in p for p in searches), plan
    led.close()
