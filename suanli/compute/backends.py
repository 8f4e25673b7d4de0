"""Backends by name, imported only when used; third parties add theirs in the ``suanli.backends`` entry points."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from suanli.errors import BackendError, SuanliError, UsageError

if TYPE_CHECKING:
    from suanli.compute.base import Backend, UsageSource
    from suanli.compute.config import ClusterConfig

BUILTIN = {
    "local": "suanli.compute.local:LocalBackend",
    "slurm": "suanli.compute.slurm:SlurmBackend",
    "ray": "suanli.compute.ray:RayBackend",
    "psij": "suanli.compute.psij:PsijBackend",
}
#: Backends whose module ships in a later release; named so configs that use them validate.
PLANNED: tuple[str, ...] = ()
ENTRY_POINT_GROUP = "suanli.backends"


def _entry_points() -> dict[str, str]:
    from suanli.discovery import entry_points

    return entry_points(ENTRY_POINT_GROUP)


def backend_names() -> list[str]:
    names = list(BUILTIN) + [p for p in PLANNED if p not in BUILTIN]
    return names + sorted(set(_entry_points()) - set(names))


def backend_class(name: str) -> type[Backend]:
    from suanli.compute.base import Backend

    target = BUILTIN.get(name) or _entry_points().get(name)
    if target is None:
        if name in PLANNED:
            raise BackendError(f"backend {name!r} is not available in this version of suanli")
        raise UsageError(f"backend: unknown backend {name!r}; valid backends: {', '.join(backend_names())}")
    module, _, attr = target.partition(":")
    try:
        cls = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        # A broken or half-removed plug-in: say which package to fix instead of a traceback.
        raise BackendError(f"backend {name!r}: cannot load {target}: {exc}; reinstall the package that "
                           f"registers it in {ENTRY_POINT_GROUP!r}") from None
    if not (isinstance(cls, type) and issubclass(cls, Backend)):
        raise BackendError(f"backend {name!r}: {target} is not a suanli.compute.base.Backend")
    return cls


def usage_source(name: str) -> UsageSource:
    """How the backend ``name`` books ended jobs (``Backend.usage_source``). A backend that can no longer be
    loaded (its plug-in was uninstalled after the job ran) books from the registry, which needs nothing of it."""
    try:
        return backend_class(name).usage_source
    except SuanliError:
        return "registry"


def get_backend(cluster: ClusterConfig) -> Backend:
    return backend_class(cluster.backend)(cluster)
