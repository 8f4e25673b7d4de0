"""Quotas: limits per account (optionally per user and cluster) over a calendar month or a fixed period."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from datetime import date, datetime
from typing import Any, NamedTuple

from suanli.errors import UsageError

PERIODS = ("month", "total")


class _Fields(NamedTuple):
    account: str
    period: str
    user: str | None
    cluster: str | None
    start: str | None  # ISO date, inclusive
    end: str | None  # ISO date, exclusive
    cpu_hours: float | None
    accelerator_hours: dict[str, float]
    charge: float | None
    id: int | None


class Quota(_Fields):
    """Limits of one account (or one user of it, on one cluster) over a period. A named tuple checked when
    made, not a dataclass: every admission loads this module, and a frozen dataclass costs ~1.5 ms to create at
    import against ~0.2 ms (``_replace`` makes a changed copy, checked again)."""

    __slots__ = ()

    def __new__(cls, account: str, period: str = "month", user: str | None = None, cluster: str | None = None,
                start: str | None = None, end: str | None = None, cpu_hours: float | None = None,
                accelerator_hours: dict[str, float] | None = None, charge: float | None = None,
                id: int | None = None) -> Quota:  # noqa: A002 - the quota's id in the ledger
        self = super().__new__(cls, account, period, user, cluster, start, end, cpu_hours,
                               dict(accelerator_hours or {}), charge, id)
        self._check()
        return self

    @classmethod
    def _make(cls, iterable: Iterable[Any]) -> Quota:  # type: ignore[override]
        """``_replace`` builds its copy here: checked as any other quota."""
        return cls(*iterable)

    def _check(self) -> None:
        if not self.account:
            raise UsageError("quota: --account is required")
        if self.period not in PERIODS:
            raise UsageError(f"quota: --period {self.period!r} is not allowed; use month or total")
        for name, value in (("--cpu-hours", self.cpu_hours), ("--charge", self.charge),
                            *((f"--accelerator-hours {k}", v) for k, v in self.accelerator_hours.items())):
            if value is not None and not value >= 0:  # also refuses NaN
                raise UsageError(f"quota: {name} must be a number of at least 0, not {value}")
        if self.cpu_hours is None and self.charge is None and not self.accelerator_hours:
            raise UsageError("quota: give at least one limit: --cpu-hours X, --accelerator-hours KIND:Y or "
                             "--charge Z")
        if self.start and self.end and self.start >= self.end:
            raise UsageError(f"quota: --start {self.start} must be before --end {self.end}")

    def scope(self) -> str:
        out = f"account {self.account}"
        if self.user:
            out += f" user {self.user}"
        if self.cluster:
            out += f" on {self.cluster}"
        return out

    def active_span(self) -> tuple[float, float]:
        """Epoch seconds [start, end) during which the quota applies at all."""
        lo = _epoch(self.start) if self.start else float("-inf")
        hi = _epoch(self.end) if self.end else float("inf")
        return lo, hi

    def overlaps(self, other: Quota) -> bool:
        if (self.account, self.user, self.cluster) != (other.account, other.user, other.cluster):
            return False
        a0, a1 = self.active_span()
        b0, b1 = other.active_span()
        return a0 < b1 and b0 < a1

    def window(self, now: float | None = None) -> tuple[str, float, float] | None:
        """(label, start, end) of the usage that counts now, or None when the quota is not in force now."""
        now = time.time() if now is None else now
        lo, hi = self.active_span()
        if not lo <= now < hi:
            return None
        if self.period == "total":
            label = f"{self.start or 'the start'}..{self.end or 'open end'}" if (self.start or self.end) else "total"
            return label, lo, hi
        t = datetime.fromtimestamp(now)
        first = datetime(t.year, t.month, 1)
        nxt = datetime(t.year + (t.month == 12), t.month % 12 + 1, 1)
        return first.strftime("%Y-%m"), max(lo, first.timestamp()), min(hi, nxt.timestamp())

    def limits(self) -> list[tuple[str, str | None, float]]:
        """(resource, accelerator kind, limit in hours or units)."""
        out: list[tuple[str, str | None, float]] = []
        if self.cpu_hours is not None:
            out.append(("cpu_hours", None, self.cpu_hours))
        for kind, hours in sorted(self.accelerator_hours.items()):
            out.append(("accelerator_hours", kind, hours))
        if self.charge is not None:
            out.append(("charge", None, self.charge))
        return out

    def row(self) -> tuple[Any, ...]:
        return (self.account, self.user, self.cluster, self.period, self.start, self.end, self.cpu_hours,
                json.dumps(self.accelerator_hours, sort_keys=True), self.charge)

    @classmethod
    def from_row(cls, r: tuple[Any, ...]) -> Quota:
        return cls(id=int(r[0]), account=r[1], user=r[2], cluster=r[3], period=r[4], start=r[5], end=r[6],
                   cpu_hours=r[7], accelerator_hours=json.loads(r[8] or "{}"), charge=r[9])


QUOTA_COLUMNS = "id, account, user_name, cluster, period, start_date, end_date, cpu_hours, accelerator_hours, charge"


def parse_date(text: str, flag: str) -> str:
    try:
        return date.fromisoformat(text).isoformat()
    except ValueError:
        raise UsageError(f"quota: {flag} {text!r} is not a date; use YYYY-MM-DD") from None


def parse_accelerator_hours(items: list[str]) -> dict[str, float]:
    from suanli.adapters import adapter_names, get_adapter

    kinds = sorted({k for k in (get_adapter(n).accelerator_kind for n in adapter_names()) if k})
    out: dict[str, float] = {}
    for item in items:
        kind, sep, value = item.partition(":")
        if not sep or kind not in kinds:
            raise UsageError(f"quota: --accelerator-hours {item!r} is not KIND:HOURS with KIND one of "
                             f"{', '.join(kinds)} (for example ascend:500)")
        out[kind] = parse_number(value, f"--accelerator-hours {kind}")
    return out


def parse_number(text: str, flag: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"quota: {flag} {text!r} is not a number") from None
    if not value >= 0 or value == float("inf"):
        raise UsageError(f"quota: {flag} must be a number of at least 0, not {text}")
    return value


def _epoch(day: str) -> float:
    return datetime.fromisoformat(day).timestamp()
