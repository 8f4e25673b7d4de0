"""Bulk booking of ended allocations on a SQLite ledger: what `accounting sync` of a year of a centre runs.

A record of an allocation is mostly the allocation itself; its id, native id, month, charge, adapter and (for a
job this registry submitted) its suanli id and config follow from it and from the sync's rates and submitters.
Handing SQLite only the allocation (19 values, not a record's 27) cuts the Python work of binding them, and the
rest is computed by SQL beside the insert. Two processes share the work: the sync parses and binds each batch
into one of two slot files, and a writer process of its own moves a filled slot into the ledger with whole
statements while the next is filled (as two threads they would share the GIL and wait on each other). Every
record and roll-up it writes is what ``record_rows`` writes for the same allocations (a test compares them row
by row).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from types import TracebackType

from suanli.accounting.db import (
    BULK_FLAG,
    ROLLUP_KEYS,
    ROLLUP_SUMS,
    ROLLUPS,
    Database,
    LedgerError,
    Tx,
    delta_sql,
    micro,
    rollup_batch_sql,
)
from suanli.accounting.records import COLUMNS
from suanli.errors import SuanliError

__all__ = ["ALLOCATION", "STAGE", "UPSERT", "Booking", "BookingSession", "store_staged"]

#: An allocation's values in the order the Slurm sacct reader yields them (its ``AllocationTuple``).
ALLOCATION = ("job", "array_task", "attempt", "user_name", "account", "partition_name", "accelerator_kind", "nodes",
              "cpus", "accelerators", "submit_time", "start_time", "end_time", "elapsed_s", "state", "cpu_seconds",
              "accelerator_seconds", "total_cpu_s", "day")

#: (cpu_hour rate, accelerator_hour rate, adapter) of one partition.
Rate = tuple[float, float, str | None]


@dataclass
class Booking:
    """How allocations become records: ``key`` starts each record id (the physical cluster), ``cluster`` is the
    config a record shows unless a config of this registry submitted the job (``natives``: base native id ->
    (suanli id, config)); ``rates``: config -> partition -> rate (a partition not named is charged nothing)."""

    key: str
    cluster: str
    rates: Mapping[str, Mapping[str, Rate]] = field(default_factory=dict)
    natives: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    backend: str = "slurm"
    source: str = "sacct"


def _store_slot(tx: Tx, slot: str, params: dict[str, object], count: int, natives: bool) -> None:
    """Store a slot's allocations as records. New records only (a sync's usual batch): inserted straight from
    the slot, and the roll-ups read back the rows just appended (their rowids follow the table's largest);
    a batch that rewrites records is staged first and takes ``store_staged``'s rewrite path."""
    tx.execute(f"INSERT INTO {BULK_FLAG} VALUES (1)")  # a write first: the ledger's write lock, then the read
    (last,) = tx.one("SELECT COALESCE(max(rowid), 0) FROM usage_records")
    try:
        # named parameters (SQLite's own): the statement names some twice
        tx.cur.execute(_record_sql(slot, "usage_records", natives, ", recorded_at", ", @now"), params)
    except sqlite3.IntegrityError:
        tx.execute(f"DELETE FROM {BULK_FLAG}")
        tx.execute(STAGE)
        tx.execute("DELETE FROM usage_stage")
        tx.cur.execute(_record_sql(slot, "usage_stage", natives), params)
        store_staged(tx, float(params["now"]))  # type: ignore[arg-type]
        return
    if tx.rowcount != count:
        raise RuntimeError(f"ledger: {tx.rowcount} of {count} records stored")
    for sql in _ROLLUPS_OF_APPENDED:
        tx.execute(sql, (last,) if "?" in sql else ())
    tx.execute(f"DELETE FROM {BULK_FLAG}")


def _record_sql(slot: str, table: str, natives: bool, extra: str = "", value: str = "") -> str:
    """The records of the allocations in ``slot``, in COLUMNS order: the same values ``usage_rows`` and the sync's
    submitter mapping make in Python (the same float operations in the same order, so the charge is equal to the
    bit; ``int(x or 0)`` is a cast that truncates, as SQLite's). Without ``natives`` (no job of the sync's
    cluster in this registry: a centre-wide sync's usual case) the submitters' table is not joined."""
    cluster = "COALESCE(n.cluster, @cluster)" if natives else "@cluster"
    sep = "'|'"
    native = "CASE WHEN instr(a.job, '+') > 0 THEN substr(a.job, 1, instr(a.job, '+') - 1) ELSE a.job END"
    values = {
        "record_id": f"@key || {sep} || a.job || {sep} || CAST(COALESCE(a.submit_time, 0) AS INTEGER) || {sep} "
                     f"|| CAST(COALESCE(a.start_time, 0) AS INTEGER)",
        "cluster": cluster,
        "backend": "@backend",
        "native_id": native,
        "job_id": "n.job_id" if natives else "NULL",
        "adapter": "r.adapter",
        "charge": "COALESCE(a.cpu_seconds / 3600.0 * r.cpu_rate + a.accelerator_seconds / 3600.0 * r.acc_rate, 0.0)",
        "source": "@source",
        "month": "substr(a.day, 1, 7)",
    }
    select = ", ".join(values.get(c, f"a.{c}") for c in COLUMNS)
    # The submitter is found by the id before any '+' (hetjob component) or '_' (array task).
    base = "substr(a.job, 1, min(instr(a.job || '+', '+'), instr(a.job || '_', '_')) - 1)"
    join = f"LEFT JOIN {_NATIVES} AS n ON n.base = {base} " if natives else ""
    return (f"INSERT INTO {table} ({', '.join(COLUMNS)}{extra}) SELECT {select}{value} FROM {slot}.allocations AS a "
            f"{join}LEFT JOIN {_RATES} AS r ON r.cluster = {cluster} AND r.partition_name = a.partition_name")


_PREFIX = "suanli-sync-"  # the slot folder's name: this, the sync's pid, a dash, a unique tail
_NATIVES = "temp.suanli_sync_natives"
_RATES = "temp.suanli_sync_rates"
_SLOTS = ("suanli_slot0", "suanli_slot1")
_INSERT = f"INSERT INTO allocations VALUES ({', '.join('?' * len(ALLOCATION))})"


class BookingSession:
    """One sync's bulk booking on a SQLite ledger (a context manager). ``store`` parses and binds each batch into
    a slot file here; a writer process of its own (started with the first full batch) moves it into the ledger
    with whole statements, so parsing and storing run on two cores with no lock between them (in threads they
    share the GIL, and each waits for the other). A window smaller than a batch (a user's few jobs) is stored
    here, through the same statements, without starting a process."""

    def __init__(self, db: Database, booking: Booking, batch: int) -> None:
        self.db, self.booking, self.batch = db, booking, batch
        self.folder: Path | None = None
        self.slots: list[sqlite3.Connection] = []
        self.attached: list[str] = []  # slots attached to this process's ledger connection
        self.writer: subprocess.Popen[bytes] | None = None
        self.pending: set[int] = set()  # slots handed to the writer that it has not reported stored yet
        self.params = {"key": booking.key, "cluster": booking.cluster, "backend": booking.backend,
                       "source": booking.source}

    def __enter__(self) -> BookingSession:
        try:
            _sweep(Path(tempfile.gettempdir()))
            self.folder = Path(tempfile.mkdtemp(prefix=f"{_PREFIX}{os.getpid()}-"))
            for name in _SLOTS:
                conn = sqlite3.connect(self.folder / f"{name}.db", isolation_level=None)
                # A slot is scratch space: nothing in it outlives the sync, so it needs no journal nor syncing.
                conn.execute("PRAGMA journal_mode = OFF")
                conn.execute("PRAGMA synchronous = OFF")
                conn.execute("PRAGMA cache_size = -32768")  # a batch's pages stay in memory until its commit
                conn.execute(f"CREATE TABLE allocations ({', '.join(ALLOCATION)})")
                self.slots.append(conn)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Stop the writer (it finishes the batch it holds), detach and delete the slots."""
        if self.writer is not None:
            writer, self.writer = self.writer, None
            try:
                assert writer.stdin is not None
                writer.stdin.close()  # end of input: the writer exits
            except OSError:
                pass
            try:
                writer.wait(timeout=max(60.0, self.db.lock_wait_s * 2))
            except subprocess.TimeoutExpired:
                writer.kill()
                writer.wait()
            if writer.stdout is not None:
                writer.stdout.close()
        for name in self.attached:
            self.db.detach(name)
        self.attached = []
        for conn in self.slots:
            conn.close()
        self.slots = []
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None

    def store(self, allocations: Iterable[tuple[object, ...]]) -> int:
        """Book the allocations, a batch per transaction; returns how many were booked. A failure (the input's,
        or the ledger's in the writer) is raised here once the batches handed over are stored: those stay (a
        rerun rewrites them, as any sync)."""
        it = iter(allocations)
        now = time.time()
        n = 0  # handed over: all stored once the loop below has heard of each (else it raises)
        try:
            while True:
                chunk = list(islice(it, self.batch))
                if not chunk:
                    break
                if self.writer is None and len(chunk) < self.batch:  # the whole window: no process for it
                    self._fill(0, chunk)
                    self._store_here(0, len(chunk), now)
                else:
                    free = [i for i in range(len(self.slots)) if i not in self.pending]
                    slot = free[0] if free else self._wait()
                    self._fill(slot, chunk)
                    self._send({"slot": slot, "count": len(chunk), "now": now})
                    self.pending.add(slot)
                n += len(chunk)
        finally:
            while self.pending:
                self._wait()
        return n

    def _fill(self, slot: int, chunk: list[tuple[object, ...]]) -> None:
        conn = self.slots[slot]
        conn.execute("BEGIN")
        conn.execute("DELETE FROM allocations")
        conn.executemany(_INSERT, chunk)
        conn.execute("COMMIT")

    def _store_here(self, slot: int, count: int, now: float) -> None:
        if not self.attached:
            self.db.attach(self.folder / f"{_SLOTS[slot]}.db", _SLOTS[slot])  # type: ignore[operator]
            self.attached.append(_SLOTS[slot])
            with self.db.transaction() as tx:
                _session_tables(tx, *_table_rows(self.booking))
        with self.db.transaction() as tx:
            _store_slot(tx, _SLOTS[slot], dict(self.params, now=now), count, bool(self.booking.natives))

    def _send(self, message: dict[str, object]) -> None:
        if self.writer is None:
            self._start()
        assert self.writer is not None and self.writer.stdin is not None
        try:
            self.writer.stdin.write(json.dumps(message).encode() + b"\n")
            self.writer.stdin.flush()
        except OSError:
            self._wait()  # it exited: its reason
            raise

    def _start(self) -> None:
        """The writer process: this interpreter, with this process's module path (so it runs this suanli,
        wherever that came from), running ``_writer_main``."""
        assert self.folder is not None
        boot = ("import json, sys; sys.path[:] = json.loads(sys.argv[1]); "
                "from suanli.accounting.bulk import _writer_main; _writer_main()")
        self.writer = subprocess.Popen([sys.executable, "-c", boot, json.dumps(sys.path)], stdin=subprocess.PIPE,
                                       stdout=subprocess.PIPE, close_fds=True)
        natives, rates = _table_rows(self.booking)
        head = {"ledger": str(self.db.path), "lock_wait_s": self.db.lock_wait_s, "params": self.params,
                "slots": [str(self.folder / f"{name}.db") for name in _SLOTS], "natives": natives, "rates": rates}
        self._send(head)
        self._wait()  # "ready": the ledger opened and the session tables made (or why not)

    def _wait(self) -> int:
        """The writer's next report: a slot it stored (returned, and freed), or its readiness; raises its failure,
        or its exit."""
        assert self.writer is not None and self.writer.stdout is not None
        line = self.writer.stdout.readline()
        if not line:
            self.pending.clear()
            code = self.writer.wait()
            raise LedgerError(f"ledger {self.db.where}: the sync's writer process exited (status {code}) "
                              "before it reported; see its message above")
        msg = json.loads(line)
        if "error" in msg:
            self.pending.clear()
            raise LedgerError(str(msg["error"]))
        if "slot" not in msg:
            return -1
        slot = int(msg["slot"])
        self.pending.remove(slot)
        return slot


def _sweep(folder: Path) -> None:
    """Remove the slot folders that killed syncs left (their process is gone; a sync killed with SIGKILL
    cannot clean up after itself): each sync sweeps before it makes its own. Only this user's."""
    for old in folder.glob(f"{_PREFIX}*-*"):
        pid = old.name[len(_PREFIX):].split("-", 1)[0]
        try:
            if not pid.isdigit() or old.stat().st_uid != os.getuid():
                continue
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(old, ignore_errors=True)
        except OSError:  # another user's process, or the folder went meanwhile
            continue


