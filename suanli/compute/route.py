"""Earliest-start routing: the rows of one routing decision and the rule that picks among them.

The API builds one :class:`Candidate` per configured partition (why it is out, or when the scheduler expects to
start the job there and what it may cost); :func:`pick` chooses. Kept free of I/O so the rule can be tested on
its own and the same rows can be shown by ``--explain``, stored in the registry and printed again later.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

#: Two expected starts closer than this are the same start: Slurm reports whole seconds and two idle
#: partitions answer a second apart; the cheaper (then the earlier configured) one should win, not the faster
#: ``sbatch``.
SAME_START_S = 60.0
#: The most candidates one decision weighs (every partition of every configured cluster).
MAX_CANDIDATES = 256

Prefer = Literal["earliest", "cheapest"]
#: Why a candidate is out; decides the exit code when nothing is left (2 no fit, 3 quota, 4 unreachable).
Exclusion = Literal["kind", "fit", "quota", "unreachable", "refused", "pinned"]


@dataclass
class Candidate:
    """One partition of one cluster as routing saw it."""

    cluster: str
    partition: str
    backend: str
    order: int  # position in the configs: the last tie-break
    #: Expected start (epoch seconds); None: the backend cannot tell (counted as later than any known start).
    start: float | None = None
    start_source: str = ""  # how the start was found: "sbatch --test-only", "free resources", ...
    charge: float | None = None  # worst-case charge (time limit x allocation x the partition's rates)
    quota_left: float | None = None  # the smallest amount any quota in force has left after this job
    quota_label: str = ""  # the unit of quota_left ("charge", "cpu-hours", ...)
    excluded: Exclusion | None = None
    reason: str = ""  # why it is excluded (the one-line message), empty when it is in the running

    def wait_s(self, now: float) -> float:
        return math.inf if self.start is None else max(0.0, self.start - now)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Candidate:
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in names})


def _key(c: Candidate, now: float) -> tuple[float, float, int]:
    wait = c.wait_s(now)
    bucket = wait if math.isinf(wait) else math.floor(wait / SAME_START_S)
    return (bucket, c.charge if c.charge is not None else 0.0, c.order)


def pick(cands: list[Candidate], now: float, prefer: Prefer = "earliest",
         max_wait_s: float | None = None) -> Candidate | None:
    """The chosen candidate among those not excluded, or None.

    ``earliest``: the soonest expected start; starts within ``SAME_START_S`` tie, then the lower charge wins,
    then the configured order. ``cheapest``: the lowest charge among candidates expected to start within
    ``max_wait_s`` (all known starts when it is None); when none starts in time, the earliest rule applies."""
    live = [c for c in cands if c.excluded is None]
    if not live:
        return None
    if prefer == "cheapest":
        within = [c for c in live if c.start is not None
                  and (max_wait_s is None or c.wait_s(now) <= max_wait_s)]
        if within:
            return min(within, key=lambda c: (c.charge if c.charge is not None else 0.0,
                                             _key(c, now)[0], c.order))
    return min(live, key=lambda c: _key(c, now))


def closest_miss(cands: list[Candidate]) -> Candidate | None:
    """The excluded candidate to name when nothing fits: one that failed only on size or time (the user can
    shrink the request), else one that failed on its accelerator kind."""
    for kind in ("fit", "refused", "kind", "pinned"):
        for c in cands:
            if c.excluded == kind:
                return c
    return cands[0] if cands else None
