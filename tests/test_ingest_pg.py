"""PostgreSQL ingest (Scale issue, item 4): the admin role's batches of new records go straight into the records
by COPY, a batch that repeats booked records falls back to the staged upsert (rewriting them, last row per id),
a user role's batch only adds; schema 3's byte-order keys and grouped triggers keep the roll-ups exact, also
for a ledger migrated from schema 2; COPY's text holds what it was given."""

from __future__ import annotations

import dataclasses
import math
import random
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_accounting import _pg_url, _super, pg, pg_db  # noqa: F401 - fixtures
from test_ingest_fast import _lines
from test_ledger_rollups import _assert_exact, _record

from suanli.accounting import db as dbmod
from suanli.accounting import tx as txmod
from suanli.accounting.bulk import Rate
from suanli.accounting.db import ROLLUPS
from suanli.accounting.ledger import Ledger, PgBatch, _short_switch, lines_batch
from suanli.accounting.records import COLUMNS, UsageRecord
from suanli.accounts_slurm import FIELDS, Booking, ParseStats, book_lines, usage_rows


@pytest.fixture
def statements(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every statement the ledger sends through ``Tx.execute`` (what path a batch took)."""
    sent: list[str] = []
    execute = txmod.Tx.execute

    def spy(self: txmod.Tx, sql: str, params: Any = ()) -> Any:
        sent.append(sql)
        return execute(self, sql, params)

    monkeypatch.setattr(txmod.Tx, "execute", spy)
    return sent


def _stored(led: Ledger) -> dict[str, tuple[Any, ...]]:
    with led.db.transaction() as tx:
        return {str(r[0]): tuple(r) for r in tx.all(f"SELECT {', '.join(COLUMNS)} FROM usage_records")}


def _rows(recs: list[UsageRecord]) -> Iterator[tuple[object, ...]]:
    return (r.row() for r in recs)


def test_new_batches_are_copied_and_repeats_rewrite_booked_records(pg_db: str, home: Path,  # noqa: F811
                                                                    statements: list[str]) -> None:
    led = Ledger(_pg_url("suanli_admin", pg_db), home)
    rnd = random.Random(23)
    first = [_record(rnd, i) for i in range(300)]
    assert led.record_rows(_rows(first), batch=100) == 300
    assert not any(s.startswith("ROLLBACK TO") for s in statements)  # every batch went in by COPY
    assert sum(s.startswith("SAVEPOINT suanli_copy") for s in statements) == 3
    assert _stored(led) == {r.record_id: r.row()[:len(COLUMNS)] for r in first}
    _assert_exact(led)
    # New records with one id twice in a batch (the last row counts): still one COPY.
    statements.clear()
    new = [_record(rnd, 5000 + i) for i in range(50)]
    twice = dataclasses.replace(new[0], cpu_seconds=new[0].cpu_seconds + 1.0)
    assert led.record_rows(_rows([*new, twice]), batch=100) == 51
    assert not any(s.startswith("ROLLBACK TO") for s in statements)
    # A re-sync: 250 booked records with new values (another account, user, day, kind). A batch holding a
    # booked id fails its COPY and takes the staged upsert, which rewrites them; after two such batches in a
    # row the third is staged at once.
    statements.clear()
    again = [dataclasses.replace(_record(rnd, 1000 + i), record_id=r.record_id) for i, r in enumerate(first[:250])]
    assert led.record_rows(_rows(again), batch=100) == 250
    assert sum(s.startswith("ROLLBACK TO SAVEPOINT suanli_copy") for s in statements) == 2
    assert sum(s.startswith("SAVEPOINT suanli_copy") for s in statements) == 2
    assert sum(s.startswith("INSERT INTO usage_records") and "FROM usage_stage" in s for s in statements) == 3
    want = {r.record_id: r.row()[:len(COLUMNS)] for r in [*first, *again, *new, twice]}
    assert _stored(led) == want
    _assert_exact(led)
    led.close()


def test_a_user_roles_batch_only_adds_records(pg_db: str, home: Path) -> None:  # noqa: F811
    admin = Ledger(_pg_url("suanli_admin", pg_db), home)
    with admin.db.transaction() as tx:
        tx.execute("GRANT suanli_user TO alice")
    rnd = random.Random(5)
    mine = [dataclasses.replace(_record(rnd, i), user="alice") for i in range(120)]
    admin.record_rows(_rows(mine[:60]), batch=100)
    alice = Ledger(_pg_url("alice", pg_db), home)
    changed = [dataclasses.replace(r, cpu_seconds=r.cpu_seconds + 7.0) for r in mine[:60]]
    assert alice.record_rows(_rows(changed + mine[60:]), batch=100) == 120
    assert _stored(admin) == {r.record_id: r.row()[:len(COLUMNS)] for r in mine}  # hers: added, never changed
    _assert_exact(admin)
    alice.close()
    admin.close()


def test_schema_3_from_2_keeps_records_and_rollups(pg_db: str, home: Path,  # noqa: F811
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A ledger written by schema 2 (locale collation, a grouping per roll-up) is migrated on its first open:
    its keys compare bytes, its records and roll-ups stay, and a rewrite that changes nothing writes no
    roll-up row."""
    url = _pg_url("suanli_admin", pg_db)
    rnd = random.Random(11)
    recs = [_record(rnd, i) for i in range(200)]
    with monkeypatch.context() as m:
        m.setattr(dbmod, "SCHEMA_VERSION", 2)
        m.setattr(dbmod, "migrations", lambda dialect, f=dbmod.migrations: {v: f(dialect)[v] for v in (1, 2)})
        old = Ledger(url, home)
        old.record_rows(_rows(recs), batch=80)
        with old.db.transaction() as tx:
            assert tx.one("SELECT MAX(version) FROM suanli_schema")[0] == 2
        old.close()
    led = Ledger(url, home)
    assert _stored(led) == {r.record_id: r.row()[:len(COLUMNS)] for r in recs}
    _assert_exact(led)
    with led.db.transaction() as tx:
        assert tx.one("SELECT MAX(version) FROM suanli_schema")[0] == 3
        coll = dict(tx.all("SELECT table_name || '.' || column_name, collation_name FROM information_schema.columns "
                           "WHERE column_name IN ('record_id', 'account', 'day', 'user_name')"))
        versions = {t: tx.all(f"SELECT ctid, xmin::text FROM {t} ORDER BY ctid") for t in ROLLUPS}
    assert coll["usage_records.record_id"] == coll["usage_records.account"] == coll["usage_daily.user_name"] == "C"
    assert coll["usage_records.user_name"] is None  # not a key: the server's collation, as before
    led.record_rows(_rows(recs[:100]), batch=100)  # booked again, unchanged: the groups net to zero
    with led.db.transaction() as tx:
        assert versions == {t: tx.all(f"SELECT ctid, xmin::text FROM {t} ORDER BY ctid") for t in ROLLUPS}
    more = [_record(rnd, 1000 + i) for i in range(150)] + [dataclasses.replace(recs[0], cpu_seconds=1.5)]
    led.record_rows(_rows(more), batch=70)
    _assert_exact(led)
    assert led.totals()["records"] == 350
    led.close()


def test_copy_text_holds_nones_and_the_text_none(pg_db: str, home: Path) -> None:  # noqa: F811
    """NULLs side by side, first and last on a line, and a value that is the text "None" or "\\N" (the fast
    path's markers must not take it): read back by the server as given."""
    led = Ledger(_pg_url("suanli_admin", pg_db), home)
    plain = [(None, None, f"v{i}", None, float(i) / 3) for i in range(100)] + [("a", "b", "c", "d", None)]
    texts = [*plain[:50], ("None", None, "x", "None", 1.0), *plain[50:]]
    marker = [("\\N", None, "None\\", None, -0.0), *plain]
    with led.db.transaction() as tx:
        tx.execute("CREATE TEMP TABLE t (a TEXT, b TEXT, c TEXT, d TEXT, e DOUBLE PRECISION)")
        for rows in (plain, texts, marker):
            tx.execute("DELETE FROM t")
            tx.copy("t", ("a", "b", "c", "d", "e"), rows)
            back = tx.all("SELECT a, b, c, d, e FROM t")
            assert sorted(back, key=repr) == sorted(rows, key=repr)
            assert all(math.copysign(1, g[4]) == math.copysign(1, w[4]) for g, w in zip(
                sorted(back, key=repr), sorted(rows, key=repr), strict=True) if w[4] is not None)
    assert "None" not in txmod.copy_data(plain, 5) and "\tNone\t" in txmod.copy_data(texts, 5)
    led.close()


def test_the_copy_lines_book_what_the_row_path_books(pg_db: str, home: Path, tmp_path: Path) -> None:  # noqa: F811
    """A sync on PostgreSQL makes each record's COPY line at once (``usage_copy_lines``): every stored value and
    the parse stats equal those of the rows made in Python (booked on SQLite, the reference), over random sacct
    text with jobs this registry submitted (their config's rates), values that need escaping (a backslash, a
    tab) and the text "None", twice (the second sync rewrites)."""
    rnd = random.Random(29)
    windows = [_lines(rnd, 700), _lines(rnd, 300)]
    for i in range(1, len(windows[0]), 17):
        windows[0][i] = windows[0][i].replace("|acct|", "|ac\\ct|")
        windows[0][i + 1] = windows[0][i + 1].replace("|u1|", "|u\t1|")
        windows[1][i % 300] = windows[1][i % 300].replace("|u1|", "|None|")
    again = [line.replace("|u1|", "|u2|") for line in windows[1]]
    rates: dict[str, dict[str, Rate]] = {"c": {"ai": (1.5, 7.0, "x"), "cpu": (0.5, 0.0, None)},
                                         "other": {"ai": (3.0, 11.0, "y")}}
    booked = sorted({str(r[3]).split("_")[0] for r in usage_rows(windows[0], "c")}, key=int)
    natives = {booked[0]: ("sl-a", "c"), booked[5]: ("sl-b", "other"), "999999": ("sl-z", "c")}
    booking = Booking("slurm:k", "c", rates, natives)
    stored, all_stats = [], []
    for led in (Ledger(None, tmp_path / "ref"), Ledger(_pg_url("suanli_admin", pg_db), home)):
        stats = ParseStats(track={booked[0], "120"})
        assert sum(book_lines(led, None, w, booking, stats) for w in [*windows, again]) > 600
        stored.append(_stored(led))
        all_stats.append(stats)
        if led.db.dialect == "postgresql":
            _assert_exact(led)
        led.close()
    assert stored[0] == stored[1]
    values = [v for row in stored[1].values() for v in row]
    assert "ac\\ct" in values and "u\t1" in values and "None" in values and "sl-b" in values
    assert all_stats[0] == all_stats[1] and all_stats[0].bad == 3  # one broken line in each window


def test_a_latin1_ledger_stores_what_it_was_given(pg: str, home: Path) -> None:  # noqa: F811
    """COPY's text goes in the connection's encoding, as the driver sends statements: a LATIN1 ledger keeps a
    user named josé whether the record came by COPY (a sync's batch) or by one INSERT (a few ended jobs)."""
    name = "t_" + secrets.token_hex(4)
    _super(f"CREATE DATABASE {name} OWNER suanli_admin TEMPLATE template0 ENCODING 'LATIN1' "
           "LC_COLLATE 'C' LC_CTYPE 'C'")
    try:
        led = Ledger(_pg_url("suanli_admin", name), home)
        rnd = random.Random(3)
        recs = [dataclasses.replace(_record(rnd, i), user="josé", account="café") for i in range(120)]
        led.record_rows(_rows(recs[:100]), batch=100)  # a batch: COPY
        led.record(recs[100:])  # a few: one INSERT
        booking = Booking("slurm:k", "c")
        line = "|".join(["7", "7", "josé", "café", "cpu", "COMPLETED", "4", "1", "cpu=4,node=1", "60", "240",
                         "01:00", "2026-11-01T10:00:00", "2026-11-01T10:00:00", "2026-11-01T10:01:00"]) + "\n"
        assert book_lines(led, None, ["|".join(FIELDS) + "\n", line], booking, ParseStats()) == 1
        stored = _stored(led)
        assert len(stored) == 121 and {(r[7], r[8]) for r in stored.values()} == {("josé", "café")}
        led.close()
    finally:
        _super(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def test_a_batch_keeps_the_last_line_of_each_record_id_and_streams_share_the_switch_interval() -> None:
    now = 1.5
    assert lines_batch([("a", "a\tx"), ("b", "b\ty"), ("a", "a\tz")], now) == PgBatch(3, "a\tz\t1.5\nb\ty\t1.5\n")
    assert lines_batch([], now) == PgBatch(0, "")
    before = sys.getswitchinterval()
    with _short_switch(True):
        assert sys.getswitchinterval() == min(before, 0.001)
        outer = _short_switch(True)
        outer.__enter__()
        with _short_switch(True):
            pass
    assert sys.getswitchinterval() == min(before, 0.001)  # one stream still runs
    outer.__exit__(None, None, None)
    assert sys.getswitchinterval() == before
