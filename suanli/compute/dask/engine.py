"""``suanli.map(fn, items, engine="dask")``: many small tasks on a few dask workers that run as Slurm pilot jobs.

dask-jobqueue's ``SLURMCluster`` submits each worker as an ordinary Slurm job (a pilot); the Dask scheduler
runs in this process and hands the tasks to whichever worker is free. Every pilot job is recorded in the suanli
registry (backend ``slurm``, kind ``dask-worker``) like any other Slurm job, so ``suanli status`` and
accounting see it. The sweep returns as soon as the last result is in hand: the pilots are scancelled (they end
CANCELLED), and their final states and usage are recorded by a daemon thread or by the next ``suanli status``.

Scheduler options never become ``#SBATCH`` lines: dask-jobqueue's header is dropped and every option goes on
the sbatch command line (run without a shell), the same rule the Slurm backend follows. dask, distributed and
dask-jobqueue are imported inside the functions, never at module level.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from suanli.compute.base import Submission
from suanli.compute.dask.pilots import (
    PILOT_OPTIONS,
    Pilots,
    _job_class,
    pilot_job_options,
    resource_options,
    subprocess_scancel,
)
from suanli.compute.dask.request import (
    DEFAULT_MEMORY_PER_CORE_MB,
    ENGINE_OPTIONS,
    RESOURCE_OPTIONS,
    SPEC_OPTIONS,
    STALL_TIMEOUT_S,
    MapClient,
    PilotRequest,
    nodes_are_local,
    resolve,
    with_pilot_memory,
)
from suanli.errors import BackendError, JobFailedError, RemoteTraceback, UsageError
from suanli.jobs.state import JobState, combine_states

__all__ = ["DEFAULT_MAX_WORKERS", "DEFAULT_MEMORY_PER_CORE_MB", "ENGINE_OPTIONS", "INSTALL_HINT", "PILOT_OPTIONS",
           "RESOURCE_OPTIONS", "RESULT_TIMEOUT_S", "SETTLE_AFTER_S", "SPEC_OPTIONS", "STALL_TIMEOUT_S", "ItemExit",
           "MapClient", "PilotRequest", "Pilots", "Sweep", "_job_class", "nodes_are_local", "pilot_job_options",
           "resolve", "resource_options", "run_map", "subprocess_scancel", "with_pilot_memory"]

INSTALL_HINT = "pip install 'suanli[dask]'"
#: Pilot workers when the caller gives no ``max_concurrent``.
DEFAULT_MAX_WORKERS = 4
RESULT_TIMEOUT_S = 300.0  # to fetch one finished item's value from its worker
#: How long a background thread keeps refreshing the cancelled pilots' rows after the sweep has returned.
SETTLE_AFTER_S = 60.0


# ---------------------------------------------------------------- the result
@dataclass
class Sweep:
    """The outcome of a dask sweep, in input order; close to :class:`suanli.JobArray` so code can switch engines.

    ``values[i]`` is item i's return value (None where it failed), ``errors[i]`` the remote traceback of a
    failed item, ``exceptions[i]`` the exception itself, ``pilot_jobs`` the suanli ids of the Slurm pilot jobs
    (``suanli status ID`` shows them).
    """

    id: str
    cluster: str
    values: list[Any]
    errors: dict[int, RemoteTraceback] = field(default_factory=dict)
    exceptions: dict[int, BaseException] = field(default_factory=dict)
    pilot_jobs: list[str] = field(default_factory=list)
    wall_s: float = 0.0

    def __len__(self) -> int:
        return len(self.values)

    def __repr__(self) -> str:
        return (f"Sweep({self.id!r}, items={len(self.values)}, failed={len(self.errors)}, "
                f"pilot_jobs={len(self.pilot_jobs)})")

    @property
    def failed(self) -> list[int]:
        """Indices of the items that raised, ascending."""
        return sorted(self.errors)

    def done(self) -> bool:
        """Always True: ``map`` with engine dask returns once the sweep is over."""
        return True

    def states(self) -> list[JobState]:
        """COMPLETED or FAILED per item, in input order."""
        return [JobState.FAILED if i in self.errors else JobState.COMPLETED for i in range(len(self.values))]

    def status(self) -> JobState:
        return combine_states(self.states()) if self.values else JobState.COMPLETED

    def wait(self, timeout: float | None = None) -> JobState:
        return self.status()

    def results(self, timeout: float | None = None, return_exceptions: bool = False) -> list[Any]:
        """Every item's result in input order. If any item failed, raise JobFailedError naming the failed
        indices, with the first failure's remote traceback as the cause (unless ``return_exceptions``, which
        puts each exception in its item's place instead)."""
        if return_exceptions:
            return [self.exceptions.get(i, v) if i in self.errors else v for i, v in enumerate(self.values)]
        if not self.errors:
            return list(self.values)
        failed = self.failed
        first = failed[0]
        exc = self.exceptions.get(first)
        what = f"{type(exc).__name__}: {exc}" if exc is not None else "an error"
        shown = ", ".join(map(str, failed[:20])) + (", ..." if len(failed) > 20 else "")
        raise JobFailedError(f"map {self.id}: {len(failed)} of {len(self.values)} items failed (indices {shown}); "
                             f"item {first} raised {what}") from self.errors[first]


