"""The ledger's storage: one SQLite file (default) or a PostgreSQL database, with versioned migrations.

Both speak the same SQL through :class:`Database`; the few differences (placeholders, row locks, bulk
loads, row-level security) live here. Every failure becomes a one-line :class:`LedgerError` that names the
ledger and the fix.

PostgreSQL goes through psycopg2 (imported only when a PostgreSQL URL is used), chosen by measured import cost:
a submit pays for the driver's import, and psycopg2's C module loads in ~25 ms where psycopg 3 takes 150-250 ms
and pg8000 80-110 ms (bench/README.md, "CLI start-up"). psycopg2 binds parameters client-side, so a statement
and the ``BEGIN`` before it travel in one round trip.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from suanli.accounting.schema import (
    BULK_FLAG,
    DELTA,
    ROLLUP_KEYS,
    ROLLUP_SUMS,
    ROLLUPS,
    SCHEMA_VERSION,
    USER_ROLE,
    delta_sql,
    micro,
    migrations,
    rollup_batch_sql,
)
from suanli.accounting.tx import Tx, _statements
from suanli.errors import SuanliError

log = logging.getLogger("suanli")


class LedgerError(SuanliError):
    """The ledger cannot be read or written (unreachable, locked, corrupt): exit code 4."""

    exit_code = 4


class LedgerReadOnly(LedgerError):
    """A change asked of a ledger on a read-only file system: the user's setup, not a passing fault (exit 2)."""

    exit_code = 2


class LedgerPermissionError(SuanliError):
    """The ledger refused this user (in PostgreSQL mode the database enforces who may change what)."""

    exit_code = 2


__all__ = ["BULK_FLAG", "DELTA", "ROLLUPS", "ROLLUP_KEYS", "ROLLUP_SUMS", "SCHEMA_VERSION", "USER_ROLE", "Database",
           "LedgerError", "LedgerPermissionError", "LedgerReadOnly", "Tx", "delta_sql", "micro", "migrations",
           "read_only_copy", "redact", "rollup_batch_sql"]


