"""suanli (算力): one job API for Slurm partitions, Ray clusters and this machine.

``suanli.submit(fn, *args)`` runs a function, ``suanli.map(fn, items)`` an array of calls, and a
:class:`JobSpec` any Command, Training or MPI workload; ``suanli.get_job(id)`` re-attaches later.
Attributes load lazily so the CLI and in-job helpers start fast.
"""

from __future__ import annotations

import os

from suanli.version import __version__ as __version__

TYPE_CHECKING = False  # not `from typing import ...`: the CLI's start-up needs no typing at run time
if TYPE_CHECKING:  # explicit re-exports for type checkers; at run time __getattr__ loads them
    from collections.abc import Callable, Iterable, Mapping
    from typing import Any

    from suanli.api import Client
    from suanli.compute.dask import Sweep as Sweep
    from suanli.errors import BackendError as BackendError
    from suanli.errors import ConfigError as ConfigError
    from suanli.errors import JobFailedError as JobFailedError
    from suanli.errors import QuotaExceeded as QuotaExceeded
    from suanli.errors import SuanliError as SuanliError
    from suanli.errors import UsageError as UsageError
    from suanli.jobs import MPI as MPI
    from suanli.jobs import Array as Array
    from suanli.jobs import Command as Command
    from suanli.jobs import Component as Component
    from suanli.jobs import Dependency as Dependency
    from suanli.jobs import Function as Function
    from suanli.jobs import Job as Job
    from suanli.jobs import JobArray as JobArray
    from suanli.jobs import JobInfo as JobInfo
    from suanli.jobs import JobSpec as JobSpec
    from suanli.jobs import JobState as JobState
    from suanli.jobs import Map as Map
    from suanli.jobs import Resources as Resources
    from suanli.jobs import Training as Training

_JOB_NAMES = {
    "Array", "Command", "Dependency", "Function", "Job", "JobArray", "JobInfo", "JobSpec", "JobState", "Map",
    "MPI", "Resources", "Training", "Component",
}
_ERROR_NAMES = {"SuanliError", "UsageError", "ConfigError", "QuotaExceeded", "BackendError", "JobFailedError"}

__all__ = sorted(_JOB_NAMES | _ERROR_NAMES | {"submit", "map", "get_job", "cluster", "Cluster", "client", "Sweep"})


def __getattr__(name: str) -> Any:
    if name in _JOB_NAMES:
        import suanli.jobs as jobs

        return getattr(jobs, name)
    if name in _ERROR_NAMES:
        import suanli.errors as errors

        return getattr(errors, name)
    if name == "Sweep":
        from suanli.compute.dask import Sweep

        return Sweep
    raise AttributeError(f"module 'suanli' has no attribute {name!r}")


_clients: dict[tuple[str | None, str | None, str | None], Client] = {}


def client(config: str | None = None) -> Client:
    """The shared Client for the current $SUANLI_HOME and config search path."""
    from suanli.api import Client

    key = (config, os.environ.get("SUANLI_HOME"), os.environ.get("SUANLI_CONFIG"))
    if key not in _clients:
        _clients[key] = Client(config)
    return _clients[key]


def submit(target: Any, *args: Any, kwargs: Mapping[str, Any] | None = None, cluster: str | None = None,
           partition: str | None = None, account: str | None = None, resources: Resources | None = None,
           name: str | None = None, env: Mapping[str, str] | None = None, **options: Any) -> Job | JobArray:
    """Submit a callable (its positional args follow, its keyword args in ``kwargs``), an argv list, a
    workload or a JobSpec. Options: time, nodes, tasks_per_node, cpus_per_task, memory, accelerators, qos,
    constraint, setup, workdir, array, after, requeue."""
    return client().submit(target, *args, kwargs=kwargs, cluster=cluster, partition=partition, account=account,
                           resources=resources, name=name, env=env, **options)


def map(fn: Callable[[Any], Any], items: Iterable[Any], *, cluster: str | None = None, engine: str | None = None,
        **options: Any) -> JobArray | Sweep:
    """One array job with one task per item (``.results()`` in input order); ``engine="dask"`` runs the items
    on dask-jobqueue pilot workers of a Slurm cluster and returns a finished ``Sweep``."""
    c = client()
    if engine == "dask":
        return c.map(fn, items, cluster=cluster, engine="dask", **options)
    if engine in (None, "array"):
        return c.map(fn, items, cluster=cluster, engine="array", **options)
    from suanli.errors import UsageError

    raise UsageError(f"map: engine {engine!r} is not available; valid engines: array, dask")


def get_job(job_id: str) -> Job | JobArray:
    """Re-attach to a job submitted earlier, from any process (``JOB`` or ``JOB_7`` for an array task)."""
    return client().get_job(job_id)


class Cluster:
    """``submit`` and ``map`` bound to one cluster."""

    def __init__(self, name: str) -> None:
        client().configs.cluster(name)  # an unknown name fails here, listing the valid ones
        self.name = name

    def __repr__(self) -> str:
        return f"Cluster({self.name!r})"

    def submit(self, target: Any, *args: Any, **kw: Any) -> Job | JobArray:
        kw.setdefault("cluster", self.name)
        return submit(target, *args, **kw)

    def map(self, fn: Callable[[Any], Any], items: Iterable[Any], **kw: Any) -> JobArray | Sweep:
        kw.setdefault("cluster", self.name)
        return map(fn, items, **kw)


def cluster(name: str) -> Cluster:
    return Cluster(name)
