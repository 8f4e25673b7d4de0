"""The ledger's storage: one SQLite file (default) or a PostgreSQL database, with versioned migrations.

Both speak the same SQL through :class:`Database`; the few differences (placeholders, row locks, bulk
loads, row-level security) live here. Every failure becomes a one-line :class:`LedgerError` that names the
ledger and the fix; psycopg is imported only when a PostgreSQL URL is used.
"""

from __future__ import annotations

import logging
import os
import re
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

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


SCHEMA_VERSION = 2
USER_ROLE = "suanli_user"

#: The roll-ups' key columns besides the period (NULL is stored as '' so the key is unique on both engines).
ROLLUP_KEYS = ("account", "cluster", "user_name", "partition_name", "accelerator_kind")
#: Roll-up tables, the period each keeps and its keys: reports and admission read these, never a scan of the
#: records. The narrow daily one serves day reports by account, cluster and kind (a few rows a day, where the
#: full daily one has a row per user and partition).
ROLLUPS: dict[str, tuple[str, tuple[str, ...]]] = {
    "usage_monthly": ("month", ROLLUP_KEYS),
    "usage_daily": ("day", ROLLUP_KEYS),
    "usage_daily_accounts": ("day", ("account", "cluster", "accelerator_kind")),
}
#: Sums are integers (micro-seconds, micro-units): adding a record and taking it away again is exact, so the
#: roll-ups never drift from the records however often a record is rewritten.
ROLLUP_SUMS = {"cpu_us": "cpu_seconds", "accelerator_us": "accelerator_seconds", "charge_u": "charge"}


def micro(dialect: str, expr: str) -> str:
    """``expr`` in millionths as an integer: the one rounding both the roll-ups and their checks use."""
    return f"CAST(round({expr} * 1000000) AS {'BIGINT' if dialect == 'postgresql' else 'INTEGER'})"

# One secondary index only: every index costs a random-position insert per record, and ingest is the hot path
# (1M records: 200k/s with none, ~30k/s with five). It covers admission (one account's window, by kind) and
# the report by account and month, and keeps inserts local (a record lands inside its account's month).
# Version 2 replaces it: reports and admission read roll-ups, and a narrow index finds a window's edge records.
_TABLES = """
CREATE TABLE usage_records (
    record_id TEXT PRIMARY KEY,
    cluster TEXT NOT NULL, backend TEXT NOT NULL, native_id TEXT, job_id TEXT, array_task INTEGER,
    attempt INTEGER NOT NULL, user_name TEXT, account TEXT, partition_name TEXT, adapter TEXT,
    accelerator_kind TEXT, nodes INTEGER NOT NULL, cpus INTEGER NOT NULL, accelerators INTEGER NOT NULL,
    submit_time @REAL@, start_time @REAL@, end_time @REAL@, elapsed_s @REAL@ NOT NULL, state TEXT NOT NULL,
    cpu_seconds @REAL@ NOT NULL, accelerator_seconds @REAL@ NOT NULL, charge @REAL@ NOT NULL,
    total_cpu_s @REAL@, source TEXT NOT NULL, day TEXT, month TEXT, recorded_at @REAL@ NOT NULL
);
CREATE INDEX usage_by_account ON usage_records
    (account, month, accelerator_kind, end_time, cpu_seconds, accelerator_seconds, charge);
CREATE TABLE quotas (
    id @SERIAL@,
    account TEXT NOT NULL, user_name TEXT, cluster TEXT, period TEXT NOT NULL,
    start_date TEXT, end_date TEXT, cpu_hours @REAL@, accelerator_hours TEXT NOT NULL DEFAULT '{}',
    charge @REAL@, created_by TEXT, created_at @REAL@ NOT NULL
);
CREATE TABLE reservations (
    job_id TEXT PRIMARY KEY,
    cluster TEXT NOT NULL, native_id TEXT, account TEXT, user_name TEXT, accelerator_kind TEXT,
    cpu_seconds @REAL@ NOT NULL, accelerator_seconds @REAL@ NOT NULL, charge @REAL@ NOT NULL,
    created_at @REAL@ NOT NULL
);
CREATE INDEX reservations_by_account ON reservations (account);
CREATE TABLE sync_marks (
    cluster TEXT NOT NULL, scope TEXT NOT NULL, mark @REAL@ NOT NULL, PRIMARY KEY (cluster, scope)
);
"""

