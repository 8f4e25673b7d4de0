"""The ledger's schema as SQL: tables, roll-up tables and the triggers that keep them, row-level security, and
the versioned migrations, per dialect. Apart from ``db.py`` (connections and transactions) because it is text
that only changes with a new schema version."""

from __future__ import annotations

SCHEMA_VERSION = 3
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


#: SQLite: a batch's roll-up deltas, one row per record (the old values of records it rewrites negated, its new
#: ones as they are), keys COALESCEd and sums in millionths once, so each roll-up is a GROUP BY of plain columns.
DELTA = "usage_delta"
_DELTA_KEYS = ("day", "month", *ROLLUP_KEYS)


def delta_sql(source: str, sign: str) -> list[str]:
    """SQLite: the statements that add the records of ``source`` (a SELECT of usage_records' columns) to the batch's
    deltas, times ``sign``; the first creates the (session) table once."""
    cols = ", ".join(f"{k} TEXT" for k in _DELTA_KEYS) + ", jobs INTEGER, " + ", ".join(
        f"{c} INTEGER" for c in ROLLUP_SUMS)
    keys = ", ".join(f"COALESCE({k}, '')" for k in _DELTA_KEYS)
    sums = ", ".join(f"{sign}{micro('sqlite', c)}" for c in ROLLUP_SUMS.values())
    return [f"CREATE TEMP TABLE IF NOT EXISTS {DELTA} ({cols})",
            f"INSERT INTO {DELTA} SELECT {keys}, {sign}1, {sums} FROM ({source}) AS s"]


def rollup_batch_sql() -> list[str]:
    """SQLite: move every roll-up by the batch's deltas, grouped: one upsert per roll-up row the batch changes
    (a re-synced record that changed nothing nets to zero and writes nothing), then clear the deltas."""
    out = []
    for table, (period, cols) in ROLLUPS.items():
        keys = ", ".join((period, *cols))
        sums = ", ".join(f"SUM({c})" for c in ("jobs", *ROLLUP_SUMS))
        moved = " OR ".join(f"SUM({c}) <> 0" for c in ("jobs", *ROLLUP_SUMS))
        out.append(f"INSERT INTO {table} ({_rollup_cols(table)}) SELECT {keys}, {sums} FROM {DELTA} WHERE true "
                   f"GROUP BY {_pk(table)} HAVING {moved} {_upsert_tail(table)}")  # in key order: local inserts
    return [*out, f"DELETE FROM {DELTA}"]


def _pg_apply(table: str, sources: tuple[tuple[str, str], ...]) -> str:
    """Version 2's statement per roll-up for a whole statement's rows (transition tables), in key order so that
    two writers lock roll-up rows in the same order. Kept because migration 2 must stay what it was."""
    period, cols = ROLLUPS[table]
    keys = (period, *cols)
    parts = " UNION ALL ".join(f"SELECT {_delta_select('postgresql', table, src, sign)} FROM {src}"
                               for src, sign in sources)
    names = ", ".join(f"d{i}" for i in range(len(keys) + 1 + len(ROLLUP_SUMS)))
    groups = ", ".join(f"d{i}" for i in range(len(keys)))
    sums = ", ".join(f"SUM(d{i})" for i in range(len(keys), len(keys) + 1 + len(ROLLUP_SUMS)))
    return (f"INSERT INTO {table} AS {table} ({_rollup_cols(table)}) SELECT {groups}, {sums} FROM ({parts}) "
            f"AS d ({names}) GROUP BY {groups} ORDER BY {groups} {_upsert_tail(table)};")


#: The finest roll-up group: every roll-up is a sum over these.
_FINE = ("day", "month", *ROLLUP_KEYS)