def _table_rows(booking: Booking) -> tuple[list[list[object]], list[list[object]]]:
    """The booking's submitters and rates as the rows of their session tables (sent to the writer as they are)."""
    return ([[base, job, cfg] for base, (job, cfg) in booking.natives.items()],
            [[cfg, part, *r] for cfg, parts in booking.rates.items() for part, r in parts.items()])


def _session_tables(tx: Tx, natives: list[list[object]], rates: list[list[object]]) -> None:
    """The sync's submitters and rates as session tables on this connection (the records' SQL joins them)."""
    tx.execute("CREATE TEMP TABLE IF NOT EXISTS suanli_sync_natives "
               "(base TEXT PRIMARY KEY, job_id TEXT, cluster TEXT) WITHOUT ROWID")
    tx.execute("CREATE TEMP TABLE IF NOT EXISTS suanli_sync_rates (cluster TEXT, partition_name TEXT, "
               "cpu_rate REAL, acc_rate REAL, adapter TEXT, PRIMARY KEY (cluster, partition_name)) WITHOUT ROWID")
    tx.execute(f"DELETE FROM {_NATIVES}")
    tx.execute(f"DELETE FROM {_RATES}")
    tx.executemany(f"INSERT INTO {_NATIVES} VALUES (?, ?, ?)", natives)
    tx.executemany(f"INSERT INTO {_RATES} VALUES (?, ?, ?, ?, ?)", rates)