# PostgreSQL only: the admin role that runs the migration owns the tables; members of suanli_user read
# everything (quota checks sum the whole account), add usage records of their own but never change or delete
# one (so nobody lowers what they used), and manage only their own reservations and sync marks.
_PG_SECURITY = f"""
DO $$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{USER_ROLE}') THEN CREATE ROLE {USER_ROLE} NOLOGIN;
    END IF;
END $$;
GRANT SELECT ON usage_records, quotas, reservations, sync_marks, suanli_schema TO {USER_ROLE};
GRANT INSERT ON usage_records TO {USER_ROLE};
GRANT INSERT, UPDATE, DELETE ON reservations TO {USER_ROLE};
GRANT INSERT, UPDATE ON sync_marks TO {USER_ROLE};
ALTER TABLE usage_records ENABLE ROW LEVEL SECURITY;
ALTER TABLE reservations ENABLE ROW LEVEL SECURITY;
ALTER TABLE sync_marks ENABLE ROW LEVEL SECURITY;
CREATE POLICY read_all ON usage_records FOR SELECT USING (true);
CREATE POLICY add_own ON usage_records FOR INSERT TO {USER_ROLE} WITH CHECK (user_name = current_user);
CREATE POLICY read_all ON reservations FOR SELECT USING (true);
CREATE POLICY own_rows ON reservations FOR ALL TO {USER_ROLE}
    USING (user_name = current_user) WITH CHECK (user_name = current_user);
CREATE POLICY read_all ON sync_marks FOR SELECT USING (true);
CREATE POLICY own_rows ON sync_marks FOR ALL TO {USER_ROLE}
    USING (scope = current_user OR scope LIKE '%:' || current_user)
    WITH CHECK (scope = current_user OR scope LIKE '%:' || current_user);
"""


def _rollup_tables(dialect: str) -> str:
    out = []
    for table, (period, keys) in ROLLUPS.items():
        cols = ", ".join(f"{k} TEXT NOT NULL" for k in (period, *keys))
        sums = ", ".join(f"{s} BIGINT NOT NULL" for s in ROLLUP_SUMS)
        tail = " WITHOUT ROWID" if dialect == "sqlite" else ""
        # The account leads the key: admission reads one account's periods, a report by account walks it in order.
        out.append(f"CREATE TABLE {table} ({cols}, jobs BIGINT NOT NULL, {sums}, "
                   f"PRIMARY KEY ({_pk(table)})){tail};")
    return "\n".join(out) + "\n"


def _delta_select(dialect: str, table: str, source: str, sign: str) -> str:
    """The roll-up rows of the records in ``source`` (a table, or OLD/NEW in a row trigger), times ``sign``."""
    period, cols = ROLLUPS[table]
    keys = ", ".join(f"COALESCE({source}.{k}, '')" for k in (period, *cols))
    sums = ", ".join(f"{sign}{micro(dialect, f'{source}.{c}')}" for c in ROLLUP_SUMS.values())
    return f"{keys}, {sign}1, {sums}"


def _pk(table: str) -> str:
    period, keys = ROLLUPS[table]
    return ", ".join(("account", period, *keys[1:]))


def _upsert_tail(table: str) -> str:
    adds = ", ".join(f"{c} = {table}.{c} + excluded.{c}" for c in ("jobs", *ROLLUP_SUMS))
    return f"ON CONFLICT ({_pk(table)}) DO UPDATE SET {adds}"


