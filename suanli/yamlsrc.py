"""YAML with line numbers: every validation error can say ``file:line: key.path: ...``."""

from __future__ import annotations

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


def load_yaml(file: str, text: str | None = None) -> Source:
    """Parse one YAML file; a syntax error names the file and line."""
    import yaml

    loader_cls = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    if text is None:
        try:
            with open(file, encoding="utf-8") as fh:
                text = fh.read()
        except OSError as exc:
            raise ConfigError(f"{file}: cannot read: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{file}: not UTF-8 text; save the file as UTF-8 YAML") from None
    loader = loader_cls(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{file}{line}: YAML syntax error: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{file}: YAML error: {exc}") from None
    finally:
        loader.dispose()
    src = Source(file, data)
    if node is not None:
        _index(node, (), src.lines, src.raw)
    return src


def _index(node: Any, path: Path_, lines: dict[Path_, int], raw: dict[Path_, str]) -> None:
    import yaml

    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.ScalarNode):
        raw[path] = node.value
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            key = k.value if isinstance(k, yaml.ScalarNode) else str(k.start_mark.line)
            lines[path + (key,)] = k.start_mark.line + 1
            _index(v, path + (key,), lines, raw)
            lines[path + (key,)] = k.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _index(item, path + (i,), lines, raw)