def _writer_main() -> None:
    """The writer process (started by ``BookingSession._start``): reads a header and then one line per filled
    slot on stdin, stores each slot in its own transaction and reports it; any failure is reported as one line,
    and ends it. Its stdout is the protocol only (anything printed goes to stderr). Ctrl-C reaches the whole
    foreground group: the writer leaves it to the sync, which ends it by closing its input (after the batch
    it holds is stored or rolled back)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)

    def say(message: dict[str, object]) -> None:
        out.write(json.dumps(message).encode() + b"\n")
        out.flush()

    db: Database | None = None
    try:
        head = json.loads(sys.stdin.buffer.readline())
        db = Database(None, Path(head["ledger"]), float(head["lock_wait_s"]))
        for name, path in zip(_SLOTS, head["slots"], strict=True):
            db.attach(path, name)
        with db.transaction() as tx:
            _session_tables(tx, head["natives"], head["rates"])
        say({"ready": True})
        natives = bool(head["natives"])
        for line in sys.stdin.buffer:
            msg = json.loads(line)
            with db.transaction() as tx:
                _store_slot(tx, _SLOTS[msg["slot"]], dict(head["params"], now=msg["now"]), msg["count"], natives)
            say({"slot": msg["slot"]})
    except Exception as exc:  # reported to the sync, which raises it
        say({"error": str(exc) if isinstance(exc, SuanliError) else f"ledger: the sync's writer: {exc!r}"})
        raise SystemExit(1) from None
    finally:
        if db is not None:
            db.close()


# ---------------------------------------------------------------- a staged batch into the ledger (SQLite)
UPSERT = (
    f"INSERT INTO usage_records ({', '.join(COLUMNS)}, recorded_at) VALUES ({', '.join('?' * (len(COLUMNS) + 1))}) "
    "ON CONFLICT (record_id) DO UPDATE SET "
    + ", ".join(
        f"{c} = COALESCE(excluded.{c}, usage_records.{c})" if c == "job_id" else f"{c} = excluded.{c}"
        for c in (*COLUMNS[1:], "recorded_at")
    )
)
#: The session table a batch is staged in, whichever path staged it.
STAGE = "CREATE TEMP TABLE IF NOT EXISTS usage_stage AS SELECT * FROM usage_records WHERE 0"


def store_staged(tx: Tx, now: float) -> None:
    """Store the batch in ``usage_stage`` (``now`` is its records' recorded_at) and move the roll-ups, with the
    row triggers told to stand aside. A batch of new records only (a sync's usual one) is copied in, no probe
    first; one that rewrites records keeps one row per record id (the last staged, as PostgreSQL's path), takes
    away what those records held before and adds what the batch holds, through the deltas table."""
    tx.execute(f"INSERT INTO {BULK_FLAG} VALUES (1)")
    try:  # as new records: a record already stored aborts the statement, and SQLite backs out what it wrote
        tx.execute(_NEW_FROM_STAGE, (now,))
        rollups = _ROLLUPS_OF_NEW
    except sqlite3.IntegrityError:  # a rewrite (or one record id twice in the batch)
        tx.execute("DELETE FROM usage_stage WHERE rowid NOT IN (SELECT max(rowid) FROM usage_stage GROUP BY record_id)")
        for sql in [*delta_sql(f"SELECT * FROM usage_records WHERE record_id IN ({_STAGED_IDS})", "-"),
                    *delta_sql("SELECT * FROM usage_stage", "")[1:]]:
            tx.execute(sql)
        tx.execute(_FROM_STAGE, (now,))
        rollups = rollup_batch_sql()
    for sql in rollups:
        tx.execute(sql)
    tx.execute(f"DELETE FROM {BULK_FLAG}")


def _rollups_of_new(source: str = "usage_stage WHERE true") -> list[str]:
    """SQLite: the roll-ups moved by a batch of new records. The batch is first added up per group of the finest
    roll-up (a day's account, cluster, user, partition and kind) in a small session table, one upsert per record
    that finds a row a few thousand rows deep; each roll-up then takes one upsert per group, not per record
    (a day's batch has ~4 records per group, and sorting it by a GROUP BY costs more, measured). Exact: the sums
    are each record's millionths added up as integers."""
    sums = ("jobs", *ROLLUP_SUMS)
    keys = ("account", "day", *ROLLUP_KEYS[1:], "month")  # the daily roll-up's key order: it reads in order
    adds = ", ".join(f"{c} = {GROUPS}.{c} + excluded.{c}" for c in sums)
    out = [f"CREATE TEMP TABLE IF NOT EXISTS {GROUPS} ({', '.join(f'{k} TEXT NOT NULL' for k in keys)}, "
           f"{', '.join(f'{c} INTEGER NOT NULL' for c in sums)}, PRIMARY KEY ({', '.join(keys)})) WITHOUT ROWID",
           f"INSERT INTO {GROUPS} SELECT {', '.join(f'COALESCE({k}, {_EMPTY})' for k in keys)}, 1, "
           f"{', '.join(micro('sqlite', c) for c in ROLLUP_SUMS.values())} FROM {source} "
           f"ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {adds}"]
    for table, (period, cols) in ROLLUPS.items():
        pk = ", ".join(("account", period, *cols[1:]))
        moved = ", ".join(f"{c} = {table}.{c} + excluded.{c}" for c in sums)
        out.append(f"INSERT INTO {table} ({', '.join((period, *cols, *sums))}) SELECT {', '.join((period, *cols))}, "
                   f"{', '.join(f'SUM({c})' for c in sums)} FROM {GROUPS} GROUP BY {pk} "
                   f"ON CONFLICT ({pk}) DO UPDATE SET {moved}")
    return [*out, f"DELETE FROM {GROUPS}"]


_EMPTY = "''"
GROUPS = "usage_groups"
_STAGED_IDS = "SELECT record_id FROM usage_stage"
_FROM_STAGE = UPSERT.replace(f"VALUES ({', '.join('?' * (len(COLUMNS) + 1))})",
                              f"SELECT {', '.join(COLUMNS)}, ? FROM usage_stage WHERE true")
#: A batch of new records: a plain INSERT (ABORT on a conflict), so finding that none is stored yet costs nothing.
_NEW_FROM_STAGE = (f"INSERT INTO usage_records ({', '.join(COLUMNS)}, recorded_at) "
                   f"SELECT {', '.join(COLUMNS)}, ? FROM usage_stage")
_ROLLUPS_OF_NEW = _rollups_of_new()
#: The roll-ups of the records a bulk insert just appended (rowids past the table's largest before it).
_ROLLUPS_OF_APPENDED = _rollups_of_new("usage_records WHERE rowid > ?")