def _rollup_cols(table: str) -> str:
    period, keys = ROLLUPS[table]
    return ", ".join((period, *keys, "jobs", *ROLLUP_SUMS))


#: SQLite: a row in this table (written and removed inside one write transaction, so no other connection ever
#: sees it) tells the row triggers that the batch being written moves the roll-ups itself, set-based.
BULK_FLAG = "usage_rollup_bulk"


def _sqlite_triggers() -> str:
    """Row triggers: every insert, rewrite and delete of a record moves its roll-ups in the same transaction
    (SQLite has no statement triggers; a batch of the ledger's own ingest does the same per group instead)."""
    out = [f"CREATE TABLE {BULK_FLAG} (on_ INTEGER NOT NULL);"]
    for event, parts in (("INSERT", (("NEW", ""),)), ("UPDATE", (("OLD", "-"), ("NEW", ""))),
                         ("DELETE", (("OLD", "-"),))):
        body = []
        for table in ROLLUPS:
            for src, sign in parts:
                body.append(f"    INSERT INTO {table} ({_rollup_cols(table)}) "
                            f"VALUES ({_delta_select('sqlite', table, src, sign)}) {_upsert_tail(table)};")
        when = f" WHEN NOT EXISTS (SELECT 1 FROM {BULK_FLAG})" if event != "DELETE" else ""
        out.append(f"CREATE TRIGGER usage_rollup_{event.lower()} AFTER {event} ON usage_records{when} BEGIN\n"
                   + "\n".join(body) + "\nEND;")
    return "\n".join(out) + "\n"


def rollup_batch_sql(source: str, sign: str) -> list[str]:
    """SQLite: move every roll-up by the records of ``source`` (a SELECT of usage_records' columns), grouped:
    one upsert per roll-up row the batch touches instead of one per record."""
    out = []
    for table, (period, cols) in ROLLUPS.items():
        keys = ", ".join(f"COALESCE({k}, '')" for k in (period, *cols))
        sums = ", ".join(f"{sign}SUM({micro('sqlite', c)})" for c in ROLLUP_SUMS.values())
        out.append(f"INSERT INTO {table} ({_rollup_cols(table)}) SELECT {keys}, {sign}COUNT(*), {sums} "
                   f"FROM ({source}) AS s WHERE true GROUP BY {keys} {_upsert_tail(table)}")
    return out


def _pg_apply(table: str, sources: tuple[tuple[str, str], ...]) -> str:
    """One statement per roll-up for a whole statement's rows (transition tables), in key order so that
    two writers lock roll-up rows in the same order."""
    period, cols = ROLLUPS[table]
    keys = (period, *cols)
    parts = " UNION ALL ".join(f"SELECT {_delta_select('postgresql', table, src, sign)} FROM {src}"
                               for src, sign in sources)
    names = ", ".join(f"d{i}" for i in range(len(keys) + 1 + len(ROLLUP_SUMS)))
    groups = ", ".join(f"d{i}" for i in range(len(keys)))
    sums = ", ".join(f"SUM(d{i})" for i in range(len(keys), len(keys) + 1 + len(ROLLUP_SUMS)))
    return (f"INSERT INTO {table} AS {table} ({_rollup_cols(table)}) SELECT {groups}, {sums} FROM ({parts}) "
            f"AS d ({names}) GROUP BY {groups} ORDER BY {groups} {_upsert_tail(table)};")


