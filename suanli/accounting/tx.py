"""The ledger's statements: one cursor type (``Tx``) that takes ``?`` placeholders on SQLite and PostgreSQL alike
and sends a PostgreSQL transaction's BEGIN with its first statement, COPY's text format, and the splitting of a
migration script into statements."""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Iterable, Sequence
from typing import Any


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
#: Prepared statements kept per connection; past this they are all let go (admission's text varies with the
#: quotas that apply, so a portal serving many accounts would otherwise keep one per shape forever).
MAX_PREPARED = 64


#: Names that never repeat on a connection (a statement let go is never confused with a new one).
_NAMES = itertools.count(1)


class Tx:
    """A cursor that takes ``?`` placeholders on both databases."""

    def __init__(self, cur: Any, dialect: str, single: bool = False,
                 prepared: dict[str, str] | None = None) -> None:
        self.cur = cur
        self.dialect = dialect
        #: PostgreSQL: this connection's prepared statements, by their ``?`` text (``all_prepared``).
        self.prepared = prepared
        #: PostgreSQL: the BEGIN (and lock) not sent yet; it travels with the transaction's first statement.
        self.begin = ""
        self.single = single  # one statement only, sent without BEGIN/COMMIT (PostgreSQL)
        self.sent = 0
        #: PostgreSQL: statements (with their parameters) sent together with the COMMIT (``defer``).
        self.deferred: list[tuple[str, tuple[Any, ...]]] = []

    def _sql(self, sql: str) -> str:
        return sql if self.dialect == "sqlite" else _QMARK.sub("%s", sql)

    def _begun(self, sql: str, params: bool = False) -> str:
        """``sql`` after what is still to be sent of the transaction's start (its % doubled where the driver
        will fill in parameters: a lock key is text)."""
        self.sent += 1
        if self.single and self.sent > 1:
            raise RuntimeError("ledger: a second statement in a transaction(single=True), which is not atomic")
        if not self.begin:
            return sql
        head, self.begin = self.begin, ""
        return (head.replace("%", "%%") if params else head) + sql

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        if self.deferred:
            raise RuntimeError("ledger: a statement after a deferred one (Tx.defer), which would run before it")
        if self.dialect != "sqlite" and not params:  # no placeholders: a literal % (LIKE '%:') stays as it is
            return self.cur.execute(self._begun(sql))
        return self.cur.execute(self._begun(self._sql(sql), True), tuple(params))

    def defer(self, sql: str, params: Sequence[Any] = ()) -> None:
        """A write whose result nobody reads, last in its transaction: PostgreSQL sends it in the COMMIT's round
        trip (``Database.transaction``), SQLite runs it now. It fails the transaction as ``execute`` would,
        only at the commit; nothing may be executed after it."""
        if self.dialect == "sqlite" or self.single:
            self.execute(sql, params)
            return
        self.deferred.append((self._sql(sql) if params else sql, tuple(params)))

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if self.begin:
            self.cur.execute(self._begun("SELECT 1"))
        self.cur.executemany(self._sql(sql), rows)

    def copy(self, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
        """PostgreSQL: load rows with COPY (text format, one round trip for the whole batch)."""
        self.copy_text(table, columns, copy_data(rows if isinstance(rows, list) else list(rows), len(columns)))

    def copy_text(self, table: str, columns: Sequence[str], data: str) -> None:
        """PostgreSQL: load text already in COPY's format (``copy_data``)."""
        if self.begin:
            self.cur.execute(self._begun("SELECT 1"))
        import psycopg2.extensions  # loaded already: this is PostgreSQL

        # Bytes in the connection's encoding, as psycopg2 encodes text it is given (a LATIN1 ledger stays one),
        # read at once: psycopg2 takes the GIL back for every read (8 KiB by default), and a parsing thread
        # beside it holds the GIL for its switch interval each time.
        raw = data.encode(psycopg2.extensions.encodings[self.cur.connection.encoding])
        self.cur.copy_expert(f"COPY {table} ({', '.join(columns)}) FROM STDIN", _Once(raw), size=max(len(raw), 8192))

    def one(self, sql: str, params: Sequence[Any] = ()) -> Any:
        self.execute(sql, params)
        return self.cur.fetchone()

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        self.execute(sql, params)
        return list(self.cur.fetchall())

    def all_prepared(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """``all`` for a statement a long-lived process sends again and again (admission's sums, whose planning
        costs more than running them): on PostgreSQL it is prepared once per connection, in the same round
        trip as its first run, and run with one generic plan, so it is planned once, not every time."""
        if self.dialect == "sqlite" or self.prepared is None or self.single:
            return self.all(sql, params)
        name = self.prepared.get(sql)
        args = f"({', '.join(['%s'] * len(params))})" if params else ""
        # SET LOCAL lasts until this transaction ends: other statements keep PostgreSQL's own choice of plan.
        head = "SET LOCAL plan_cache_mode = force_generic_plan; "
        if name is None:
            if len(self.prepared) >= MAX_PREPARED:
                head += "DEALLOCATE ALL; "
                self.prepared.clear()
            name = f"suanli_{len(self.prepared)}_{next(_NAMES)}"
            numbered = iter(range(1, len(params) + 1))
            body = _QMARK.sub(lambda _: f"${next(numbered)}", sql).replace("%", "%%")
            head += f"PREPARE {name} AS {body}; "
        self.cur.execute(self._begun(f"{head}EXECUTE {name}{args}", True), tuple(params))
        self.prepared[sql] = name  # PREPARE outlives a rolled-back transaction: it stays usable
        return list(self.cur.fetchall())

    @property
    def rowcount(self) -> int:
        return int(self.cur.rowcount)


class _Once:
    """A file whose one read is the whole text, already bytes (``io.StringIO`` would copy it twice more)."""

    def __init__(self, data: bytes) -> None:
        self.data: bytes | None = data

    def read(self, size: int = -1) -> bytes:
        data, self.data = self.data or b"", None
        return data


#: COPY's text format: a backslash, tab, newline or carriage return inside a value is escaped.
_NON_FINITE = [f"{a}{w}{b}" for w in ("inf", "-inf", "nan") for a in "\t\n" for b in "\t\n"]
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
#: ``str(None)`` between separators, and COPY's NULL in its place (twice for "\t": neighbours share a tab).
_NONES = (("\tNone\t", "\t\\N\t"), ("\tNone\t", "\t\\N\t"), ("\tNone\n", "\t\\N\n"), ("\nNone\t", "\n\\N\t"),
          ("\nNone\n", "\n\\N\n"))


def copy_data(rows: Sequence[Sequence[Any]], width: int, tail: str = "") -> str:
    """The rows in COPY's text format. Fast path: each row's values joined by ``str`` in C (no Python step per
    value: a record has 28), the ``None`` they spell turned into ``\\N``; then a check over the whole text that
    no value held a tab, newline, carriage return or backslash (the separators and the NULL markers are all it
    may hold), that no value was the text ``None`` (the markers equal the NULLs) and that none is a float's inf
    or nan (``_copy_text`` spells them as every PostgreSQL reads them); else each value escaped. Floats print as
    their shortest exact repr, which PostgreSQL reads back to the same double. ``tail``: more columns, the same
    on every line, already in COPY's format (``\tVALUE``), added to each."""
    end = tail + "\n"
    data = "".join(["\t".join(map(str, row)) + end for row in rows])
    for none, null in _NONES:
        data = data.replace(none, null)
    if data.startswith(("None\t", "None\n")):
        data = "\\N" + data[4:]
    nulls = sum(row.count(None) for row in rows)
    # Each None made one marker with one backslash, and so did a value "None": more backslashes than NULLs
    # means a value held one, or spelled None.
    if (data.count("\t") == len(rows) * (width - 1 + tail.count("\t")) and data.count("\n") == len(rows)
            and "\r" not in data and data.count("\\") == nulls
            and not (("inf" in data or "nan" in data) and any(w in "\n" + data for w in _NON_FINITE))):
        return data
    return "".join(copy_line(row) + end for row in rows)


def copy_line(row: Sequence[Any]) -> str:
    """One row in COPY's text format, every value escaped (no newline)."""
    return "\t".join(map(_copy_text, row))


def _copy_text(value: Any) -> str:
    """One value in COPY's text format (NULL is ``\\N``)."""
    if value is None:
        return "\\N"
    if isinstance(value, str):
        return value.translate(_COPY_ESCAPES)
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return str(value)
