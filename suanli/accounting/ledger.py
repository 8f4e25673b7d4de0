"""The ledger: usage records, quotas, reservations and sync marks, on SQLite or PostgreSQL.

Admission is one transaction that reads the quotas that apply, sums what was used in the quota's window and
what running jobs have reserved, and inserts the new job's worst case as a reservation; a per-account lock
makes two submitters racing for the last hours of a quota take turns. When the job ends its reservation is
deleted in the same transaction that books its real usage.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from suanli.accounting.db import BULK_FLAG, ROLLUPS, Database, Tx, micro, rollup_batch_sql
from suanli.accounting.estimate import Estimate
from suanli.accounting.quota import QUOTA_COLUMNS, Quota
from suanli.accounting.records import COLUMNS, UsageRecord
from suanli.errors import QuotaExceeded, UsageError

BATCH = 25_000  # per transaction: bigger batches touch each index page once for many records
_UPSERT = (
    f"INSERT INTO usage_records ({', '.join(COLUMNS)}, recorded_at) VALUES ({', '.join('?' * (len(COLUMNS) + 1))}) "
    "ON CONFLICT (record_id) DO UPDATE SET "
    + ", ".join(
        f"{c} = COALESCE(excluded.{c}, usage_records.{c})" if c == "job_id" else f"{c} = excluded.{c}"
        for c in (*COLUMNS[1:], "recorded_at")
    )
)
#: --by keys of `suanli usage` and the column each groups on.
REPORT_KEYS = {
    "account": "account", "user": "user_name", "partition": "partition_name", "accelerator": "accelerator_kind",
    "cluster": "cluster", "day": "day", "month": "month", "job": "native_id",
}
RESOURCE_NAMES = {"cpu_hours": "cpu-hours", "accelerator_hours": "accelerator-hours", "charge": "charge units"}


#: (cluster or the config names of one Slurm cluster, native ids that sacct booked as ended).
NativeDone = tuple[str | Sequence[str], Sequence[str]]


@dataclass(frozen=True)
class Check:
    """One limit of one quota as admission saw it (hours, or charge units)."""

    quota: Quota
    window: str
    resource: str
    kind: str | None
    limit: float
    used: float
    reserved: float
    need: float

    @property
    def remaining(self) -> float:
        return self.limit - self.used - self.reserved

    @property
    def fits(self) -> bool:
        """A limit the job does not draw on never refuses it, even when others overdrew it."""
        return self.need <= 0 or self.need <= self.remaining + 1e-9

    def label(self) -> str:
        return f"{self.kind} accelerator-hours" if self.kind else RESOURCE_NAMES[self.resource]

    def to_json(self) -> dict[str, Any]:
        q = self.quota
        return {"quota_id": q.id, "account": q.account, "user": q.user, "cluster": q.cluster, "period": q.period,
                "window": self.window, "resource": self.resource, "accelerator_kind": self.kind,
                "limit": self.limit, "used": self.used, "reserved": self.reserved,
                "remaining": self.remaining, "need": self.need}


class Ledger:
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
        self.db.may_rewrite  # noqa: B018 - asked once, outside the write transactions
        if isinstance(records, list | tuple) and len(records) <= batch:
            # A few jobs that just ended: one transaction, no parsing thread (starting one costs more).
            rows = [(*rec.row(), time.time()) for rec in records]
            with self.db.transaction() as tx:
                if rows:
                    self._upsert(tx, rows)
                self._release(tx, release_jobs, release_native)
            return len(rows)
        # Parsing (the records iterator) runs in a thread while this one writes: the database works with
        # the GIL released, so the two overlap. The queue is short, so memory stays a few batches.
        batches: queue.Queue[list[tuple[object, ...]] | None] = queue.Queue(maxsize=1)
        stop = threading.Event()
        failure: list[BaseException] = []

        def put(item: list[tuple[object, ...]] | None) -> bool:
            while not stop.is_set():
                try:
                    batches.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def produce() -> None:
            try:
                now = time.time()
                buf: list[tuple[object, ...]] = []
                for rec in records:
                    buf.append((*rec.row(), now))
                    if len(buf) >= batch:
                        if not put(buf):
                            return
                        buf = []
                put(buf)
            except BaseException as exc:
                failure.append(exc)
            finally:
                put(None)

        producer = threading.Thread(target=produce, name="suanli-ledger-parse", daemon=True)
        producer.start()
        n = 0
        pending: list[tuple[object, ...]] | None = None  # the last batch shares its transaction with the release
        try:
            while (item := batches.get()) is not None:
                if pending:
                    with self.db.transaction() as tx:
                        self._upsert(tx, pending)
                    n += len(pending)
                pending = item
        finally:
            stop.set()
            producer.join()
        with self.db.transaction() as tx:
            if pending:
                self._upsert(tx, pending)
                n += len(pending)
            if not failure:
                self._release(tx, release_jobs, release_native)
        if failure:
            raise failure[0]
        return n

    def _upsert(self, tx: Tx, rows: list[tuple[object, ...]]) -> None:
        if tx.dialect == "sqlite":
            self._upsert_sqlite(tx, rows)
            return
        rewrite = self.db.may_rewrite
        # PostgreSQL: COPY into a session table, then one INSERT ... ON CONFLICT (5x executemany's rate).
        cols = ", ".join((*COLUMNS, "recorded_at"))
        tx.execute("CREATE TEMP TABLE IF NOT EXISTS usage_stage (LIKE usage_records) ON COMMIT DELETE ROWS")
        unique = {row[0]: row for row in rows}  # ON CONFLICT may touch a row once per statement
        with tx.cur.copy(f"COPY usage_stage ({cols}) FROM STDIN") as copy:
            for row in unique.values():
                copy.write_row(row)
        updates = ", ".join(
            f"{c} = COALESCE(excluded.{c}, usage_records.{c})" if c == "job_id" else f"{c} = excluded.{c}"
            for c in (*COLUMNS[1:], "recorded_at"))
        conflict = f"DO UPDATE SET {updates}" if rewrite else "DO NOTHING"
        tx.execute(f"INSERT INTO usage_records ({cols}) SELECT {cols} FROM usage_stage "
                   f"ON CONFLICT (record_id) {conflict}")

    @staticmethod
    def _upsert_sqlite(tx: Tx, rows: list[tuple[object, ...]]) -> None:
        """A few rows: the upsert, and the row triggers move the roll-ups. A batch: staged, then the roll-ups move
        by whole groups (what the batch's records held before, taken away; what they hold now, added) with the
        triggers told to stand aside, all in this one transaction (3x the row triggers' rate)."""
        if len(rows) < 64:
            tx.executemany(_UPSERT, rows)
            return
        cols = ", ".join((*COLUMNS, "recorded_at"))
        tx.execute("CREATE TEMP TABLE IF NOT EXISTS usage_stage AS SELECT * FROM usage_records WHERE 0")
        tx.execute("DELETE FROM usage_stage")
        unique = {row[0]: row for row in rows}  # one upsert per record id, as PostgreSQL's path
        tx.executemany(f"INSERT INTO usage_stage ({cols}) VALUES ({', '.join('?' * (len(COLUMNS) + 1))})",
                       list(unique.values()))
        tx.execute(f"INSERT INTO {BULK_FLAG} VALUES (1)")
        for sql in rollup_batch_sql("SELECT * FROM usage_records WHERE record_id IN "
                                    "(SELECT record_id FROM usage_stage)", "-"):
            tx.execute(sql)
        tx.execute(_UPSERT.replace(f"VALUES ({', '.join('?' * (len(COLUMNS) + 1))})",
                                   f"SELECT {cols} FROM usage_stage WHERE true"))
        for sql in rollup_batch_sql("SELECT * FROM usage_stage", ""):
            tx.execute(sql)
        tx.execute(f"DELETE FROM {BULK_FLAG}")

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
        with self.db.transaction() as tx:
            rows = tx.all("SELECT native_id FROM reservations WHERE cluster = ? AND native_id IS NOT NULL",
                          (cluster,))
        return {n for (text,) in rows for n in str(text).split(",") if n}

    def reserved_jobs(self, account: str) -> list[str]:
        """The suanli ids holding a reservation on this account (admission settles them first)."""
        with self.db.transaction() as tx:
            return [str(r[0]) for r in tx.all("SELECT job_id FROM reservations WHERE account = ?", (account,))]

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
        with self.db.transaction() as tx:
            rows = tx.all("SELECT job_id, cluster, native_id, account, user_name, cpu_seconds, accelerator_seconds,"
                          " charge FROM reservations ORDER BY created_at")
        keys = ("job_id", "cluster", "native_id", "account", "user", "cpu_seconds", "accelerator_seconds", "charge")
        return [dict(zip(keys, r, strict=True)) for r in rows]

    def totals(self, cluster: str | None = None) -> dict[str, float]:
        """Sums over every record (what idempotence tests and admins compare)."""
        where, params = ("WHERE cluster = ?", [cluster]) if cluster else ("", [])
        with self.db.transaction() as tx:
            r = tx.one(f"SELECT COUNT(*), COALESCE(SUM(cpu_seconds), 0), COALESCE(SUM(accelerator_seconds), 0), "
                       f"COALESCE(SUM(charge), 0) FROM usage_records {where}", params)
        # Rounded to 1e-6 only because a database may add floats in any order.
        return {"records": int(r[0]), "cpu_seconds": round(float(r[1]), 6),
                "accelerator_seconds": round(float(r[2]), 6), "charge": round(float(r[3]), 6)}

    # ------------------------------------------------------------ sync marks
    def mark(self, cluster: str, scope: str) -> float | None:
        with self.db.transaction() as tx:
            r = tx.one("SELECT mark FROM sync_marks WHERE cluster = ? AND scope = ?", (cluster, scope))
        return None if r is None else float(r[0])

    def set_mark(self, cluster: str, scope: str, mark: float) -> None:
        with self.db.transaction() as tx:
            tx.execute("INSERT INTO sync_marks (cluster, scope, mark) VALUES (?, ?, ?) ON CONFLICT (cluster, scope) "
                       "DO UPDATE SET mark = excluded.mark", (cluster, scope, mark))

    # ------------------------------------------------------------ quotas
    def quotas(self, account: str | None = None) -> list[Quota]:
        with self.db.transaction() as tx:
            return self._quotas(tx, account)

    @staticmethod
    def _quotas(tx: Tx, account: str | None) -> list[Quota]:
        where, params = ("WHERE account = ?", [account]) if account else ("", [])
        rows = tx.all(f"SELECT {QUOTA_COLUMNS} FROM quotas {where} ORDER BY account, user_name, cluster, id", params)
        return [Quota.from_row(tuple(r)) for r in rows]

    def set_quota(self, q: Quota, who: str | None) -> Quota:
        """Create, or update the limits of the quota with the same scope and dates; refuse an overlap."""
        with self.db.transaction(lock="quota:" + q.account) as tx:
            same = None
            for old in self._quotas(tx, q.account):
                if not q.overlaps(old):
                    continue
                if (old.period, old.start, old.end) == (q.period, q.start, q.end):
                    same = old
                    continue
                raise UsageError(f"quota: overlaps quota {old.id} of {old.scope()} ({old.period}, "
                                 f"{old.start or 'no start'}..{old.end or 'no end'}); remove it first "
                                 f"(suanli quota rm --id {old.id}) or choose dates that do not overlap")
            if same is not None:
                tx.execute("UPDATE quotas SET cpu_hours = ?, accelerator_hours = ?, charge = ? WHERE id = ?",
                           (q.cpu_hours, q.row()[7], q.charge, same.id))
                qid = same.id
            else:
                tx.execute("INSERT INTO quotas (account, user_name, cluster, period, start_date, end_date, "
                           "cpu_hours, accelerator_hours, charge, created_by, created_at) "
                           "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                           (*q.row(), who, time.time()))
                r = tx.one("SELECT MAX(id) FROM quotas WHERE account = ?", (q.account,))
                qid = int(r[0])
        return Quota(**{**q.__dict__, "id": qid})

    def remove_quotas(self, *, quota_id: int | None = None, account: str | None = None, user: str | None = None,
                      cluster: str | None = None) -> int:
        if quota_id is None and not account:
            raise UsageError("quota rm: give --id N, or --account A (with --user/--cluster to narrow it)")
        clauses: list[str] = []
        params: list[object] = []
        for col, value in (("id", quota_id), ("account", account), ("user_name", user), ("cluster", cluster)):
            if value is not None:
                clauses.append(f"{col} = ?")
                params.append(value)
        with self.db.transaction(lock="quota:" + (account or "")) as tx:
            tx.execute(f"DELETE FROM quotas WHERE {' AND '.join(clauses)}", params)
            return tx.rowcount

    # ------------------------------------------------------------ admission
    def checks(self, tx: Tx, account: str | None, user: str | None, cluster: str, est: Estimate | None,
               now: float | None = None, only: Quota | None = None) -> list[Check]:
        """Every limit of every quota in force for this scope, with what is used and reserved in its window."""
        if not account:
            return []
        quotas = [only] if only else [q for q in self._quotas(tx, account)
                                      if (q.user is None or q.user == user) and (q.cluster in (None, cluster))]
        out: list[Check] = []
        for q in quotas:
            win = q.window(now)
            if win is None:
                if only is not None:  # `quota show` lists it, marked, so its id can be found for `quota rm`
                    span = f"{q.start or 'the start'}..{q.end or 'open end'}"
                    out.extend(Check(q, f"not in force ({span})", r, k, lim, 0.0, 0.0, 0.0)
                               for r, k, lim in q.limits())
                continue
            label, lo, hi = win
            used = _rollup_sums(tx, q, lo, hi)
            if used is None:  # a window not on local midnights (never from quota dates): the records' scan
                used = self._sums(tx, "usage_records", q, lo, hi)
            reserved = self._sums(tx, "reservations", q, None, None)
            for resource, kind, limit in q.limits():
                need = 0.0
                if est is not None and est.hours is not None:
                    if resource == "cpu_hours":
                        need = est.cpu_hours or 0.0
                    elif resource == "charge":
                        need = est.charge or 0.0
                    elif est.accelerator_kind == kind:
                        need = est.accelerator_hours or 0.0
                out.append(Check(q, label, resource, kind, limit, _pick(used, resource, kind),
                                 _pick(reserved, resource, kind), need))
        return out

    @staticmethod
    def _sums(tx: Tx, table: str, q: Quota, lo: float | None, hi: float | None) -> dict[str | None, tuple[float, ...]]:
        clauses: list[str] = ["account = ?"]
        params: list[object] = [q.account]
        if q.user:
            clauses.append("user_name = ?")
            params.append(q.user)
        if q.cluster:
            clauses.append("cluster = ?")
            params.append(q.cluster)
        # The month bounds let the (account, month) index work; end_time is the real filter. They are one
        # month wider on each side because a record's month is the writer's local month, and a shared
        # ledger may be written from another time zone.
        if lo is not None and lo != float("-inf"):
            clauses += ["end_time >= ?", "month >= ?"]
            params += [lo, _month(lo, -1)]
        if hi is not None and hi != float("inf"):
            clauses += ["end_time < ?", "month <= ?"]
            params += [hi, _month(hi - 1, +1)]
        rows = tx.all(f"SELECT accelerator_kind, SUM(cpu_seconds), SUM(accelerator_seconds), SUM(charge) FROM {table} "
                      f"WHERE {' AND '.join(clauses)} GROUP BY accelerator_kind", params)
        return {r[0]: (float(r[1] or 0), float(r[2] or 0), float(r[3] or 0)) for r in rows}

    def admit(self, *, job_id: str, cluster: str, account: str | None, user: str | None, est: Estimate,
              reserve: bool = True) -> list[Check]:
        """Check every quota in force and, when all fit, reserve the worst case (atomically)."""
        if not account:
            return []
        with self.db.transaction(lock="quota:" + account) as tx:
            checks = self.checks(tx, account, user, cluster, est)
            if not checks:
                return []
            if est.hours is None:
                raise UsageError(f"quota: account {account} has a quota, so this job needs a time limit; add "
                                 "--time (for example --time 2h)")
            for c in checks:
                if not c.fits:
                    raise QuotaExceeded(
                        f"quota: {c.quota.scope().replace('account ', 'account ', 1)} may use up to {c.need:.1f} "
                        f"{c.label()} with this job; {max(c.remaining, 0.0):.1f} of {c.limit:.1f} remain in "
                        f"{c.window}")
            if reserve:
                tx.execute("INSERT INTO reservations (job_id, cluster, native_id, account, user_name, "
                           "accelerator_kind, cpu_seconds, accelerator_seconds, charge, created_at) "
                           "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                           (job_id, cluster, None, account, user, est.accelerator_kind,
                            (est.cpu_hours or 0.0) * 3600, (est.accelerator_hours or 0.0) * 3600, est.charge or 0.0,
                            time.time()))
        return checks

    def bind(self, job_id: str, native_id: str) -> None:
        with self.db.transaction() as tx:
            tx.execute("UPDATE reservations SET native_id = ? WHERE job_id = ?", (native_id, job_id))

    def quota_status(self, account: str | None = None, now: float | None = None) -> list[Check]:
        with self.db.transaction() as tx:
            out: list[Check] = []
            for q in self._quotas(tx, account):
                out.extend(self.checks(tx, q.account, q.user, q.cluster or "", None, now, only=q))
            return out

    # ------------------------------------------------------------ reports
    def report(self, by: Sequence[str], *, since: float | None = None, until: float | None = None,
               cluster: str | None = None, account: str | None = None) -> list[dict[str, Any]]:
        for key in by:
            if key not in REPORT_KEYS:
                raise UsageError(f"usage: --by {key!r} is not a grouping; use some of: {', '.join(REPORT_KEYS)}")
        if "job" not in by:
            served = _rollup_report(self.db, by, since, until, cluster, account)
            if served is not None:
                return served
        sql, params = _scan_sql(by, since, until, cluster, account)
        with self.db.transaction() as tx:
            rows = tx.all(sql, params)
        names = ["cluster", *by] if "job" in by and "cluster" not in by else list(by)
        out: list[dict[str, Any]] = []
        for r in rows:
            item: dict[str, Any] = dict(zip(names, r[: len(names)], strict=True))
            n, cpu_s, acc_s, charge = r[len(names): len(names) + 4]
            item.update(jobs=int(n), cpu_hours=float(cpu_s or 0) / 3600, accelerator_hours=float(acc_s or 0) / 3600,
                        charge=float(charge or 0))
            if "job" in by:
                used, alloc, job_id, state = r[len(names) + 4:]
                item["job_id"] = job_id
                item["state"] = state
                item["cpu_efficiency"] = (float(used) / float(alloc)) if used is not None and alloc else None
            out.append(item)
        return out


def _pick(sums: dict[str | None, tuple[float, ...]], resource: str, kind: str | None) -> float:
    if resource == "cpu_hours":
        return sum(v[0] for v in sums.values()) / 3600
    if resource == "charge":
        return sum(v[2] for v in sums.values())
    return sums.get(kind, (0.0, 0.0, 0.0))[1] / 3600


def _month(t: float, shift: int) -> str:
    """YYYY-MM of the local month of ``t``, moved by ``shift`` months."""
    lt = time.localtime(t)
    index = lt.tm_year * 12 + lt.tm_mon - 1 + shift
    return f"{index // 12:04d}-{index % 12 + 1:02d}"


def _scan_sql(by: Sequence[str], since: float | None, until: float | None, cluster: str | None,
              account: str | None) -> tuple[str, list[object]]:
    """The report as a GROUP BY over every record (``--by job``, or a window not on local midnights)."""
    cols = [REPORT_KEYS[k] for k in by]
    clauses: list[str] = []
    params: list[object] = []
    for cond, value in (("end_time >= ?", since), ("end_time < ?", until), ("cluster = ?", cluster),
                        ("account = ?", account)):
        if value is not None:
            clauses.append(cond)
            params.append(value)
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    extra = ""
    if "job" in by:
        extra = (", SUM(total_cpu_s), SUM(CASE WHEN total_cpu_s IS NULL THEN NULL ELSE cpu_seconds END), "
                 "MIN(job_id), MIN(state)")
        if "cluster" not in by:
            cols = ["cluster", *cols]
    group = f"GROUP BY {', '.join(cols)} ORDER BY {', '.join(cols)}" if cols else ""
    select = ", ".join(cols) + ", " if cols else ""
    return (f"SELECT {select}COUNT(*), SUM(cpu_seconds), SUM(accelerator_seconds), SUM(charge){extra} "
            f"FROM usage_records {where} {group}", params)


# ---------------------------------------------------------------- roll-ups
#: A part of a window: (roll-up table, its period column, first period, period past the end; None: open).
Part = tuple[str, str, str | None, str | None]


def _midnight(t: float | None) -> str | None | bool:
    """The local day ``t`` starts (None for an open end), or False when ``t`` is not a local midnight."""
    if t is None or t in (float("inf"), float("-inf")):
        return None
    d = datetime.fromtimestamp(t)
    if (d.hour, d.minute, d.second, d.microsecond) != (0, 0, 0, 0):
        return False
    return d.date().isoformat()


def _next_month(month: str) -> str:
    y, m = int(month[:4]), int(month[5:7])
    return f"{y + (m == 12):04d}-{m % 12 + 1:02d}"


def _daily(cols: Iterable[str]) -> str:
    """The smallest daily roll-up that has these columns."""
    need = set(cols) - {"day", "month"}
    return next(t for t, (p, keys) in reversed(ROLLUPS.items()) if p == "day" and need <= set(keys))


def window_parts(lo: float | None, hi: float | None, cols: Iterable[str], daily: bool = False) -> list[Part] | None:
    """The roll-up rows that make up the window [lo, hi): whole months from the monthly roll-up and the days at
    the edges from a daily one (only days with ``daily``); None when an end is not a local midnight. A day is
    the one a record is booked on (its writer's local day it ended), as ``--by day`` shows it."""
    d0, d1 = _midnight(lo), _midnight(hi)
    if d0 is False or d1 is False:
        return None
    assert not isinstance(d0, bool) and not isinstance(d1, bool)
    day_table = _daily(cols)
    if daily:
        return [(day_table, "day", d0, d1)]
    m0 = None if d0 is None else (d0[:7] if d0.endswith("-01") else _next_month(d0[:7]))
    m1 = None if d1 is None else d1[:7]
    if m0 is not None and m1 is not None and m0 >= m1:  # no whole month inside
        return [(day_table, "day", d0, d1)]
    parts: list[Part] = [("usage_monthly", "month", m0, m1)]
    if d0 is not None and m0 is not None and d0 < m0 + "-01":
        parts.append((day_table, "day", d0, m0 + "-01"))
    if d1 is not None and m1 is not None and m1 + "-01" < d1:
        parts.append((day_table, "day", m1 + "-01", d1))
    return parts


def _part_sql(part: Part, cols: Sequence[str], filters: Sequence[tuple[str, object]]) -> tuple[str, list[object]]:
    """One part as SELECT of ``cols`` (month and day among them if asked) and the sums, in millionths."""
    table, period, first, past = part
    clauses = [f"{col} = ?" for col, _ in filters]
    params: list[object] = [value for _, value in filters]
    if first is not None or past is not None:
        clauses.append(f"{period} <> ''")  # a record with no time at all is outside every bounded window
    if first is not None:
        clauses.append(f"{period} >= ?")
        params.append(first)
    if past is not None:
        clauses.append(f"{period} < ?")
        params.append(past)
    exprs = {"month": "month" if period == "month" else "substr(day, 1, 7)", "day": "day"}
    select = "".join(f"{exprs.get(c, c)} AS {c}, " for c in cols)
    where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
    return f"SELECT {select}jobs, cpu_us, accelerator_us, charge_u FROM {table}{where}", params


def _union(parts: list[Part], cols: Sequence[str],
           filters: Sequence[tuple[str, object]]) -> tuple[str, list[object]]:
    sqls: list[str] = []
    params: list[object] = []
    for part in parts:
        sql, p = _part_sql(part, cols, filters)
        sqls.append(sql)
        params += p
    return " UNION ALL ".join(sqls), params


def _rollup_report(db: Database, by: Sequence[str], since: float | None, until: float | None,
                   cluster: str | None, account: str | None) -> list[dict[str, Any]] | None:
    """The report from the roll-ups (no record is read); None when the window needs the records' scan."""
    cols = [REPORT_KEYS[k] for k in by]  # the roll-ups name their columns as the records do
    filters = [(c, v) for c, v in (("cluster", cluster), ("account", account)) if v is not None]
    parts = window_parts(since, until, [*cols, *(c for c, _ in filters)], daily="day" in by)
    if parts is None:
        return None
    source, params = _union(parts, cols, filters)
    group = f"GROUP BY {', '.join(cols)} " if cols else ""
    order = f"ORDER BY {', '.join(cols)}" if cols else ""
    select = ", ".join(cols) + ", " if cols else ""
    sql = (f"SELECT {select}SUM(jobs), {_totals(db.dialect)} FROM ({source}) AS r "
           f"{group}{'HAVING SUM(jobs) > 0 ' if cols else ''}{order}")
    with db.transaction() as tx:
        rows = tx.all(sql, params)
    out: list[dict[str, Any]] = []
    for r in rows:
        item: dict[str, Any] = {k: (v if v != "" else None) for k, v in zip(by, r[: len(by)], strict=True)}
        n, cpu_us, acc_us, charge_u = r[len(by):]
        item.update(jobs=int(n), cpu_hours=float(cpu_us) / 3.6e9, accelerator_hours=float(acc_us) / 3.6e9,
                    charge=float(charge_u) / 1e6)
        out.append(item)
    return out


def _rollup_sums(tx: Tx, q: Quota, lo: float, hi: float) -> dict[str | None, tuple[float, ...]] | None:
    """What the quota's scope used in [lo, hi) by accelerator kind, from the roll-ups (a quota month is one
    roll-up row per key; a window that starts or ends inside a month adds its edge days), corrected at the ends
    for records written from another time zone; one statement."""
    filters = [(c, v) for c, v in (("account", q.account), ("user_name", q.user), ("cluster", q.cluster)) if v]
    parts = window_parts(lo, hi, ["accelerator_kind", *(c for c, _ in filters)])
    if parts is None:
        return None
    sql, params = _union(parts, ["accelerator_kind"], filters)
    for edge, p in _edge_sql(tx.dialect, filters, lo, hi):
        sql += " UNION ALL " + edge
        params += p
    rows = tx.all(f"SELECT accelerator_kind, {_totals(tx.dialect)} FROM ({sql}) AS r GROUP BY accelerator_kind",
                  params)
    out: dict[str | None, tuple[float, ...]] = {}
    for kind, *sums in rows:
        old = out.get(kind or None, (0.0, 0.0, 0.0))
        out[kind or None] = tuple(o + float(v or 0) / 1e6 for o, v in zip(old, sums, strict=True))
    return out


def _totals(dialect: str) -> str:
    """The sums over many roll-up rows: a centre's year in micro-seconds passes 2**63 (SQLite's SUM of integers
    raises there; TOTAL adds in floating point, PostgreSQL's SUM of BIGINT is NUMERIC)."""
    fn = "TOTAL" if dialect == "sqlite" else "SUM"
    return ", ".join(f"{fn}({c})" for c in ("cpu_us", "accelerator_us", "charge_u"))


#: A writer's local day differs from a reader's by less than this many days (UTC-12 to UTC+14).
_TZ_SPREAD_DAYS = 2


def _shift_day(day: str, days: int) -> str:
    return (datetime.fromisoformat(day) + timedelta(days=days)).date().isoformat()


def _edge_sql(dialect: str, filters: Sequence[tuple[str, object]], lo: float,
              hi: float) -> list[tuple[str, list[object]]]:
    """Corrections at the window's ends, as rows like the roll-ups' (accelerator_kind, jobs and sums): a record
    counts by its end time, but the roll-ups hold it under its writer's local day, which another time zone may
    place across the reader's midnight. Only a record booked within two days of an end, on the other side of
    it, differs; the (account, day, end_time) index finds exactly those (none, when everyone writes from one
    time zone). An end more than two days ahead has no such record yet."""
    d0, d1 = _midnight(lo), _midnight(hi)
    in_window, in_days = ["1 = 1"], ["day <> ''"]
    params_w: list[object] = []
    params_d: list[object] = []
    for cond, value, store, out in (("end_time >= ?", lo, params_w, in_window), ("end_time < ?", hi, params_w,
                                    in_window), ("day >= ?", d0, params_d, in_days), ("day < ?", d1, params_d,
                                    in_days)):
        if isinstance(value, (str, float)) and value not in (float("inf"), float("-inf")):
            out.append(cond)
            store.append(value)
    sign = (f"(CASE WHEN {' AND '.join(in_window)} THEN 1 ELSE 0 END - "
            f"CASE WHEN {' AND '.join(in_days)} THEN 1 ELSE 0 END)")
    sums = ", ".join(f"{sign} * {micro(dialect, c)}" for c in ("cpu_seconds", "accelerator_seconds", "charge"))
    where = " AND ".join(f"{c} = ?" for c, _ in filters)
    head = [*params_w, *params_d] * 3 + [v for _, v in filters]
    horizon = time.time() + (_TZ_SPREAD_DAYS + 1) * 86400
    out_sql: list[tuple[str, list[object]]] = []
    for bound, day in ((lo, d0), (hi, d1)):
        if not isinstance(day, str) or bound > horizon:
            continue
        for when, span in (("end_time >= ?", [_shift_day(day, -_TZ_SPREAD_DAYS), day]),
                           ("end_time < ?", [day, _shift_day(day, _TZ_SPREAD_DAYS + 1)])):
            out_sql.append((f"SELECT accelerator_kind, 0 AS jobs, {sums} FROM usage_records WHERE {where} "
                            f"AND day >= ? AND day < ? AND {when}", [*head, *span, bound]))
    return out_sql