def _pg_triggers() -> str:
    """Statement triggers with transition tables (one grouped upsert per batch, not one per record); SECURITY
    DEFINER, so the roll-ups are written with the owner's rights: a suanli_user member that adds a record moves
    them, but may not write them itself (it has SELECT only)."""
    out = []
    for event, sources, refs in (
            ("INSERT", (("new_rows", ""),), "NEW TABLE AS new_rows"),
            ("UPDATE", (("old_rows", "-"), ("new_rows", "")), "OLD TABLE AS old_rows NEW TABLE AS new_rows"),
            ("DELETE", (("old_rows", "-"),), "OLD TABLE AS old_rows")):
        fn = f"suanli_rollup_{event.lower()}"
        body = "\n".join(_pg_apply(t, sources) for t in ROLLUPS)
        out.append(f"CREATE FUNCTION {fn}() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER "
                   f"SET search_path FROM CURRENT AS $$ BEGIN\n{body}\nRETURN NULL; END $$;")
        out.append(f"CREATE TRIGGER usage_rollup_{event.lower()} AFTER {event} ON usage_records "
                   f"REFERENCING {refs} FOR EACH STATEMENT EXECUTE FUNCTION {fn}();")
    return "\n".join(out) + "\n"


def _v2(dialect: str) -> str:
    """Roll-ups per account/user/cluster/partition/accelerator kind and month (and day), built from the records
    already booked and kept by triggers; the wide covering index of v1 goes (admission reads the roll-ups now)
    for a narrow one that finds the records near a window's ends."""
    # (account, day, end_time): admission corrects the roll-ups at its window's ends with the records whose
    # writer's local day falls across the reader's midnight (another time zone); the index finds just those.
    script = ("DROP INDEX usage_by_account;\n"
              "CREATE INDEX usage_by_day_end ON usage_records (account, day, end_time);\n" + _rollup_tables(dialect))
    for table, (period, cols) in ROLLUPS.items():
        keys = ", ".join(f"COALESCE({k}, '')" for k in (period, *cols))
        sums = ", ".join(f"SUM({micro(dialect, c)})" for c in ROLLUP_SUMS.values())
        script += (f"INSERT INTO {table} ({_rollup_cols(table)}) SELECT {keys}, COUNT(*), {sums} "
                   f"FROM usage_records GROUP BY {keys};\n")
    if dialect == "postgresql":
        script += _pg_triggers()
        for table in ROLLUPS:
            script += (f"GRANT SELECT ON {table} TO {USER_ROLE};\nALTER TABLE {table} ENABLE ROW LEVEL SECURITY;\n"
                       f"CREATE POLICY read_all ON {table} FOR SELECT USING (true);\n")
    else:
        script += _sqlite_triggers()
    return script


