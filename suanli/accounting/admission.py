"""Quotas and admission, apart from ``ledger.py`` because they are the ledger's one read-modify-write path: every
limit in force, what its window used and what running jobs reserved, checked and reserved in one transaction."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from suanli.accounting.db import Database, Tx
from suanli.accounting.estimate import Estimate
from suanli.accounting.quota import QUOTA_COLUMNS, Quota
from suanli.accounting.rollups import rollup_sums
from suanli.errors import QuotaExceeded, UsageError

#: Seconds (cpu, accelerator) and charge units, by accelerator kind.
_Sums = dict[str | None, tuple[float, ...]]

#: How each resource of a limit is named in messages.
RESOURCE_NAMES = {"cpu_hours": "cpu-hours", "accelerator_hours": "accelerator-hours", "charge": "charge units"}


class Check(NamedTuple):
    """One limit of one quota as admission saw it (hours, or charge units). A named tuple, not a dataclass: it
    loads with every admission, and a frozen dataclass costs ~1.5 ms to create at import against ~0.2 ms."""

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


class Admission:
    """The ledger's quotas and admission (a mixin of ``Ledger``: it uses the ledger's database)."""

    db: Database

    # ------------------------------------------------------------ quotas
    def quotas(self, account: str | None = None) -> list[Quota]:
        with self.db.transaction(single=True) as tx:
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
        return q._replace(id=qid)

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
        windows: list[tuple[Quota, str, float, float]] = []
        for q in quotas:
            win = q.window(now)
            if win is None:
                if only is not None:  # `quota show` lists it, marked, so its id can be found for `quota rm`
                    span = f"{q.start or 'the start'}..{q.end or 'open end'}"
                    out.extend(Check(q, f"not in force ({span})", r, k, lim, 0.0, 0.0, 0.0)
                               for r, k, lim in q.limits())
                continue
            windows.append((q, *win))
        sums = self._window_sums(tx, windows)
        for i, (q, label, _, _) in enumerate(windows):
            used, reserved = sums[2 * i], sums[2 * i + 1]
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

    @classmethod
    def _window_sums(cls, tx: Tx, windows: list[tuple[Quota, str, float, float]]) -> list[_Sums]:
        """For each quota window, what was used in it (the roll-ups; a window not on local midnights, never from
        quota dates: the records' scan) and what running jobs reserved: one statement for all of them, so an
        admission costs one round trip for its sums however many quotas apply."""
        parts: list[tuple[str, list[object], float]] = []  # (sql of kind + 3 sums, params, unit in seconds)
        for q, _, lo, hi in windows:
            used = _statement_of(rollup_sums, tx.dialect, q, lo, hi)
            parts.append((*used, 1e-6) if used else (*cls._sums_sql("usage_records", q, lo, hi), 1.0))
            parts.append((*cls._sums_sql("reservations", q, None, None), 1.0))
        if not parts:
            return []
        ctes = ", ".join(f"s{i} (kind, a, b, c) AS ({sql})" for i, (sql, _, _) in enumerate(parts))
        sums = ", ".join(f"CAST({c} AS DOUBLE PRECISION)" for c in "abc")
        union = " UNION ALL ".join(f"SELECT {i}, kind, {sums} FROM s{i}" for i in range(len(parts)))
        out: list[_Sums] = [{} for _ in parts]
        for i, kind, *values in tx.all_prepared(f"WITH {ctes} {union}",
                                                [p for _, params, _ in parts for p in params]):
            unit = parts[i][2]
            old = out[i].get(kind or None, (0.0, 0.0, 0.0))
            out[i][kind or None] = tuple(o + float(v or 0) * unit for o, v in zip(old, values, strict=True))
        return out

    @classmethod
    def _sums(cls, tx: Tx, table: str, q: Quota, lo: float | None, hi: float | None) -> _Sums:
        """What ``table`` holds for the quota's scope in [lo, hi), in seconds and units by accelerator kind."""
        sql, params = cls._sums_sql(table, q, lo, hi)
        return {r[0]: (float(r[1] or 0), float(r[2] or 0), float(r[3] or 0)) for r in tx.all(sql, params)}

    @staticmethod
    def _sums_sql(table: str, q: Quota, lo: float | None, hi: float | None) -> tuple[str, list[object]]:
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
        return (f"SELECT accelerator_kind, SUM(cpu_seconds), SUM(accelerator_seconds), SUM(charge) FROM {table} "
                f"WHERE {' AND '.join(clauses)} GROUP BY accelerator_kind", params)

    def admit(self, *, job_id: str, cluster: str, account: str | None, user: str | None, est: Estimate,
              reserve: bool = True, native_id: str | None = None) -> list[Check]:
        """Check every quota in force and, when all fit, reserve the worst case (atomically), under the job's
        native id when it is known before submission (else :meth:`bind` records it afterwards)."""
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
                # Sent with the COMMIT (one round trip): the lock, held since the sums were read, keeps them true.
                tx.defer("INSERT INTO reservations (job_id, cluster, native_id, account, user_name, "
                           "accelerator_kind, cpu_seconds, accelerator_seconds, charge, created_at) "
                           "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                           (job_id, cluster, native_id, account, user, est.accelerator_kind,
                            (est.cpu_hours or 0.0) * 3600, (est.accelerator_hours or 0.0) * 3600, est.charge or 0.0,
                            time.time()))
        return checks

    def bind(self, job_id: str, native_id: str) -> None:
        with self.db.transaction(single=True) as tx:
            tx.execute("UPDATE reservations SET native_id = ? WHERE job_id = ?", (native_id, job_id))

    def quota_status(self, account: str | None = None, now: float | None = None) -> list[Check]:
        with self.db.transaction() as tx:
            out: list[Check] = []
            for q in self._quotas(tx, account):
                out.extend(self.checks(tx, q.account, q.user, q.cluster or "", None, now, only=q))
            return out


class _Capture:
    """Stands in for a ``Tx`` to take the one statement a reader would send, so that admission sends several
    readers' statements as one (their SQL stays written once, in the reader)."""

    def __init__(self, dialect: str) -> None:
        self.dialect = dialect
        self.statement: tuple[str, list[object]] | None = None

    def all(self, sql: str, params: Sequence[object] = ()) -> list[Any]:
        self.statement = (sql, list(params))
        return []


def _statement_of(reader: Callable[..., object], dialect: str, *args: object) -> tuple[str, list[object]] | None:
    """The statement ``reader(tx, *args)`` sends (None when it sends none), without sending it."""
    cap = _Capture(dialect)
    reader(cap, *args)
    return cap.statement


def _pick(sums: _Sums, resource: str, kind: str | None) -> float:
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