def _pg_apply_grouped(sources: tuple[tuple[str, str], ...]) -> str:
    """Version 3's body, one statement: a statement's rows (transition tables) are added up once per finest
    group (hashed, not sorted: a sync's batch of 50,000 records is a few thousand groups), then each roll-up is moved
    by those groups in its key order (two writers lock roll-up rows in the same order). A group that nets to
    zero (a record rewritten unchanged) writes nothing. ``g`` is read three times, so PostgreSQL computes it
    once (no MATERIALIZED, which PostgreSQL 11 does not know)."""
    sumcols = ("jobs", *ROLLUP_SUMS)
    parts = " UNION ALL ".join(
        f"SELECT {', '.join(f'COALESCE({src}.{k}, {_EMPTY})' for k in _FINE)}, {sign}1, "
        f"{', '.join(sign + micro('postgresql', f'{src}.{c}') for c in ROLLUP_SUMS.values())} FROM {src}"
        for src, sign in sources)
    names = ", ".join((*_FINE, *sumcols))
    fine = ", ".join(_FINE)
    moved = " OR ".join(f"SUM({c}) <> 0" for c in sumcols)
    ctes = [f"g AS (SELECT {fine}, {', '.join(f'SUM({c}) AS {c}' for c in sumcols)} "
            f"FROM ({parts}) AS d ({names}) GROUP BY {fine})"]
    stmts = []
    for table in ROLLUPS:
        pk = _pk(table)
        period, cols = ROLLUPS[table]
        stmts.append(f"INSERT INTO {table} AS {table} ({_rollup_cols(table)}) SELECT {', '.join((period, *cols))}, "
                     f"{', '.join(f'SUM({c})' for c in sumcols)} FROM g GROUP BY {pk} HAVING {moved} "
                     f"ORDER BY {pk} {_upsert_tail(table)}")
    last = stmts.pop()
    ctes += [f"u{i} AS ({sql})" for i, sql in enumerate(stmts)]
    return f"WITH {', '.join(ctes)} {last};"


#: The empty key ('' for NULL) in the byte-order collation of the key columns.
_EMPTY = "'' COLLATE \"C\""


#: The statement triggers: event, the transition tables it reads (negated: old rows), its REFERENCING clause.
_EVENTS = (("INSERT", (("new_rows", ""),), "NEW TABLE AS new_rows"),
           ("UPDATE", (("old_rows", "-"), ("new_rows", "")), "OLD TABLE AS old_rows NEW TABLE AS new_rows"),
           ("DELETE", (("old_rows", "-"),), "OLD TABLE AS old_rows"))


def _pg_function(event: str, body: str) -> str:
    """A roll-up trigger's function; SECURITY DEFINER, so the roll-ups are written with the owner's rights: a
    suanli_user member that adds a record moves them, but may not write them itself (it has SELECT only)."""
    return (f"CREATE OR REPLACE FUNCTION suanli_rollup_{event.lower()}() RETURNS trigger LANGUAGE plpgsql "
            f"SECURITY DEFINER SET search_path FROM CURRENT AS $$ BEGIN\n{body}\nRETURN NULL; END $$;\n")


def _pg_triggers() -> str:
    """Version 2: statement triggers with transition tables (one grouped upsert per roll-up and batch, not one
    per record)."""
    out = ""
    for event, sources, refs in _EVENTS:
        out += _pg_function(event, "\n".join(_pg_apply(t, sources) for t in ROLLUPS))
        out += (f"CREATE TRIGGER usage_rollup_{event.lower()} AFTER {event} ON usage_records "
                f"REFERENCING {refs} FOR EACH STATEMENT EXECUTE FUNCTION suanli_rollup_{event.lower()}();\n")
    return out


def _v3(dialect: str) -> str:
    """PostgreSQL: the key columns of the records' indexes and of the roll-ups compare bytes (collation "C",
    as SQLite's do), not the server's locale; each comparison of an ingest's index inserts and roll-up upserts
    was a locale-aware strcoll (1M records: ~30% of the server's time). The same order for ISO days and ASCII
    names; ids' prefix ranges (``adopt_keys``) become exact. The roll-up triggers group a statement's rows
    once, and the roll-ups keep room in their pages. SQLite: nothing changes."""
    if dialect != "postgresql":
        return ""
    c = 'TYPE TEXT COLLATE "C"'
    script = f"ALTER TABLE usage_records ALTER COLUMN record_id {c}, ALTER COLUMN account {c}, " \
             f"ALTER COLUMN day {c};\n"
    for table, (period, keys) in ROLLUPS.items():
        # Half-full pages: a roll-up row moved by a batch is rewritten in its own page (a HOT update, no new
        # entry in its six-column key's index); ~10% of the server's ingest time at 1M records.
        script += (f"ALTER TABLE {table} {', '.join(f'ALTER COLUMN {k} {c}' for k in (period, *keys))}, "
                   f"SET (fillfactor = 50);\n")
    return script + "".join(_pg_function(event, _pg_apply_grouped(sources)) for event, sources, _ in _EVENTS)


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
    return {1: v1, 2: _v2(dialect), 3: _v3(dialect)}
