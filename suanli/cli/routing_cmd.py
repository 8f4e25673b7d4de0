"""The routing table of ``--cluster auto`` (``submit --explain``, ``status JOB --explain``)."""

from __future__ import annotations

import math
from typing import Any

from suanli.cli.output import local_time, table


def _start(c: dict[str, Any], decided_at: float) -> str:
    at = c.get("start")
    if at is None:
        return "unknown" if not c.get("excluded") else ""
    wait = max(0.0, float(at) - decided_at)
    return "now" if wait < 60 else f"{local_time(float(at))} (+{math.ceil(wait / 60)} min)"


def routing_table(routing: dict[str, Any]) -> str:
    """One row per candidate: when it would start, what it may cost, what the quota keeps, why it is out."""
    decided = float(routing.get("decided_at") or 0.0)
    chosen = (routing.get("cluster"), routing.get("partition"))
    rows: list[list[object]] = []
    for c in routing.get("candidates", []):
        mark = "chosen" if (c["cluster"], c["partition"]) == chosen and not c.get("excluded") else (
            f"excluded ({c['excluded']}): {c.get('reason', '')}" if c.get("excluded") else "")
        charge = c.get("charge")
        left = c.get("quota_left")
        rows.append([c["cluster"], c["partition"], c["backend"], _start(c, decided), c.get("start_source") or "",
                     "" if charge is None else f"{charge:.2f}",
                     "" if left is None else f"{left:.2f} {c.get('quota_label', '')}".strip(), mark])
    head = f"# routing ({routing.get('prefer', 'earliest')} start first): "
    head += f"{chosen[0]}/{chosen[1]}\n" if chosen[0] else "nothing chosen\n"
    return head + table(("CLUSTER", "PARTITION", "BACKEND", "EXPECTED START", "FROM", "MAX CHARGE", "QUOTA LEFT",
                         "DECISION"), rows)
