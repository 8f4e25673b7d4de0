"""What is installed, found once and kept: the entry points of suanli's plug-in groups and any other fact read
from the folders on ``sys.path``.

Asking importlib.metadata for one entry-point group reads every installed distribution's metadata (and imports
the email package to do it): ~20 ms in a virtual environment of a hundred packages, more than the rest of a local
``suanli submit``, and it happened on every command that loads a cluster config. The answer only changes when
something is installed or removed, which changes the folder it lands in. So an answer is kept in the user's
cache (``suanli/cache.py``) and in this process, keyed by ``sys.path`` and each entry's modification time, inode
and device; a folder changed in the last two seconds (an install may still be writing) is read afresh and not
kept. As with Python's own bytecode cache, an ``entry_points.txt`` rewritten in place goes unnoticed until
something else in a ``sys.path`` folder changes: an edit by hand, or a legacy ``setup.py develop`` (egg-link)
project re-installed with changed entry points (its ``.egg-info`` sits in the project, not in site-packages);
deleting ``~/.cache/suanli/found`` makes the next command read them again. Installs into site-packages (wheels,
modern editable installs) are always seen.

Only ``os``, ``sys`` and ``time`` (all loaded by every Python start) are imported until an answer must be made.
"""

from __future__ import annotations

import os
import sys
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from typing import Any, TypeVar

    T = TypeVar("T")

#: The entry-point groups suanli reads: backends (compute/backends.py) and adapters (adapters/__init__.py).
GROUPS = ("suanli.backends", "suanli.adapters")
#: Bumped when a kept answer's shape changes.
_FORMAT = 1
#: A folder modified this recently may be mid-install: its answer is made afresh and not kept.
_SETTLE_NS = 2_000_000_000

_process: dict[str, tuple[Any, Any]] = {}


def stamps(paths: Iterable[str]) -> tuple[Any, ...] | None:
    """Each path with its modification time, inode and device (None for a missing one); None when any of them
    changed in the last two seconds."""
    now = time.time_ns()
    out: list[Any] = []
    for entry in paths:
        try:
            st = os.stat(entry or ".")
        except OSError:
            out.append((entry, None))
            continue
        if now - st.st_mtime_ns < _SETTLE_NS:
            return None
        out.append((entry, st.st_mtime_ns, st.st_ino, st.st_dev))
    return tuple(out)


def memo(kind: str, key: Any, make: Callable[[], T]) -> T:
    """``make()``, or the answer kept under ``key`` (in this process, then in the user's cache). A None key
    means "cannot tell if it changed": made afresh, kept nowhere. Answers must be plain data marshal can hold."""
    if key is None:
        return make()
    held = _process.get(kind)
    if held is not None and held[0] == key:
        return held[1]  # type: ignore[no-any-return]
    import marshal

    from suanli import cache
    from suanli.version import __version__

    path = os.path.join(cache.cache_dir("found"), f"{kind}.{__version__}.{sys.implementation.cache_tag}")
    blob = cache.read(path, binary=True)
    value: Any = None
    found = False
    if isinstance(blob, bytes):
        try:
            fmt, kept_key, kept = marshal.loads(blob)
            found = fmt == _FORMAT and kept_key == key
            value = kept
        except (EOFError, ValueError, TypeError):
            found = False
    if not found:
        value = make()
        try:
            cache.write(path, marshal.dumps((_FORMAT, key, value)))
        except ValueError:  # not plain data: keep it in this process only
            pass
    _process[kind] = (key, value)
    return value  # type: ignore[no-any-return]


def entry_points(group: str) -> dict[str, str]:
    """name -> ``module:attr`` for one of :data:`GROUPS`, as ``importlib.metadata.entry_points(group=...)``
    lists them (a later duplicate name wins, as in a dict built from that list)."""
    if group not in GROUPS:
        raise ValueError(f"discovery: {group!r} is not one of suanli's entry-point groups {GROUPS}")
    key = ("entry-points", tuple(sys.path), stamps(sys.path))
    groups: dict[str, list[tuple[str, str]]] = memo("entry-points", None if key[2] is None else key, _read_groups)
    return dict(groups.get(group, ()))


def _read_groups() -> dict[str, list[tuple[str, str]]]:
    """Every group of :data:`GROUPS` from one pass over the installed distributions."""
    from importlib.metadata import entry_points as installed

    every = installed()
    return {group: [(ep.name, ep.value) for ep in every.select(group=group)] for group in GROUPS}
