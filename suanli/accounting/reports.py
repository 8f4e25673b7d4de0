"""Usage reports (`suanli usage`), apart from ``ledger.py`` because they only read: from the roll-ups where the
window allows, else a GROUP BY over the records (``--by job``, windows off local midnights)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from suanli.accounting.db import Database
from suanli.accounting.rollups import rollup_totals, rollup_union, window_parts
from suanli.errors import UsageError

#: --by keys of `suanli usage` and the column each groups on.
REPORT_KEYS = {
    "account": "account", "user": "user_name", "partition": "partition_name", "accelerator": "accelerator_kind",
    "cluster": "cluster", "day": "day", "month": "month", "job": "native_id",
}



class Reports:
    """The ledger's reports (a mixin of ``Ledger``: it uses the ledger's database)."""

    db: Database

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


def _rollup_report(db: Database, by: Sequence[str], since: float | None, until: float | None,
                   cluster: str | None, account: str | None) -> list[dict[str, Any]] | None:
    """The report from the roll-ups (no record is read); None when the window needs the records' scan."""
    cols = [REPORT_KEYS[k] for k in by]  # the roll-ups name their columns as the records do
    filters = [(c, v) for c, v in (("cluster", cluster), ("account", account)) if v is not None]
    parts = window_parts(since, until, [*cols, *(c for c, _ in filters)], daily="day" in by)
    if parts is None:
        return None
    source, params = rollup_union(parts, cols, filters)
    group = f"GROUP BY {', '.join(cols)} " if cols else ""
    order = f"ORDER BY {', '.join(cols)}" if cols else ""
    select = ", ".join(cols) + ", " if cols else ""
    sql = (f"SELECT {select}SUM(jobs), {rollup_totals(db.dialect)} FROM ({source}) AS r "
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
