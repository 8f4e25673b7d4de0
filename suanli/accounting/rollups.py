"""Reading the monthly and daily roll-ups: which roll-up rows (and edge days) make up a window, and their sums in
SQL that adds micro-units without overflow. Apart from ``ledger.py`` because reports and admission both use it."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta

from suanli.accounting.db import ROLLUPS, Tx, micro
from suanli.accounting.quota import Quota

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


def rollup_union(parts: list[Part], cols: Sequence[str],
           filters: Sequence[tuple[str, object]]) -> tuple[str, list[object]]:
    sqls: list[str] = []
    params: list[object] = []
    for part in parts:
        sql, p = _part_sql(part, cols, filters)
        sqls.append(sql)
        params += p
    return " UNION ALL ".join(sqls), params


def rollup_sums(tx: Tx, q: Quota, lo: float, hi: float) -> dict[str | None, tuple[float, ...]] | None:
    """What the quota's scope used in [lo, hi) by accelerator kind, from the roll-ups (a quota month is one
    roll-up row per key; a window that starts or ends inside a month adds its edge days), corrected at the ends
    for records written from another time zone; one statement."""
    filters = [(c, v) for c, v in (("account", q.account), ("user_name", q.user), ("cluster", q.cluster)) if v]
    parts = window_parts(lo, hi, ["accelerator_kind", *(c for c, _ in filters)])
    if parts is None:
        return None
    sql, params = rollup_union(parts, ["accelerator_kind"], filters)
    for edge, p in _edge_sql(tx.dialect, filters, lo, hi):
        sql += " UNION ALL " + edge
        params += p
    rows = tx.all(f"SELECT accelerator_kind, {rollup_totals(tx.dialect)} FROM ({sql}) AS r GROUP BY accelerator_kind",
                  params)
    out: dict[str | None, tuple[float, ...]] = {}
    for kind, *sums in rows:
        old = out.get(kind or None, (0.0, 0.0, 0.0))
        out[kind or None] = tuple(o + float(v or 0) / 1e6 for o, v in zip(old, sums, strict=True))
    return out


def rollup_totals(dialect: str) -> str:
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
    case_params = [*params_w, *params_d] * 3
    head = [*case_params, *(v for _, v in filters)]
    horizon = time.time() + (_TZ_SPREAD_DAYS + 1) * 86400
    ranges: list[str] = []
    params: list[object] = []
    for bound, day in ((lo, d0), (hi, d1)):
        if not isinstance(day, str) or bound > horizon:
            continue
        # Each day by name, so the index reads, for each, only the records past the end (end_time is the index's
        # next column): with a range of days it read every record of those days, a few thousand a day at a
        # centre, to find the handful written across a midnight.
        for when, days in (("end_time >= ?", [_shift_day(day, -k) for k in range(_TZ_SPREAD_DAYS, 0, -1)]),
                           ("end_time < ?", [_shift_day(day, k) for k in range(_TZ_SPREAD_DAYS + 1)])):
            ranges.append(f"(day IN ({', '.join('?' * len(days))}) AND {when})")
            params += [*days, bound]
    if not ranges:
        return []
    # One scan with the ranges OR-ed (each an index range), not one subquery per range: the statement is planned
    # on every admission, and four copies of the sums cost more to plan than to run. A record in two ranges
    # (a window of a few days) is on the same side of both ends in both its day and its end time, so its sign
    # is 0 and counting it once instead of twice changes nothing. SQLite takes each OR-ed term as an index range
    # only when the term names the index's first column itself: there the filters go into every term (else it
    # reads all of the account's records); PostgreSQL combines the ranges under the shared filters by itself.
    if dialect == "sqlite":
        per = [f"({where} AND {r[1:]}" for r in ranges]
        values = [v for _, v in filters]
        spread: list[object] = []
        taken = 0
        for r in ranges:
            width = r.count("?")
            spread += [*values, *params[taken:taken + width]]
            taken += width
        return [(f"SELECT accelerator_kind, 0 AS jobs, {sums} FROM usage_records WHERE {' OR '.join(per)}",
                 [*case_params, *spread])]
    return [(f"SELECT accelerator_kind, 0 AS jobs, {sums} FROM usage_records WHERE {where} "
             f"AND ({' OR '.join(ranges)})", [*head, *params])]
