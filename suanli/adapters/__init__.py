"""Hardware adapters, looked up by name; third parties register more in the ``suanli.adapters`` entry-point group."""

from __future__ import annotations

import functools
import importlib

from suanli.adapters.base import Adapter
from suanli.errors import UsageError

BUILTIN = {
    "cpu": "suanli.adapters.cpu:CpuAdapter",
    "kunpeng": "suanli.adapters.kunpeng:KunpengAdapter",
    "phytium": "suanli.adapters.phytium:PhytiumAdapter",
    "ascend": "suanli.adapters.ascend:AscendAdapter",
    "nvidia": "suanli.adapters.nvidia:NvidiaAdapter",
    "hygon": "suanli.adapters.hygon:HygonAdapter",
}
ENTRY_POINT_GROUP = "suanli.adapters"


def _entry_points() -> dict[str, str]:
    from suanli.discovery import entry_points

    return entry_points(ENTRY_POINT_GROUP)


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


def accelerator_adapters() -> list[Adapter]:
    """The registered adapters that offer an accelerator kind, in ``adapter_names()`` order."""
    return [a for a in map(get_adapter, adapter_names()) if a.accelerator_kind]


@functools.lru_cache(maxsize=1)
def accelerator_aliases() -> dict[str, str]:
    """Every name a user may write for an accelerator kind -> the kind: each accelerator adapter's kind, name,
    GRES name and declared aliases (the first adapter to claim a name keeps it). Read once per process: the
    registered adapters do not change while it runs."""
    out: dict[str, str] = {}
    for a in accelerator_adapters():
        kind = a.accelerator_kind
        assert kind is not None
        for alias in (kind, a.name, a.gres_name, *a.kind_aliases):
            if alias:
                out.setdefault(alias.lower(), kind)
    return out


def accelerator_kinds() -> list[str]:
    """The accelerator kinds of the registered adapters (``ascend``, ``nvidia``, ``dcu`` ...)."""
    return list(dict.fromkeys(accelerator_aliases().values()))


__all__ = ["Adapter", "accelerator_adapters", "accelerator_aliases", "accelerator_kinds", "adapter_names",
           "get_adapter", "is_adapter"]
