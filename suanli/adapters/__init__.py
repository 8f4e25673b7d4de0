"""Hardware adapters, looked up by name; third parties register more in the ``suanli.adapters`` entry-point group."""

from __future__ import annotations

import importlib

from suanli.adapters.base import Adapter
from suanli.errors import UsageError

BUILTIN = {
    "cpu": "suanli.adapters.cpu:CpuAdapter",
    "kunpeng": "suanli.adapters.kunpeng:KunpengAdapter",
    "phytium": "suanli.adapters.phytium:PhytiumAdapter",
    "ascend": "suanli.adapters.ascend:AscendAdapter",
    "nvidia": "suanli.adapters.nvidia:NvidiaAdapter",
}
ENTRY_POINT_GROUP = "suanli.adapters"


def _entry_points() -> dict[str, str]:
    from importlib.metadata import entry_points

    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}


def adapter_names() -> list[str]:
    """Every adapter name: built-in ones first (entry points are only read here and on a miss)."""
    return list(BUILTIN) + sorted(set(_entry_points()) - set(BUILTIN))


def is_adapter(name: str) -> bool:
    return name in BUILTIN or name in _entry_points()


def get_adapter(name: str) -> Adapter:
    target = BUILTIN.get(name) or _entry_points().get(name)
    if target is None:
        raise UsageError(f"adapter: unknown adapter {name!r}; valid adapters: {', '.join(adapter_names())}")
    module, _, attr = target.partition(":")
    cls = getattr(importlib.import_module(module), attr)
    adapter = cls()
    if not isinstance(adapter, Adapter):
        raise UsageError(f"adapter: {target} is not a suanli.adapters.Adapter")
    return adapter


__all__ = ["Adapter", "adapter_names", "get_adapter", "is_adapter"]