def migrations(dialect: str) -> dict[int, str]:
    real = "DOUBLE PRECISION" if dialect == "postgresql" else "REAL"
    serial = ("BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY" if dialect == "postgresql"
              else "INTEGER PRIMARY KEY AUTOINCREMENT")
    v1 = _TABLES.replace("@REAL@", real).replace("@SERIAL@", serial)
    if dialect == "postgresql":
        v1 += _PG_SECURITY
    return {1: v1, 2: _v2(dialect)}


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
        self._user: str | None = None
        self._may_rewrite: bool | None = None

    @property
    def exists(self) -> bool:
        """False for a SQLite ledger never written: no quotas can exist, so admission has nothing to check."""
        return self.dialect != "sqlite" or self.path.exists()

    # ------------------------------------------------------------ connection
    def connect(self) -> Any:
        if self._conn is not None:
            return self._conn
        if self.dialect == "sqlite":
            self._conn = self._connect_sqlite()
        else:
            self._conn = self._connect_pg()
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
        except sqlite3.Error as exc:
            raise self._sqlite_error(exc) from None
        except OSError as exc:
            raise LedgerError(f"ledger {self.where}: cannot open it: {exc.strerror}") from None
        return conn

    def _connect_pg(self) -> Any:
        try:
            import psycopg
        except ImportError:
            raise LedgerError("ledger: a PostgreSQL ledger needs psycopg; pip install 'suanli[postgres]'") from None
        assert self.url is not None
        try:
            return psycopg.connect(self.url, connect_timeout=5, autocommit=True)
        except psycopg.Error as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise LedgerError(f"ledger {self.where}: cannot connect: {first}; check the URL and that the server "
                              "runs") from None

    @property
    def may_rewrite(self) -> bool:
        """Whether this role may change booked usage (SQLite's owner and PostgreSQL's admin role may; a
        suanli_user member only adds records, and a record it booked before stays as it was)."""
        if self.dialect != "postgresql":
            return True
        if self._may_rewrite is None:
            with self.transaction() as tx:
                self._may_rewrite = bool(tx.one("SELECT has_table_privilege('usage_records', 'UPDATE')")[0])
        return self._may_rewrite

    @property
    def user(self) -> str | None:
        """The database role in PostgreSQL mode (row-level security keys on it); None for SQLite."""
        if self.dialect != "postgresql":
            return None
        if self._user is None:
            with self.transaction() as tx:
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

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None

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

    def _migrate(self) -> None:
        """Bring the schema up to date. An ordinary PostgreSQL role may not create tables: it only reads the
        version, and a ledger its admin has not set up yet gives a clear error."""
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
    def transaction(self, lock: str | None = None) -> Iterator[Tx]:
        """One atomic unit. ``lock`` serialises transactions that share the key: SQLite takes the write lock
        at BEGIN (IMMEDIATE), PostgreSQL an advisory transaction lock (any role may take one, unlike a row
        lock on the quota table, which would need UPDATE on it)."""
        conn = self._conn if self._conn is not None else self.connect()
        if self.dialect == "sqlite":
            yield from self._sqlite_tx(conn, lock)
        else:
            yield from self._pg_tx(conn, lock)

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

    def _pg_tx(self, conn: Any, lock: str | None) -> Iterator[Tx]:
        import psycopg

        try:
            with conn.transaction(), conn.cursor() as cur:
                if lock:
                    cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (lock,))
                yield Tx(cur, "postgresql")
        except psycopg.errors.InsufficientPrivilege as exc:
            role = self._user or urlsplit(self.url or "").username or "this role"
            raise LedgerPermissionError(f"ledger {self.where}: role {role} may not do this "
                                        f"({_first_line(exc)})") from None
        except psycopg.OperationalError as exc:
            self.close()
            raise LedgerError(f"ledger {self.where}: lost the connection: {_first_line(exc)}") from None
        except psycopg.Error as exc:
            raise LedgerError(f"ledger {self.where}: {_first_line(exc)}") from None

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


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _statements(script: str) -> list[str]:
    """Split a migration into statements; a DO $$ ... $$ block and a SQLite trigger's BEGIN ... END stay whole."""
    out: list[str] = []
    buf: list[str] = []
    in_block = False
    for line in script.splitlines():
        if not line.strip() and not buf:
            continue
        buf.append(line)
        if line.count("$$") % 2 == 1:
            in_block = not in_block
        trigger = buf[0].startswith("CREATE TRIGGER") and buf[0].rstrip().endswith("BEGIN")  # SQLite: to END;
        if not in_block and line.rstrip().endswith(";") and (not trigger or line.strip() == "END;"):
            out.append("\n".join(buf).strip().rstrip(";"))
            buf = []
    if "".join(buf).strip():
        out.append("\n".join(buf).strip())
    return out


_QMARK = re.compile(r"\?")


class Tx:
    """A cursor that takes ``?`` placeholders on both databases."""

    def __init__(self, cur: Any, dialect: str) -> None:
        self.cur = cur
        self.dialect = dialect

    def _sql(self, sql: str) -> str:
        return sql if self.dialect == "sqlite" else _QMARK.sub("%s", sql)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        if self.dialect != "sqlite" and not params:  # no placeholders: a literal % (LIKE '%:') stays as it is
            return self.cur.execute(sql)
        return self.cur.execute(self._sql(sql), tuple(params))

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self.cur.executemany(self._sql(sql), rows)

    def one(self, sql: str, params: Sequence[Any] = ()) -> Any:
        self.execute(sql, params)
        return self.cur.fetchone()

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        self.execute(sql, params)
        return list(self.cur.fetchall())

    @property
    def rowcount(self) -> int:
        return int(self.cur.rowcount)


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
