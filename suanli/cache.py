"""The user's cache of things suanli can rebuild: the CLI's top-level help and parsed YAML files. Nothing here
is needed for correctness; every entry is keyed by what it was made from, and any failure falls back to
making it again. Only ``os`` and ``sys`` are imported: the CLI's start-up reads this before anything else.
"""

from __future__ import annotations

import os

#: Entries kept per kind; past this the older half is removed (tests and sweeps make many one-off files).
MAX_ENTRIES = 512


def cache_dir(kind: str) -> str:
    """``$XDG_CACHE_HOME/suanli/KIND`` (default ``~/.cache/suanli/KIND``)."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "suanli", kind)


def read(path: str, binary: bool = False) -> str | bytes | None:
    """An entry's contents, or None when it is missing or not this user's own (a cache another user can write
    could feed this one anything)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        if os.fstat(fd).st_uid != os.getuid():
            return None
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read()
    except OSError:
        return None
    finally:
        os.close(fd)
    if binary:
        return data
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def write(path: str, data: str | bytes) -> None:
    """Write an entry whole (a temporary name, then renamed) or not at all; a read-only home only costs speed."""
    folder = os.path.dirname(path)
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        os.makedirs(folder, mode=0o700, exist_ok=True)
        _trim(folder)
        with open(tmp, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
        os.replace(tmp, path)
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass


def _trim(folder: str) -> None:
    """Keep a folder under MAX_ENTRIES: remove the least recently written half when it is full."""
    names = os.listdir(folder)
    if len(names) < MAX_ENTRIES:
        return
    entries = []
    for name in names:
        try:
            entries.append((os.stat(os.path.join(folder, name)).st_mtime_ns, name))
        except OSError:
            continue
    entries.sort()
    for _, name in entries[: len(entries) // 2]:
        try:
            os.unlink(os.path.join(folder, name))
        except OSError:
            pass
