"""YAML with line numbers: every validation error can say ``file:line: key.path: ...``."""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, NoReturn

from suanli.errors import ConfigError

Path_ = tuple[str | int, ...]


@dataclass
class Source:
    """A parsed YAML document and the line of every key and item in it (1-based)."""

    file: str
    data: Any
    lines: dict[Path_, int] = field(default_factory=dict)
    #: Scalars as written (YAML reads ``0755`` as 493 and ``true`` as True; argv wants the text).
    raw: dict[Path_, str] = field(default_factory=dict)

    def mapping(self, value: Any, path: Path_, allowed: tuple[str, ...]) -> Any:
        """``value`` if it is a mapping whose keys are all allowed; else fail naming the key and the allowed ones."""
        from collections.abc import Mapping

        if not isinstance(value, Mapping):
            self.fail(path, f"expected a mapping, got {type(value).__name__}")
        for k in value:
            if k not in allowed:
                self.fail(path + (str(k),), f"unknown key {k!r}; allowed keys: {', '.join(allowed)}")
        return value

    def text(self, path: Path_, value: Any) -> Any:
        """A scalar as written when YAML turned it into a number or bool (``1:30:00`` is 5400 in YAML 1.1)."""
        if isinstance(value, bool | int | float) and path in self.raw:
            return self.raw[path]
        return value

    def text_list(self, path: Path_) -> list[str] | None:
        """A list of scalars as their literal text, or None when ``path`` is not such a list."""
        value: Any = self.data
        for p in path:
            try:
                value = value[p]
            except (KeyError, IndexError, TypeError):
                return None
        if not isinstance(value, list):
            return None
        out = []
        for i, item in enumerate(value):
            if isinstance(item, list | dict):
                self.fail(path + (i,), f"{item!r} is not a single argument")
            out.append(self.raw.get(path + (i,), str(item)))
        return out

    def line(self, path: Path_) -> int | None:
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return self.lines.get(())

    def fail(self, path: Path_, message: str) -> NoReturn:
        """Raise a one-line ConfigError naming the file, line and key path."""
        where = self.file
        line = self.line(path)
        if line is not None:
            where += f":{line}"
        raise ConfigError(f"{where}: {dotted(path)}: {message}" if path else f"{where}: {message}")


def dotted(path: Path_) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


#: Every input is bounded: spec, cluster and settings files are small, so anything larger is a mistake or an attack.
MAX_BYTES = 1024 * 1024
MAX_DEPTH = 32


def load_yaml(file: str, text: str | None = None) -> Source:
    """Parse one YAML file; a syntax error names the file and line.

    Anchors and aliases are refused (nine nested aliases expand to billions of nodes), as are duplicate keys
    (YAML would keep the last one silently), files over ``MAX_BYTES`` and nesting deeper than ``MAX_DEPTH``.
    """
    stamp = None
    if text is None:
        stamp = _stamp(file)
        cached = _cached(file, stamp)
        if cached is not None:
            return cached
        text = _read(file)
    import yaml

    loader_cls = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    if len(text) > MAX_BYTES:
        raise ConfigError(f"{file}: {len(text)} characters is larger than the {MAX_BYTES // 1024} KiB limit for "
                          "a suanli YAML file")
    try:
        _check_events(file, text, loader_cls)
        loader = loader_cls(text)
        try:
            node = loader.get_single_node()
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{file}{line}: YAML syntax error: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{file}: YAML error: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{file}: nested too deeply (more than {MAX_DEPTH} levels)") from None
    src = Source(file, data)
    if node is not None:
        _index(node, (), src.lines, src.raw, src)
    if stamp is not None:
        _keep(file, stamp, src)
    return src


# A parsed file is kept in the user's cache (suanli/cache.py) under its path, keyed by its size, modification
# time and inode: every command reads the cluster configs, and importing PyYAML and parsing costs more than
# the rest of a `suanli status`. As with Python's own .pyc files, a file rewritten with the same size within
# the same nanosecond tick would be missed; a file modified in the last two seconds is not kept (it may still
# be being written). Files whose data marshal cannot hold (YAML timestamps) are parsed every time.
_CACHE_FORMAT = 1


def _stamp(file: str) -> tuple[int, int, int, int] | None:
    try:
        st = os.stat(file)
    except OSError:
        return None  # _read names the problem
    if time.time_ns() - st.st_mtime_ns < 2_000_000_000:
        return None
    return (st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev)


def _cache_path(file: str) -> str:
    from suanli.cache import cache_dir
    from suanli.version import __version__

    name = os.path.abspath(file).replace("%", "%25").replace("/", "%2F")
    return os.path.join(cache_dir("yaml"), f"{name}.{__version__}.{sys.implementation.cache_tag}")


def _cached(file: str, stamp: tuple[int, int, int, int] | None) -> Source | None:
    if stamp is None:
        return None
    import marshal

    from suanli import cache

    blob = cache.read(_cache_path(file), binary=True)
    if not isinstance(blob, bytes):
        return None
    try:
        fmt, key, data, lines, raw = marshal.loads(blob)
    except (EOFError, ValueError, TypeError):
        return None
    if fmt != _CACHE_FORMAT or key != stamp:
        return None
    return Source(file, data, lines, raw)


def _keep(file: str, stamp: tuple[int, int, int, int] | None, src: Source) -> None:
    if stamp is None:
        return
    import marshal

    from suanli import cache

    try:
        blob = marshal.dumps((_CACHE_FORMAT, stamp, src.data, src.lines, src.raw))
    except ValueError:  # a value marshal does not know (a YAML timestamp): parse this file every time
        return
    cache.write(_cache_path(file), blob)


def _read(file: str) -> str:
    try:
        with open(file, "rb") as fh:
            raw = fh.read(MAX_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read: {exc.strerror or exc}") from None
    if len(raw) > MAX_BYTES:
        raise ConfigError(f"{file}: larger than the {MAX_BYTES // 1024} KiB limit for a suanli YAML file")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{file}: not UTF-8 text; save the file as UTF-8 YAML") from None


def _check_events(file: str, text: str, loader_cls: Any) -> None:
    """Refuse anchors, aliases and deep nesting from the event stream, before anything is built (the
    parser is iterative, so even a megabyte of ``[`` costs nothing here)."""
    import yaml

    loader = loader_cls(text)
    depth = 0
    try:
        while True:
            event = loader.get_event()
            if event is None or isinstance(event, yaml.StreamEndEvent):
                return
            line = event.start_mark.line + 1
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
                name = event.anchor
                raise ConfigError(f"{file}:{line}: YAML anchors and aliases (&{name}, *{name}) are not allowed in "
                                  "suanli files; write the value out")
            if isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                if depth > MAX_DEPTH:
                    raise ConfigError(f"{file}:{line}: nested more than {MAX_DEPTH} levels deep; flatten it")
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
    finally:
        loader.dispose()


def _index(node: Any, path: Path_, lines: dict[Path_, int], raw: dict[Path_, str], src: Source) -> None:
    import yaml

    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.ScalarNode):
        raw[path] = node.value
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for k, v in node.value:
            key = k.value if isinstance(k, yaml.ScalarNode) else str(k.start_mark.line)
            line = k.start_mark.line + 1
            if key in seen:
                where = f"{src.file}:{line}"
                at = f"{dotted(path + (key,))}: " if path or key else ""
                raise ConfigError(f"{where}: {at}duplicate key {key!r} (first on line {seen[key]}); keep one")
            seen[key] = line
            lines[path + (key,)] = line
            _index(v, path + (key,), lines, raw, src)
            lines[path + (key,)] = line
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _index(item, path + (i,), lines, raw, src)