# ---------------------------------------------------------------- the sweep
def run_map(client: MapClient, fn: Callable[[Any], Any], items: Iterable[Any], *, cluster: str | None = None,
            max_workers: int | None = None,
            admit: Callable[[Submission, int], Callable[[], None]] | None = None, **options: Any) -> Sweep:
    """Run ``fn(item)`` for every item on dask-jobqueue workers started as Slurm pilot jobs.

    The pilots (partition, account, cpus, memory, time from the cluster config and the options) scale with the
    work up to ``max_workers`` (default: 4, or fewer items). Returns a :class:`Sweep` in input order; an item
    that raised is reported in ``Sweep.errors`` without losing the others. The pilot jobs are cancelled on the
    way out, also when the caller is interrupted (Ctrl-C); their final states land in the registry (and their
    usage in the ledger) from a daemon thread or the next ``suanli status``.
    """
    items = list(items)
    if not callable(fn):
        raise UsageError(f"map: {fn!r} is not callable")
    req = resolve(client, fn, cluster, dict(options))
    if max_workers is not None and (isinstance(max_workers, bool) or not isinstance(max_workers, int)
                                    or max_workers < 1):
        raise UsageError(f"map: max_concurrent {max_workers!r} must be a whole number of at least 1")
    # dask-jobqueue 0.9's runner module replaces the SIGINT handler with sys.exit() when it is imported, which
    # would turn Ctrl-C into a silent exit with status 0: keep the caller's handler.
    in_main = threading.current_thread() is threading.main_thread()
    sigint = signal.getsignal(signal.SIGINT) if in_main else None
    try:
        import dask_jobqueue.slurm
        import distributed
    except ImportError as missing:
        raise UsageError(f"map: engine 'dask' needs dask-jobqueue and distributed ({missing.name} is missing); "
                         f"{INSTALL_HINT}") from None
    finally:
        if in_main and sigint is not None:
            if getattr(sigint, "__module__", "") == "dask_jobqueue.runner":  # imported before this call
                sigint = signal.default_int_handler
            signal.signal(signal.SIGINT, sigint)
    dist: Any = distributed
    slurm_cluster: Any = dask_jobqueue.slurm.SLURMCluster
    sweep_id = req.sub.job_id
    fn_name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or type(fn).__name__
    sweep = Sweep(id=sweep_id, cluster=req.sub.cluster.name, values=[None] * len(items))
    if not items:
        return sweep
    workers = max_workers or min(DEFAULT_MAX_WORKERS, len(items))
    # Quotas: the caller reserves the worst case of `workers` pilots (QuotaExceeded stops it here) and gets a
    # release for the end of the sweep; the pilots' real usage is booked as each of them ends.
    release = admit(req.sub, workers) if admit is not None else None
    pilots = Pilots(client, req, sweep_id, fn_name)
    # SIGTERM (a batch system or `kill` ending the caller) cleans up like Ctrl-C.
    sigterm = signal.getsignal(signal.SIGTERM) if in_main else None
    if in_main:
        signal.signal(signal.SIGTERM, _term_as_interrupt)
    start = time.monotonic()
    interrupted = True
    dcluster: Any = None
    dclient: Any = None
    adaptive: Any = None
    try:
        dcluster = slurm_cluster(job_cls=_job_class(pilots), scheduler_options={"dashboard_address": None, **(
                                     {"interface": req.scheduler_interface} if req.scheduler_interface else {})},
                                 name=f"suanli-{sweep_id}", silence_logs="error", **pilot_job_options(req))
        dclient = dist.Client(dcluster, set_as_default=False)
        adaptive = dcluster.adapt(minimum_jobs=0, maximum_jobs=workers)
        futures = dclient.map(_Guard(fn), items, pure=False)
        index = {f.key: i for i, f in enumerate(futures)}
        stalled: list[str] = []
        watchdog = threading.Thread(target=_watch, args=(pilots, dclient, futures, req.stall_timeout, stalled),
                                    daemon=True, name=f"suanli-dask-watch-{sweep_id}")
        watchdog.start()
        bar = _progress(len(items), fn_name)
        try:
            for batch in dist.as_completed(futures, loop=dclient.loop).batches():
                _collect(dclient, batch, index, sweep, stalled)
                bar(len(batch))
        finally:
            bar(0)
        # Results are in hand: release them on the workers before they are cancelled.
        dclient.cancel(futures)
        if stalled:
            error = BackendError(stalled[0])
            error.sweep = sweep  # type: ignore[attr-defined]  # what finished before the stall is not lost
            raise error
        interrupted = False
    finally:
        try:
            _shutdown(pilots, dcluster, dclient, adaptive, interrupted)
        finally:
            if in_main:
                signal.signal(signal.SIGTERM, sigterm if sigterm is not None else signal.SIG_DFL)
            if release is not None:
                release()
        sweep.pilot_jobs = list(pilots.ids)
        sweep.wall_s = time.monotonic() - start
    return sweep


