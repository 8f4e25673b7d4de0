"""The dask-jobqueue engine for ``suanli.map(..., engine="dask")`` on a Slurm cluster.

Nothing heavy is imported here: ``run_map`` loads dask, distributed and dask-jobqueue only when it is called,
so the CLI's start-up path stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from suanli.compute.dask.engine import Sweep

__all__ = ["Sweep", "run_map"]


def run_map(client: Any, fn: Any, items: Any, *, cluster: str | None = None, max_workers: int | None = None,
            **options: Any) -> Sweep:
    """Run ``fn(item)`` for every item on dask workers started as Slurm pilot jobs; see ``engine.run_map``."""
    from suanli.compute.dask.engine import run_map as _run_map

    return _run_map(client, fn, items, cluster=cluster, max_workers=max_workers, **options)


def __getattr__(name: str) -> Any:
    if name == "Sweep":
        from suanli.compute.dask.engine import Sweep

        return Sweep
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
