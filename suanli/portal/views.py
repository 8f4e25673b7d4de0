"""What the portal's pages show, apart from its routes: the template environment and its filters, the time
windows it reads, and the chart data it draws."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import jinja2

HERE = Path(__file__).parent


def template_env() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined)
    env.filters["hours"] = hours_text
    env.filters["when"] = when_text
    env.filters["elapsed"] = elapsed_text
    return env


def hours_text(value: Any) -> str:
    v = float(value or 0)
    return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"


def when_text(t: Any) -> str:
    if t is None:
        return ""
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(float(t)))


def elapsed_text(s: Any) -> str:
    if s is None:
        return ""
    s = int(float(s))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def day_aligned(text: str, name: str) -> float:
    """A point in time as the CLI reads it, except that whole days ago (30d) start at local midnight: the page
    groups by day or month, and a window on midnights is served from the ledger's roll-ups, not a records' scan."""
    from suanli.cli.output import when

    t = when(text, name)
    days = text.strip()[:-1]
    if text.strip().endswith("d") and days.isdigit():
        lt = time.localtime(t)
        t = time.mktime((lt.tm_year, lt.tm_mon, lt.tm_mday, 0, 0, 0, 0, 0, -1))
    return t


def safe_next(nxt: str | None) -> str:
    """Only a path on this site (no //host, no scheme): the login form is no open redirect."""
    if not nxt or not nxt.startswith("/") or nxt.startswith("//") or "\\" in nxt:
        return "/jobs"
    return nxt


def chart(rows: list[dict[str, Any]], by: list[str]) -> dict[str, Any]:
    """An ECharts stacked bar option: periods along x (or the first key), one series per value of the other."""
    if not rows:
        return {}
    x_key = next((k for k in ("day", "month") if k in by), by[0] if by else None)
    if x_key is None:
        return {}
    stack_key = next((k for k in by if k != x_key), None)
    xs = sorted({str(r.get(x_key)) for r in rows})
    series: dict[str, list[float]] = {}
    for r in rows:
        name = str(r.get(stack_key)) if stack_key else "all"
        series.setdefault(name, [0.0] * len(xs))[xs.index(str(r.get(x_key)))] += float(r["cpu_hours"])
    return {"title": f"cpu-hours by {x_key}" + (f" and {stack_key}" if stack_key else ""), "x": xs,
            "series": [{"name": k, "data": v} for k, v in sorted(series.items())]}