def _collect(dclient: Any, batch: list[Any], index: dict[Any, int], sweep: Sweep, stalled: list[str]) -> None:
    """Put the items of a batch of finished futures in their places. Their values come in one gather (one
    fetch per item would fall behind a quick sweep and keep the caller waiting after the last item); if that
    fails, each value is fetched on its own, so one that cannot come back (it does not pickle) is that item's
    error and the others still arrive."""
    done: list[Any] = []
    for fut in batch:
        i = index[fut.key]
        if fut.status == "error":
            exc = fut.exception()
            sweep.exceptions[i] = exc
            sweep.errors[i] = RemoteTraceback("".join(traceback.format_exception(type(exc), exc, fut.traceback())))
        elif fut.status == "cancelled":
            exc = RuntimeError("cancelled")
            sweep.exceptions[i] = exc
            sweep.errors[i] = RemoteTraceback(f"{type(exc).__name__}: {stalled[0] if stalled else exc}\n")
        else:
            done.append(fut)
    if not done:
        return
    try:
        values = dclient.gather(done)
    except Exception:  # noqa: BLE001 - one item's value did not come back: fetch them one by one
        values = None
    for n, fut in enumerate(done):
        i = index[fut.key]
        if values is not None:
            sweep.values[i] = values[n]
            continue
        try:
            sweep.values[i] = fut.result(timeout=RESULT_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - the item's own failure to come back
            sweep.exceptions[i] = exc
            sweep.errors[i] = RemoteTraceback(f"{type(exc).__name__}: {exc}\n")


def _term_as_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt("SIGTERM")


class ItemExit(Exception):
    """An item raised SystemExit or KeyboardInterrupt: reported as that item's error instead of killing the
    worker, which would fail the innocent items queued on it too."""


class _Guard:
    def __init__(self, fn: Callable[[Any], Any]) -> None:
        self.fn = fn
        self.__name__ = getattr(fn, "__name__", "fn")  # dask names the tasks after the function

    def __call__(self, item: Any) -> Any:
        try:
            return self.fn(item)
        except Exception:
            raise
        except BaseException as exc:
            raise ItemExit(f"{type(exc).__name__}({', '.join(map(repr, exc.args))})") from None


def _progress(total: int, what: str) -> Callable[[int], None]:
    """``bar(n)`` advances by n; ``bar(0)`` closes. A tqdm bar only when stderr is a terminal."""
    if not sys.stderr.isatty():
        return lambda n: None
    try:
        from tqdm import tqdm
    except ImportError:
        return lambda n: None
    bar = tqdm(total=total, desc=f"map {what}", unit="task", file=sys.stderr, leave=False)

    def step(n: int) -> None:
        if n:
            bar.update(n)
        else:
            bar.close()

    return step


def _watch(pilots: Pilots, dclient: Any, futures: list[Any], stall_timeout: float, out: list[str]) -> None:
    """Give up when no worker is connected and every pilot job has ended for ``stall_timeout`` seconds (the
    pilots cannot start or cannot reach the scheduler): cancel the remaining tasks so the sweep returns."""
    since: float | None = None
    while not all(f.done() for f in futures) and not pilots.closing.is_set():
        time.sleep(2.0)
        try:
            connected = len(dclient.scheduler_info().get("workers", {}))
            rows = pilots.rows()
            open_rows = [r for r in rows if not r.done]
            if open_rows:
                pilots.client.refresh(open_rows)
                rows = pilots.rows()
        except Exception:  # noqa: BLE001 - the main loop reports real failures
            continue
        if not connected and pilots.refused and not any(not r.done for r in rows):
            # sbatch refused a pilot and none is queued or running: dask-jobqueue will not retry it.
            out.append(f"map {pilots.sweep_id}: sbatch refused the dask pilot job: {pilots.refused[-1]}")
            dclient.cancel([f for f in futures if not f.done()])
            return
        if connected or not rows or any(not r.done for r in rows):
            since = None
            continue
        since = since or time.monotonic()
        if time.monotonic() - since >= stall_timeout:
            tail = pilots.stderr_tail()
            out.append(f"map {pilots.sweep_id}: every dask pilot job ended and no worker is connected "
                       f"({len(rows)} pilot job(s): {', '.join(r.id for r in rows)})"
                       + (f"; stderr ends: {tail}" if tail else ""))
            dclient.cancel([f for f in futures if not f.done()])
            return


def _shutdown(pilots: Pilots, dcluster: Any, dclient: Any, adaptive: Any, interrupted: bool) -> None:
    """Stop scaling, scancel every pilot job, and close dask. The results are in hand already, so nothing waits
    for the workers to retire: the pilots end CANCELLED and their rows are refreshed (and their usage booked)
    by a daemon thread while the caller goes on, or by the next ``suanli status``. After Ctrl-C the process is
    about to end, so the final states are awaited here instead (bounded). A second Ctrl-C while this runs is
    held back until it is done, so no pilot job is left queued."""
    in_main = threading.current_thread() is threading.main_thread()
    old = signal.getsignal(signal.SIGINT) if in_main else None
    got: list[int] = []
    if in_main:
        signal.signal(signal.SIGINT, lambda s, f: got.append(s))
    try:
        pilots.closing.set()
        if adaptive is not None:
            try:
                adaptive.stop()
            except Exception:  # noqa: BLE001
                pass
        pilots.cancel_all()  # one scancel for every pilot, before dask's own one-by-one close
        for closer in (dclient, dcluster):
            if closer is not None:
                try:
                    closer.close(timeout=10)
                except Exception:  # noqa: BLE001 - the pilots are cancelled already
                    pass
        pilots.cancel_all()  # a pilot whose sbatch was in flight during the first pass
        if interrupted:
            pilots.settle(5.0)
        else:
            pilots.settle_later(SETTLE_AFTER_S)
    finally:
        if in_main:
            signal.signal(signal.SIGINT, old if old is not None else signal.default_int_handler)
    if got and not interrupted:
        raise KeyboardInterrupt


__all__ = ["INSTALL_HINT", "Sweep", "nodes_are_local", "resolve", "run_map"]
