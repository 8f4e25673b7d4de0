"""The job registry's connection: where it lives, how it is opened, migrated and shared by threads."""

from __future__ import annotations

import errno
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from suanli.compute.store_schema import _MIGRATIONS, SCHEMA_VERSION
from suanli.errors import SuanliError, UsageError


def home() -> Path:
    return Path(os.environ.get("SUANLI_HOME") or os.path.expanduser("~/.local/share/suanli"))



class RegistryConnection:
    """The registry's one SQLite connection per process, shared by its threads: opened lazily, migrated on first
    use, read from a copy where SUANLI_HOME is read-only; every read and write holds the lock."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root or home()
        self.path = self.root / "registry.db"
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.RLock()

    # ------------------------------------------------------------ connection
    def _connect(self) -> sqlite3.Connection:
        with self._lock:
            return self._connect_locked()

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """The shared connection for one read, held until its rows are fetched: threads sharing a Store must not
        step one statement while another thread resets it (sqlite3 raises "no more rows available")."""
        with self._lock:
            yield self._connect_locked()

    def _connect_locked(self, for_write: bool = False) -> sqlite3.Connection:
        """The registry connection. Reads never create SUANLI_HOME: a missing registry reads as an empty one
        (not kept, so a later write creates the real file); a home this process cannot write is read from an
        in-memory copy, so status/logs work on a read-only file system and whatever they refresh is dropped."""
        if self._conn is not None:
            return self._conn
        from suanli.errors import registry_error

        try:
            if not self.path.exists() and not for_write:
                return self._empty_registry()
            if self.path.exists() and not (os.access(self.root, os.W_OK) and os.access(self.path, os.W_OK)):
                self._conn = self._read_only_copy()
                return self._conn
            self.root.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA busy_timeout = 30000")
            # WAL + NORMAL: a commit is atomic and survives a crash of any process, without an fsync per
            # commit (which cost ~3 ms of every submission); only a power cut may lose the last commits.
            conn.execute("PRAGMA synchronous = NORMAL")
            self._check_version(conn)
        except sqlite3.DatabaseError as exc:
            raise registry_error(self.path, exc) from None
        except OSError as exc:
            if exc.errno == errno.EROFS:
                raise UsageError(f"{self.root}: read-only file system: cannot create the job registry; set "
                                 "SUANLI_HOME to a writable folder") from None
            raise SuanliError(f"{self.root}: cannot create SUANLI_HOME: {exc.strerror}") from None
        self._conn = conn
        return conn

    def _check_version(self, conn: sqlite3.Connection) -> None:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version < SCHEMA_VERSION:
            self._migrate(conn)
        elif version > SCHEMA_VERSION:
            raise UsageError(f"{self.path}: written by a newer suanli (schema {version}); upgrade suanli")

    def _empty_registry(self) -> sqlite3.Connection:
        conn = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        self._migrate(conn)
        return conn

    def _read_only_copy(self) -> sqlite3.Connection:
        from urllib.parse import quote

        uri = f"file:{quote(str(self.path))}?mode=ro"
        try:
            src = sqlite3.connect(uri, uri=True, timeout=30.0, check_same_thread=False)
            src.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
        except sqlite3.OperationalError:
            # A WAL database without its -shm file on a read-only file system: nobody can be writing it.
            src = sqlite3.connect(uri + "&immutable=1", uri=True, check_same_thread=False)
        conn = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        try:
            src.backup(conn)
        finally:
            src.close()
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version != SCHEMA_VERSION:
            raise UsageError(f"{self.path}: read-only file system and schema {version}, not {SCHEMA_VERSION}; "
                             "open it once with a writable SUANLI_HOME of this suanli version")
        return conn

    def _migrate(self, conn: sqlite3.Connection) -> None:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            for v in range(version + 1, SCHEMA_VERSION + 1):
                for statement in _MIGRATIONS[v].split(";"):
                    if statement.strip():
                        conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        # One connection per Store, shared by threads: the lock keeps their transactions apart.
        with self._lock:
            conn = self._connect_locked(for_write=True)
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
