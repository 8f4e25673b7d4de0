"""Tables for people, JSON for scripts."""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from suanli.errors import UsageError

if TYPE_CHECKING:
    from suanli.jobs.record import JobInfo


def print_json(data: Any) -> None:
    """Indented for a terminal; compact for a pipe (json's C encoder only runs without indent: 3x faster)."""
    indent = 2 if sys.stdout.isatty() else None
    sys.stdout.write(json.dumps(data, indent=indent, default=str) + "\n")


def print_infos(infos: Sequence[JobInfo]) -> None:
    """``--json`` of job states: what ``print_json([i.to_json() for i in infos])`` prints, built for a pipe
    without a dict per job (``status --all --json`` over a large registry)."""
    if sys.stdout.isatty():
        print_json([i.to_json() for i in infos])
        return
    from suanli.jobs.record import infos_json

    sys.stdout.write(infos_json(infos) + "\n")


#: C0/C1 controls (ESC starts terminal escape sequences), DEL, and the bidi/zero-width marks that can make
#: a cell look like something else: a job name or account can carry any of them.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def clean(text: str) -> str:
    """Text safe to print on a terminal: line breaks and tabs become spaces, other controls ``?``."""
    if text.isprintable():  # every character _UNSAFE matches is non-printable: the common case costs one C call
        return text
    return _UNSAFE.sub(lambda m: " " if m.group() in "\n\r\t" else "?", text)


def csv_cell(value: object) -> object:
    """A CSV value a spreadsheet will not run: text starting with = + - @ (or tab, CR) gets a leading ``'``
    (OWASP's advice); numbers stay numbers, so -1.5 is still a number."""
    if value is None:
        return ""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Columns padded to their widest cell; linear in cells, with the per-cell work kept to C calls (a
    10,000-task ``status ARRAY_ID`` prints 110,000 cells)."""
    cells = [[c if type(c) is str and c.isprintable() else clean("" if c is None else str(c)) for c in r]
             for r in rows]
    return clean_table(headers, cells)


def clean_table(headers: Sequence[str], cells: Sequence[Sequence[str]]) -> str:
    """``table`` for cells that are already text safe to print (the caller cleaned each distinct value once):
    the widths come from one C pass per column, then one format per row."""
    widths = [len(h) for h in headers]
    if cells:
        widths = [max(w, max(map(len, column))) for w, column in zip(widths, zip(*cells, strict=True), strict=True)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*headers).rstrip()]
    lines += [fmt.format(*r).rstrip() for r in cells]
    return "\n".join(lines) + "\n"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    s = int(seconds)
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    return f"{d}-{h:02d}:{m:02d}:{s:02d}" if d else f"{h:02d}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


def local_time(ts: float | None) -> str:
    if ts is None:
        return ""
    text = _LOCAL_TIMES.get(ts)
    if text is None:  # the tasks of an array share one submit time: format it once
        text = _LOCAL_TIMES[ts] = time.strftime("%m-%d %H:%M:%S", time.localtime(ts))
    return text


_LOCAL_TIMES: dict[float, str] = {}


def short(text: str | None, width: int = 24) -> str:
    if not text:
        return ""
    text = clean(text)
    return text if len(text) <= width else text[: width - 1] + "…"

def when(text: str, flag: str = "--since") -> float:
    """A point in time from the command line: an ISO 8601 date or time (no zone: local time, as in sacct) or
    a duration ago (12h, 7d). One parser for status, usage and accounting sync."""
    from datetime import datetime

    from suanli.jobs.resources import parse_time

    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        pass
    try:
        delta = parse_time(text, flag)
    except UsageError:
        delta = None
    if delta is None:
        raise UsageError(f"{flag}: {text!r} is not an ISO 8601 date or time (2026-11-01, 2026-11-01T08:00, "
                         "2026-11-01T08:00+08:00) nor a duration ago (12h, 7d)")
    return time.time() - delta.total_seconds()
