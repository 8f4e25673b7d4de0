"""Typed checks of values read from YAML (cluster configs, settings): each one fails through the source, so
the error names the file, line and key. Shared by config.py and settings.py."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any, TypeVar

from suanli.errors import UsageError
from suanli.jobs.resources import parse_memory, parse_time
from suanli.yamlfile import Path_, Source

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")

T = TypeVar("T")


def _get(src: Source, data: Mapping[str, Any], path: Path_, key: str, check: Callable[[Any, Path_], T],
         default: T) -> T:
    if key not in data or data[key] is None:
        return default
    return check(data[key], path + (key,))


def _mapping(src: Source, value: Any, path: Path_, allowed: tuple[str, ...], what: str) -> Mapping[str, Any]:
    result: Mapping[str, Any] = src.mapping(value, path, allowed)
    return result


def _str(src: Source) -> Callable[[Any, Path_], str]:
    def check(v: Any, p: Path_) -> str:
        if isinstance(v, bool) or not isinstance(v, str | int | float):
            src.fail(p, f"{v!r} is not a string")
        return str(v)

    return check


def _name(src: Source) -> Callable[[Any, Path_], str]:
    def check(v: Any, p: Path_) -> str:
        s = _str(src)(v, p)
        if not _NAME.match(s):
            src.fail(p, f"{s!r} is not a valid name (letters, digits, '.', '_', '-')")
        return s

    return check


def _int(src: Source, minimum: int = 0) -> Callable[[Any, Path_], int]:
    def check(v: Any, p: Path_) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            src.fail(p, f"{v!r} is not a whole number")
        if v < minimum:
            src.fail(p, f"{v} must be at least {minimum}")
        return v

    return check


def _float(src: Source) -> Callable[[Any, Path_], float]:
    def check(v: Any, p: Path_) -> float:
        if isinstance(v, bool) or not isinstance(v, int | float):
            src.fail(p, f"{v!r} is not a number")
        if v < 0:
            src.fail(p, f"{v} must not be negative")
        return float(v)

    return check


def _choice(src: Source, allowed: tuple[str, ...]) -> Callable[[Any, Path_], str]:
    def check(v: Any, p: Path_) -> str:
        if v not in allowed:
            src.fail(p, f"{v!r} is not allowed; use one of: {', '.join(allowed)}")
        return str(v)

    return check


def _time(src: Source) -> Callable[[Any, Path_], timedelta | None]:
    def check(v: Any, p: Path_) -> timedelta | None:
        try:
            return parse_time(src.text(p, v), field=str(p[-1]) if p else "time")
        except UsageError as exc:
            src.fail(p, str(exc).split(": ", 1)[-1])

    return check


def _memory(src: Source) -> Callable[[Any, Path_], int | None]:
    def check(v: Any, p: Path_) -> int | None:
        try:
            return parse_memory(v)
        except UsageError as exc:
            src.fail(p, str(exc).split(": ", 1)[-1])

    return check


def _lines(src: Source) -> Callable[[Any, Path_], tuple[str, ...]]:
    def check(v: Any, p: Path_) -> tuple[str, ...]:
        if isinstance(v, str):
            return (v,)
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            src.fail(p, "expected a list of shell lines")
        return tuple(v)

    return check