def redact(url: str) -> str:
    """The URL without its password, for messages."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as exc:
        raise LedgerError(f"ledger: the URL is malformed ({exc}); use postgresql://USER@HOST:PORT/DB") from None
    if parts.password:
        host = parts.hostname or ""
        netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


class Database:
    """One connection, opened lazily; ``transaction()`` is the only way to read or write."""

    def __init__(self, url: str | None, default_path: Path, lock_wait_s: float = 10.0) -> None:
        self.url = url
        self.lock_wait_s = lock_wait_s
        self.read_only = False  # set when a SQLite ledger is read from a copy (its folder is not writable)
        if url is None or url.startswith("sqlite:"):
            self.dialect = "sqlite"
            if url is not None and not url.startswith("sqlite:///"):
                raise LedgerError(f"ledger: {url!r}: a SQLite ledger URL is sqlite:///ABSOLUTE/PATH")
            self.path = Path(url[len("sqlite://"):]) if url else default_path
            self.where = str(self.path)
        elif url.startswith(("postgresql://", "postgres://")):
            self.dialect = "postgresql"
            self.path = default_path
            self.where = redact(url)
        else:
            raise LedgerError(f"ledger: {redact(url)!r} is not a ledger URL; use postgresql://USER@HOST:PORT/DB "
                              "or sqlite:///PATH (settings.yaml `ledger:` or $SUANLI_LEDGER_URL)")
        self._conn: Any = None
        #: PostgreSQL: the statements prepared on this connection (Tx.all_prepared); a new connection has none.
        self._prepared: dict[str, str] = {}
        self._lock = threading.RLock()
        self._user: str | None = None
        self._may_rewrite: bool | None = None

    @property
    def exists(self) -> bool:
        """False for a SQLite ledger never written: no quotas can exist, so admission has nothing to check."""
        return self.dialect != "sqlite" or self.path.exists()

    # ------------------------------------------------------------ connection
    def connect(self) -> Any:
        with self._lock:
            return self._connect_locked()

    def _connect_locked(self) -> Any:
        if self._conn is not None:
            return self._conn
        if self.dialect == "sqlite":
            self._conn = self._connect_sqlite()
        else:
            self._conn = self._connect_pg()
            self._prepared = {}
        self._migrate()
        if self.read_only:
            # A copy of a ledger this process cannot write: reports read it, every write is refused (a quota
            # set here would otherwise "succeed" into memory and be lost).
            self._conn.execute("PRAGMA query_only = ON")
        return self._conn

    def _connect_sqlite(self) -> sqlite3.Connection:
        if self.path.exists() and not os.access(self.path.parent, os.W_OK):
            self.read_only = True
            return read_only_copy(self.path)  # a read-only SUANLI_HOME: reports read a copy (nothing to write)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=self.lock_wait_s, isolation_level=None,
                                   check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout = {int(self.lock_wait_s * 1000)}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA cache_size = -65536")  # 64 MB, allocated only as used: bulk syncs need it
            conn.execute("PRAGMA wal_autocheckpoint = 16384")  # checkpoint per 64 MB of WAL, not per 4 MB
            # A sync's staged batch and its GROUP BY sorts stay in memory (a few MB), not in a temp file.
            conn.execute("PRAGMA temp_store = MEMORY")
        except sqlite3.Error as exc:
            raise self._sqlite_error(exc) from None
        except OSError as exc:
            raise LedgerError(f"ledger {self.where}: cannot open it: {exc.strerror}") from None
        return conn

    def _connect_pg(self) -> Any:
        try:
            psycopg2 = _import_psycopg2()
        except ImportError:
            raise LedgerError("ledger: a PostgreSQL ledger needs psycopg2; pip install 'suanli[postgres]'") from None
        assert self.url is not None
        try:
            conn = psycopg2.connect(self.url, connect_timeout=5)
            conn.autocommit = True  # transactions are explicit (Database.transaction)
        except psycopg2.Error as exc:
            raise LedgerError(f"ledger {self.where}: cannot connect: {_first_line(exc)}; check the URL and that "
                              "the server runs") from None
        return conn

    @property
    def may_rewrite(self) -> bool:
        """Whether this role may change booked usage (SQLite's owner and PostgreSQL's admin role may; a
        suanli_user member only adds records, and a record it booked before stays as it was)."""
        if self.dialect != "postgresql":
            return True
        if self._may_rewrite is None:
            with self.transaction(single=True) as tx:
                self._may_rewrite = bool(tx.one("SELECT has_table_privilege('usage_records', 'UPDATE')")[0])
        return self._may_rewrite

    @property
    def user(self) -> str | None:
        """The database role in PostgreSQL mode (row-level security keys on it); None for SQLite."""
        if self.dialect != "postgresql":
            return None
        if self._user is None:
            with self.transaction(single=True) as tx:
                self._user = str(tx.one("SELECT current_user")[0])
        return self._user

    @contextmanager
    def quick(self, wait_s: float = 0.5) -> Iterator[None]:
        """Wait at most ``wait_s`` for a busy SQLite ledger inside this block (for work on the status path
        that may be retried later)."""
        if self.dialect != "sqlite":
            yield
            return
        saved = self.lock_wait_s
        conn = self.connect()
        self.lock_wait_s = wait_s
        conn.execute(f"PRAGMA busy_timeout = {int(wait_s * 1000)}")
        try:
            yield
        finally:
            self.lock_wait_s = saved
            if self._conn is not None:
                self._conn.execute(f"PRAGMA busy_timeout = {int(saved * 1000)}")

    def attach(self, path: Path | str, name: str) -> None:
        """SQLite: attach a scratch database file under ``name`` (outside any transaction: SQLite refuses it
        inside one), so whole statements read from it."""
        with self._lock:
            try:
                self.connect().execute(f"ATTACH DATABASE ? AS {name}", (str(path),))
            except sqlite3.Error as exc:
                raise self._sqlite_error(exc) from None

    def detach(self, name: str) -> None:
        with self._lock:
            if self._conn is not None:
                try:
                    self._conn.execute(f"DETACH DATABASE {name}")
                except sqlite3.Error as exc:
                    log.warning("ledger %s: could not detach %s: %s", self.where, name, exc)

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None
                self._prepared = {}

    # ------------------------------------------------------------ migrations
    def _version(self, tx: Tx) -> int:
        if self.dialect == "sqlite":
            found = tx.one("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'suanli_schema'")
        else:
            found = tx.one("SELECT to_regclass('suanli_schema')")
            found = found if found and found[0] is not None else None
        if not found:
            return 0
        row = tx.one("SELECT MAX(version) FROM suanli_schema")
        return int(row[0]) if row and row[0] is not None else 0

    def _current(self) -> bool:
        """Whether the schema is up to date, in one statement outside any transaction (the common case, paid by
        every process that opens the ledger); PostgreSQL's answer also carries the role and its right to
        rewrite usage, which ``user`` and ``may_rewrite`` would otherwise ask for one round trip each."""
        cur = self._conn.cursor()
        try:
            if self.dialect == "sqlite":
                cur.execute("SELECT MAX(version) FROM suanli_schema")
                row = cur.fetchone()
            else:
                cur.execute("SELECT MAX(version), current_user, has_table_privilege('usage_records', 'UPDATE') "
                            "FROM suanli_schema")
                row = cur.fetchone()
                self._user, self._may_rewrite = str(row[1]), bool(row[2])
        except Exception:  # noqa: BLE001 - no schema yet (or an odd one): the full check below says what is wrong
            return False
        finally:
            cur.close()
        return bool(row and row[0] == SCHEMA_VERSION)

    def _migrate(self) -> None:
        """Bring the schema up to date. An ordinary PostgreSQL role may not create tables: it only reads the
        version, and a ledger its admin has not set up yet gives a clear error."""
        if self._current():
            return
        with self.transaction() as tx:
            if self._version(tx) == SCHEMA_VERSION:
                return
        with self.transaction(lock="suanli-schema") as tx:
            tx.execute("CREATE TABLE IF NOT EXISTS suanli_schema (version INTEGER NOT NULL)")
            version = self._version(tx)
            if version > SCHEMA_VERSION:
                raise LedgerError(f"ledger {self.where}: schema version {version} is newer than this suanli "
                                  f"({SCHEMA_VERSION}); upgrade suanli")
            for v, script in sorted(migrations(self.dialect).items()):
                if v <= version:
                    continue
                for statement in _statements(script):
                    tx.execute(statement)
                tx.execute("INSERT INTO suanli_schema (version) VALUES (?)", (v,))
                log.debug("ledger %s: migrated to schema version %d", self.where, v)

    # ------------------------------------------------------------ transactions
    @contextmanager
    def transaction(self, lock: str | None = None, *, single: bool = False) -> Iterator[Tx]:
        """One atomic unit. ``lock`` serialises transactions that share the key: SQLite takes the write lock
        at BEGIN (IMMEDIATE), PostgreSQL an advisory transaction lock (any role may take one, unlike a row
        lock on the quota table, which would need UPDATE on it). ``single``: the block sends one statement,
        atomic by itself, so PostgreSQL needs no BEGIN and COMMIT around it (one round trip instead of two)."""
        # One connection per Database, shared by the threads of a Client: one transaction at a time on it.
        with self._lock:
            conn = self._conn if self._conn is not None else self.connect()
            if self.dialect == "sqlite":
                yield from self._sqlite_tx(conn, lock)
            else:
                yield from self._pg_tx(conn, None if single else lock, single)

    def _sqlite_tx(self, conn: sqlite3.Connection, lock: str | None) -> Iterator[Tx]:
        deadline = time.monotonic() + self.lock_wait_s
        while True:
            try:
                conn.execute("BEGIN IMMEDIATE" if lock else "BEGIN")
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() >= deadline:
                    raise self._sqlite_error(exc) from None
                time.sleep(0.05)
        try:
            yield Tx(conn.cursor(), "sqlite")
            conn.execute("COMMIT")
        except BaseException as exc:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            if isinstance(exc, sqlite3.Error):
                raise self._sqlite_error(exc) from None
            raise

    def _pg_tx(self, conn: Any, lock: str | None, single: bool = False) -> Iterator[Tx]:
        import psycopg2
        import psycopg2.errors
        import psycopg2.extensions

        tx = Tx(conn.cursor(), "postgresql", single, self._prepared)
        if not single:
            # BEGIN and the lock travel with the transaction's first statement: one round trip for the three.
            tx.begin = "BEGIN; "
            if lock:
                sql = tx.cur.mogrify("SELECT pg_advisory_xact_lock(hashtext(%s)); ", (lock,))
                tx.begin += sql.decode(psycopg2.extensions.encodings[conn.encoding])
        try:
            yield tx
            if tx.deferred:
                # The deferred writes and the COMMIT (and the BEGIN, when nothing was sent yet) in one round
                # trip: PostgreSQL runs the string's statements in order and stops at the first error.
                enc = psycopg2.extensions.encodings[conn.encoding]
                writes = [tx.cur.mogrify(sql, params).decode(enc) if params else sql for sql, params in tx.deferred]
                tx.cur.execute(tx._begun("; ".join([*writes, "COMMIT"])))
            elif not single and tx.sent:  # a transaction that sent no statement never began
                tx.cur.execute("COMMIT")
        except BaseException as exc:
            if not single and tx.sent and not conn.closed:
                try:
                    tx.cur.execute("ROLLBACK")
                except psycopg2.Error:
                    pass
            if isinstance(exc, psycopg2.errors.InsufficientPrivilege):
                role = self._user or urlsplit(self.url or "").username or "this role"
                raise LedgerPermissionError(f"ledger {self.where}: role {role} may not do this "
                                            f"({_first_line(exc)})") from None
            if isinstance(exc, psycopg2.OperationalError | psycopg2.InterfaceError):
                self.close()
                raise LedgerError(f"ledger {self.where}: lost the connection: {_first_line(exc)}") from None
            if isinstance(exc, psycopg2.Error):
                raise LedgerError(f"ledger {self.where}: {_first_line(exc)}") from None
            raise
        finally:
            tx.cur.close()

    def _sqlite_error(self, exc: sqlite3.Error) -> LedgerError:
        text = str(exc)
        if "locked" in text or "busy" in text:
            return LedgerError(f"ledger {self.where}: locked by another process for {self.lock_wait_s:.0f} s; "
                               "retry, or look for a hung suanli process")
        if "not a database" in text or "malformed" in text or "corrupt" in text:
            return LedgerError(f"ledger {self.where}: the file is corrupt or not a SQLite database; move it "
                               "away (a new one is created) or restore a backup")
        if self.read_only and ("readonly" in text or "read-only" in text):
            return LedgerReadOnly(f"ledger {self.where}: on a read-only file system; reports work, changes need a "
                                  "writable SUANLI_HOME (or a PostgreSQL ledger)")
        if "readonly" in text or "unable to open" in text:
            return LedgerError(f"ledger {self.where}: cannot write it ({text}); check its permissions")
        return LedgerError(f"ledger {self.where}: {text}")


#: The standard modules psycopg2's import loads besides ``ssl`` and its own package (on the submit path only
#: ``decimal`` is new): imported before ``ssl`` is hidden, so none of them can see it missing
#: (``_import_psycopg2``; tests/test_ledger_submit_cost.py checks that nothing else loads in that gap).
_PSYCOPG2_DEPS = ("datetime", "decimal", "json", "math", "re", "warnings")


def _import_psycopg2() -> Any:
    """psycopg2, without the ~12 ms of ``import ssl`` that its C module does at import (a third of the driver's
    cost, and of what a ledger adds to a submit) when that cannot change anything.

    psycopg2 imports ``ssl`` only to decide who sets up libcrypto's thread-locking callbacks: when the import
    works it tells libpq not to (``PQinitOpenSSL(1, 0)``), so that libpq does not replace Python's callbacks;
    when it fails (``PyErr_Clear``) libpq sets its own. Those callbacks exist only in OpenSSL before 1.1.0;
    from 1.1.0 on libcrypto locks by itself and both branches do nothing. Python >= 3.10 (this package's
    floor, PEP 644) needs OpenSSL >= 1.1.1, so when libpq shares Python's libcrypto there is nothing to set up;
    when it has its own (psycopg2-binary bundles OpenSSL 3) nobody else's callbacks are on it. libpq's TLS
    (``sslmode``) works the same either way: it initialises its OpenSSL when it connects.

    ``ssl`` is hidden (``sys.modules['ssl'] = None`` makes its import fail at once) only while psycopg2 loads,
    only when nothing has imported ``ssl`` yet and no other thread runs (no other code can see the gap), and
    psycopg2's own dependencies are loaded first (none of them can cache "no ssl"); the entry is removed in a
    ``finally``, so a later ``import ssl`` loads the real module."""
    if "psycopg2" in sys.modules or "ssl" in sys.modules or threading.active_count() != 1:
        import psycopg2

        return psycopg2
    import importlib

    for name in _PSYCOPG2_DEPS:
        importlib.import_module(name)
    sys.modules["ssl"] = None  # type: ignore[assignment]
    try:
        import psycopg2
    finally:
        if "ssl" in sys.modules and sys.modules["ssl"] is None:
            del sys.modules["ssl"]
    return psycopg2


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def read_only_copy(path: Path) -> sqlite3.Connection:
    """An in-memory copy of a SQLite file this process cannot write (a read-only file system or folder), so
    read-only commands still work; whatever they write goes nowhere."""
    from urllib.parse import quote

    uri = f"file:{quote(str(path))}?mode=ro"
    try:
        src = sqlite3.connect(uri, uri=True, check_same_thread=False)
        src.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
    except sqlite3.OperationalError:
        src = sqlite3.connect(uri + "&immutable=1", uri=True, check_same_thread=False)  # WAL without its -shm
    conn = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
    try:
        src.backup(conn)
    except sqlite3.Error as exc:
        raise LedgerError(f"ledger {path}: read-only file system, and the copy failed: {exc}") from None
    finally:
        src.close()
    return conn
