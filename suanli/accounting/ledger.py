"""The ledger: usage records, quotas, reservations and sync marks, on SQLite or PostgreSQL.

Admission is one transaction that reads the quotas that apply, sums what was used in the quota's window and
what running jobs have reserved, and inserts the new job's worst case as a reservation; a per-account lock
makes two submitters racing for the last hours of a quota take turns. When the job ends its reservation is
deleted in the same transaction that books its real usage.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from itertools import islice
from pathlib import Path
from typing import Any, NamedTuple

from suanli.accounting.admission import RESOURCE_NAMES, Admission, Check
from suanli.accounting.bulk import STAGE, UPSERT, Booking, BookingSession, store_staged
from suanli.accounting.db import Database, LedgerError, Tx
from suanli.accounting.records import COLUMNS, UsageRecord
from suanli.accounting.reports import REPORT_KEYS, Reports
from suanli.accounting.tx import copy_data

__all__ = ["BATCH", "REPORT_KEYS", "RESOURCE_NAMES", "Check", "Ledger", "NativeDone"]

BATCH = 25_000  # per transaction: bigger batches touch each index page once for many records
#: PostgreSQL's sync: a batch's roll-up groups grow slower than its records (a day's users and partitions), and
#: its text is ~12 MB (10M records: 48.9k -> 54.4k records/s over 25,000).
PG_BATCH = 50_000
#: (cluster or the config names of one Slurm cluster, native ids that sacct booked as ended).
NativeDone = tuple[str | Sequence[str], Sequence[str]]


class Ledger(Admission, Reports):
    def __init__(self, url: str | None, home: Path, lock_wait_s: float = 10.0) -> None:
        self.db = Database(url, home / "ledger.db", lock_wait_s)

    @property
    def where(self) -> str:
        return self.db.where

    def close(self) -> None:
        self.db.close()

    # ------------------------------------------------------------ usage
    def record(self, records: Iterable[UsageRecord], release_jobs: Sequence[str] = (),
               release_native: NativeDone | None = None, batch: int = BATCH) -> int:
        """Upsert records in batches (each batch one transaction, so a killed sync loses nothing it
        committed and a rerun rewrites the same rows); reservations are released with the last batch."""
        rows: Iterable[tuple[object, ...]] = ([rec.row() for rec in records] if isinstance(records, list | tuple)
                                              else map(UsageRecord.row, records))
        return self.record_rows(rows, release_jobs, release_native, batch)

    def record_rows(self, rows: Iterable[tuple[object, ...]], release_jobs: Sequence[str] = (),
                    release_native: NativeDone | None = None, batch: int = BATCH) -> int:
        """``record`` for rows as ``UsageRecord.row()`` makes them (COLUMNS order): what a sync streams, without
        a record object per row."""
        self.db.may_rewrite  # noqa: B018 - asked once, outside the write transactions
        if isinstance(rows, list | tuple) and len(rows) <= batch:
            # A few jobs that just ended: one transaction, no parsing thread (starting one costs more).
            with self.db.transaction() as tx:
                if rows:
                    self._upsert(tx, list(rows), time.time())
                self._release(tx, release_jobs, release_native)
            return len(rows)
        now = time.time()
        # PostgreSQL: the parser also makes each batch's COPY text, so the writing thread only waits on the
        # server (GIL free) and the two overlap whole; SQLite's writer needs the rows themselves.
        ready: Callable[[list[Any]], list[tuple[object, ...]] | PgBatch] = (
            (lambda b: b) if self.db.dialect == "sqlite" else (lambda b: pg_batch(b, now)))
        return self._stream(rows, ready, now, release_jobs, release_native, batch)

    def record_lines(self, lines: Iterable[tuple[str, str]], release_jobs: Sequence[str] = (),
                     release_native: NativeDone | None = None, batch: int = PG_BATCH) -> int:
        """PostgreSQL: ``record_rows`` for records already in COPY's text format, each line (COLUMNS, no
        recorded_at, no newline) with its record id, as ``accounts_slurm.usage_copy_lines`` makes them: a sync's
        parsing thread is PostgreSQL ingest's bottleneck, and a line made at once costs less than a row made and
        then turned into text."""
        if self.db.dialect == "sqlite":
            raise LedgerError("ledger: record_lines is PostgreSQL's ingest; SQLite books through a BookingSession")
        self.db.may_rewrite  # noqa: B018 - asked once, outside the write transactions
        now = time.time()
        return self._stream(lines, lambda b: lines_batch(b, now), now, release_jobs, release_native, batch)

    def _stream(self, items: Iterable[Any], ready: Callable[[list[Any]], list[tuple[object, ...]] | PgBatch],
                now: float, release_jobs: Sequence[str], release_native: NativeDone | None, batch: int) -> int:
        """Store a stream in batches, each batch its own transaction; ``ready`` makes a batch of items what
        ``_upsert`` stores."""
        # Parsing (the rows iterator) runs in a thread while this one writes: the database works with
        # the GIL released, so the two overlap. The queue is short, so memory stays a few batches. Handing a
        # batch's rows to the database (binding each value) needs the GIL row by row: the parser pauses for
        # that (``quiet``), instead of taking the GIL back between every two rows, and resumes while the
        # database's statements run.
        import queue  # here: a submit's booking of a few jobs never needs it

        batches: queue.Queue[list[tuple[object, ...]] | PgBatch | None] = queue.Queue(maxsize=1)
        stop = threading.Event()
        quiet = threading.Event()
        quiet.set()
        failure: list[BaseException] = []

        def put(item: list[tuple[object, ...]] | PgBatch | None) -> bool:
            while not stop.is_set():
                try:
                    batches.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def produce() -> None:
            try:
                it = iter(items)
                buf: list[Any] = []
                while True:
                    quiet.wait()
                    chunk = list(islice(it, min(256, batch)))  # pulled in C, a few hundred at a time
                    buf += chunk
                    if len(buf) >= batch or not chunk:
                        if not chunk:
                            put(ready(buf) if buf else buf)
                            return
                        if not put(ready(buf[:batch])):
                            return
                        buf = buf[batch:]
            except BaseException as exc:
                failure.append(exc)
            finally:
                put(None)

        producer = threading.Thread(target=produce, name="suanli-ledger-parse", daemon=True)
        n = 0
        # the last batch shares its transaction with the release
        pending: list[tuple[object, ...]] | PgBatch | None = None
        copying = _Copying()
        try:
            with _short_switch(self.db.dialect != "sqlite"):
                producer.start()
                while (item := batches.get()) is not None:
                    if pending:
                        with self.db.transaction() as tx:
                            self._upsert(tx, pending, now, quiet, copying)
                        n += _given(pending)
                    pending = item
        finally:
            stop.set()
            if producer.ident is not None:
                producer.join()
        with self.db.transaction() as tx:
            if pending:
                self._upsert(tx, pending, now, quiet, copying)
                n += _given(pending)
            if not failure:
                self._release(tx, release_jobs, release_native)
        if failure:
            raise failure[0]
        return n

    def booking(self, booking: Booking) -> BookingSession | None:
        """A bulk booking session for a sync's allocations (``bulk.py``), or None where the ledger has none
        (PostgreSQL: its rows go through ``record_rows``)."""
        if self.db.dialect != "sqlite":
            return None
        self.db.connect()  # migrates before the slots are attached
        return BookingSession(self.db, booking, BATCH)

    def _upsert(self, tx: Tx, rows: list[tuple[object, ...]] | PgBatch, now: float,
                quiet: threading.Event | None = None, copying: _Copying | None = None) -> None:
        """Store a batch (rows without recorded_at: ``now`` is theirs; on PostgreSQL perhaps made ready by the
        parsing thread, ``pg_batch``); ``quiet`` (the parser's go-ahead) is held while SQLite's rows are handed
        over."""
        if tx.dialect == "sqlite":
            assert not isinstance(rows, PgBatch)
            _upsert_sqlite(tx, rows, now, quiet)
            return
        rewrite = self.db.may_rewrite
        if not isinstance(rows, PgBatch) and len(rows) < 64:
            # A few jobs that just ended (a submit settling its account): one statement, no session table.
            unique = list({row[0]: (*row, now) for row in rows}.values())  # a statement may touch a row once
            one = f"({', '.join('?' * len(unique[0]))})"
            tx.execute(f"INSERT INTO usage_records ({', '.join(_PG_COLS)}) VALUES {', '.join([one] * len(unique))} "
                       f"{_conflict(rewrite)}", [v for row in unique for v in row])
            return
        _store_pg(tx, rows if isinstance(rows, PgBatch) else pg_batch(rows, now), rewrite, copying or _Copying())

    def release(self, job_ids: Sequence[str] = (), native: NativeDone | None = None) -> None:
        with self.db.transaction() as tx:
            self._release(tx, job_ids, native)

    @staticmethod
    def _release(tx: Tx, job_ids: Sequence[str], native: NativeDone | None) -> None:
        """Delete the reservations of these suanli jobs, and of every job on ``native[0]`` (a cluster, or the
        configs of one Slurm cluster) whose native ids (all parts of a split array) are all in ``native[1]``."""
        ids = list(job_ids)
        if native and native[1]:
            done = set(native[1])
            names = [native[0]] if isinstance(native[0], str) else list(native[0])
            for job_id, text in tx.all(f"SELECT job_id, native_id FROM reservations WHERE cluster IN "
                                       f"({', '.join('?' * len(names))}) AND native_id IS NOT NULL", names):
                parts = [p for p in str(text).split(",") if p]
                if parts and all(p in done for p in parts):
                    ids.append(job_id)
        for i in range(0, len(ids), 500):
            chunk = ids[i:i + 500]
            tx.execute(f"DELETE FROM reservations WHERE job_id IN ({', '.join('?' * len(chunk))})", chunk)

    def reserved_natives(self, cluster: str) -> set[str]:
        """Native ids (each part of a split array) that hold a reservation on this cluster."""
        with self.db.transaction(single=True) as tx:
            rows = tx.all("SELECT native_id FROM reservations WHERE cluster = ? AND native_id IS NOT NULL",
                          (cluster,))
        return {n for (text,) in rows for n in str(text).split(",") if n}

    def reserved_jobs(self, account: str | None = None) -> list[str]:
        """The suanli ids holding a reservation on this account (admission settles them first), or on any."""
        where, params = ("WHERE account = ?", [account]) if account is not None else ("", [])
        with self.db.transaction(single=True) as tx:
            return [str(r[0]) for r in tx.all(f"SELECT job_id FROM reservations {where}", params)]

    def adopt_keys(self, configs: Sequence[str], key: str) -> int:
        """Re-key Slurm records booked when record ids began with the config name (``CONFIG|job|...``) to the
        physical cluster's key (``slurm:NAME|job|...``); a second copy of one job, booked through another config
        over the same cluster, is deleted. Needs the right to rewrite usage (SQLite, PostgreSQL's admin role);
        costs one index range probe per config once done."""
        n = 0
        with self.db.transaction() as tx:
            for name in configs:
                lo, hi = name + "|", name + "}"  # '}' follows '|': every id with this exact prefix
                old = "backend = 'slurm' AND record_id >= ? AND record_id < ?"
                new_id = "CAST(? AS TEXT) || substr(record_id, CAST(? AS INTEGER))"
                tx.execute(f"DELETE FROM usage_records WHERE {old} AND EXISTS (SELECT 1 FROM usage_records u "
                           f"WHERE u.record_id = CAST(? AS TEXT) || substr(usage_records.record_id, "
                           f"CAST(? AS INTEGER)))", (lo, hi, key, len(name) + 1))
                n += max(tx.rowcount, 0)
                tx.execute(f"UPDATE usage_records SET record_id = {new_id} WHERE {old}", (key, len(name) + 1, lo, hi))
                n += max(tx.rowcount, 0)
        return n

    def reservations(self) -> list[dict[str, Any]]:
        with self.db.transaction(single=True) as tx:
            rows = tx.all("SELECT job_id, cluster, native_id, account, user_name, cpu_seconds, accelerator_seconds,"
                          " charge FROM reservations ORDER BY created_at")
        keys = ("job_id", "cluster", "native_id", "account", "user", "cpu_seconds", "accelerator_seconds", "charge")
        return [dict(zip(keys, r, strict=True)) for r in rows]

    def totals(self, cluster: str | None = None) -> dict[str, float]:
        """Sums over every record (what idempotence tests and admins compare)."""
        where, params = ("WHERE cluster = ?", [cluster]) if cluster else ("", [])
        with self.db.transaction(single=True) as tx:
            r = tx.one(f"SELECT COUNT(*), COALESCE(SUM(cpu_seconds), 0), COALESCE(SUM(accelerator_seconds), 0), "
                       f"COALESCE(SUM(charge), 0) FROM usage_records {where}", params)
        # Rounded to 1e-6 only because a database may add floats in any order.
        return {"records": int(r[0]), "cpu_seconds": round(float(r[1]), 6),
                "accelerator_seconds": round(float(r[2]), 6), "charge": round(float(r[3]), 6)}

    # ------------------------------------------------------------ sync marks
    def mark(self, cluster: str, scope: str) -> float | None:
        with self.db.transaction(single=True) as tx:
            r = tx.one("SELECT mark FROM sync_marks WHERE cluster = ? AND scope = ?", (cluster, scope))
        return None if r is None else float(r[0])

    def set_mark(self, cluster: str, scope: str, mark: float) -> None:
        with self.db.transaction(single=True) as tx:
            tx.execute("INSERT INTO sync_marks (cluster, scope, mark) VALUES (?, ?, ?) ON CONFLICT (cluster, scope) "
                       "DO UPDATE SET mark = excluded.mark", (cluster, scope, mark))


class PgBatch(NamedTuple):
    """A PostgreSQL batch made ready to send: its rows (the last of each record id) in COPY's text format."""

    given: int  # rows handed over (a repeated id counted each time, as a list's len counts it)
    text: str


_PG_COLS = (*COLUMNS, "recorded_at")


def _given(batch: list[tuple[object, ...]] | PgBatch) -> int:
    return batch.given if isinstance(batch, PgBatch) else len(batch)


def lines_batch(lines: list[tuple[str, str]], now: float) -> PgBatch:
    """``pg_batch`` for lines already in COPY's text (``record_lines``): the last line of each record id, each
    ended by recorded_at."""
    if not lines:
        return PgBatch(0, "")
    tail = f"\t{now!r}\n"
    if len({rid for rid, _ in lines}) == len(lines):
        return PgBatch(len(lines), tail.join([line for _, line in lines]) + tail)
    return PgBatch(len(lines), tail.join({rid: line for rid, line in lines}.values()) + tail)


def pg_batch(rows: list[tuple[object, ...]], now: float) -> PgBatch:
    """The batch's COPY text (the last row of each record id: a statement may touch a row once), made where the
    parsing runs (the sync's parsing thread): the writing thread then only sends it and waits for the server,
    with the GIL free for the parser."""
    unique = rows if len({row[0] for row in rows}) == len(rows) else list({row[0]: row for row in rows}.values())
    # recorded_at, the same for every row, added to each line of the text, not to each row
    return PgBatch(len(rows), copy_data(unique, len(COLUMNS), f"\t{now!r}"))


class _Copying:
    """Whether a stream still tries COPY straight into the records: after two batches in a row that repeated
    booked records (a re-sync of a booked period), the rest is staged at once, so a failed COPY's rows (up to
    its first repeat) are not written twice for every batch."""

    def __init__(self) -> None:
        self.misses = 0

    @property
    def on(self) -> bool:
        return self.misses < 2


def _store_pg(tx: Tx, batch: PgBatch, rewrite: bool, copying: _Copying) -> None:
    """Store a PostgreSQL batch. The admin role's batch of new records is copied straight into the records
    (their statement trigger moves the roll-ups): no session table, no second pass over the rows. A batch
    that repeats a booked record (a sync's window overlapping the last) fails that COPY at its first repeat,
    and is staged and upserted instead, as a user role's always is (row-level security refuses COPY for it)."""
    import psycopg2.errors

    cols = ", ".join(_PG_COLS)
    if rewrite and copying.on:
        tx.execute("SAVEPOINT suanli_copy")  # kept to the commit (which ends it): no round trip to release it
        try:
            tx.copy_text("usage_records", _PG_COLS, batch.text)
            copying.misses = 0
            return
        except (psycopg2.errors.UniqueViolation, psycopg2.errors.FeatureNotSupported):
            tx.execute("ROLLBACK TO SAVEPOINT suanli_copy")
            copying.misses += 1
    # A batch: COPY into a session table, then one INSERT ... ON CONFLICT (5x executemany's rate).
    tx.execute("CREATE TEMP TABLE IF NOT EXISTS usage_stage (LIKE usage_records) ON COMMIT DELETE ROWS")
    tx.copy_text("usage_stage", _PG_COLS, batch.text)
    tx.execute(f"INSERT INTO usage_records ({cols}) SELECT {cols} FROM usage_stage {_conflict(rewrite)}")


def _conflict(rewrite: bool) -> str:
    """What a booked record's id does to the row stored: a rewrite (the admin role; a job id once known stays),
    or nothing (a user role never changes a record)."""
    if not rewrite:
        return "ON CONFLICT (record_id) DO NOTHING"
    updates = ", ".join(
        f"{c} = COALESCE(excluded.{c}, usage_records.{c})" if c == "job_id" else f"{c} = excluded.{c}"
        for c in _PG_COLS[1:])
    return f"ON CONFLICT (record_id) DO UPDATE SET {updates}"


def _upsert_sqlite(tx: Tx, rows: list[tuple[object, ...]], now: float, quiet: threading.Event | None) -> None:
    """A few rows: the upsert, and the row triggers move the roll-ups. A batch: staged (the only part that needs
    the GIL row by row: the parser waits), then stored by whole statements that let the parser run."""
    if len(rows) < 64:
        tx.executemany(UPSERT, [(*row, now) for row in rows])
        return
    tx.execute(STAGE)
    tx.execute("DELETE FROM usage_stage")
    with _pausing(quiet):
        tx.executemany(_STAGE_INSERT, rows)
    store_staged(tx, now)


_STAGE_INSERT = f"INSERT INTO usage_stage ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"


#: Streams running that lowered the GIL switch interval, and the interval before the first of them.
_SWITCH_LOCK = threading.Lock()
_switch = {"streams": 0, "before": 0.005}


@contextmanager
def _short_switch(on: bool) -> Iterator[None]:
    """PostgreSQL: each of a batch's statements ends with the writing thread asking the parser for the GIL, and
    the server idles until it has it: a 1 ms switch interval instead of the default 5 ms (~5% of a batch's
    server time, in a handful of waits) while any stream runs; the process's own value is back after the last."""
    if not on:
        yield
        return
    with _SWITCH_LOCK:
        if not _switch["streams"]:
            _switch["before"] = sys.getswitchinterval()
            sys.setswitchinterval(min(_switch["before"], 0.001))
        _switch["streams"] += 1
    try:
        yield
    finally:
        with _SWITCH_LOCK:
            _switch["streams"] -= 1
            if not _switch["streams"]:
                sys.setswitchinterval(_switch["before"])


@contextmanager
def _pausing(quiet: threading.Event | None) -> Iterator[None]:
    """Hold the parsing thread (see ``Ledger.record``) for the block, if there is one."""
    if quiet is None:
        yield
        return
    quiet.clear()
    try:
        yield
    finally:
        quiet.set()
