"""Job scripts from template files with one quoting function, so no user value is ever run by a shell."""

from __future__ import annotations

import re
import shlex
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

_PLACEHOLDER = re.compile(r"@@([A-Z][A-Z0-9_]*)@@")


def quote(value: str) -> str:
    """The one escaping function: a single shell word that expands to exactly ``value``."""
    return shlex.quote(value)


@dataclass(frozen=True)
class EnvRef:
    """An argv element that the script expands from a variable suanli itself sets (never a user value)."""

    name: str

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Z_][A-Z0-9_]*", self.name):
            raise ValueError(f"bad variable name {self.name!r}")


def join_argv(argv: Iterable[str | EnvRef]) -> str:
    return " ".join(f'"${{{a.name}}}"' if isinstance(a, EnvRef) else quote(a) for a in argv)


def export_lines(env: Mapping[str, str]) -> str:
    """``export K='v'`` lines; names were validated by the spec, values are quoted."""
    return "\n".join(f"export {k}={quote(v)}" for k, v in env.items())


def load_template(package: str, name: str) -> str:
    """A template shipped with ``package``: read from its folder when it has one (importing
    importlib.resources costs a CLI submit more than reading the file), through importlib.resources otherwise
    (a zipped install)."""
    file = getattr(sys.modules.get(package), "__file__", None)
    if file:
        path = Path(file).parent / name
        if path.is_file():
            return path.read_text(encoding="utf-8")
    from importlib import resources

    return resources.files(package).joinpath(name).read_text(encoding="utf-8")


def render(template: str, values: Mapping[str, str]) -> str:
    """Fill ``@@NAME@@`` placeholders; every one must be given (values are already quoted by the caller)."""
    missing = set(_PLACEHOLDER.findall(template)) - set(values)
    if missing:
        raise KeyError(f"template placeholders without a value: {', '.join(sorted(missing))}")
    out = _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)
    left = re.findall(r"@@\w+@@", template)
    if any(not _PLACEHOLDER.fullmatch(p) for p in left):
        raise KeyError(f"malformed template placeholders: {', '.join(sorted(set(left)))}")
    return out
