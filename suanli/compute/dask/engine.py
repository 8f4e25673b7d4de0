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

import dataclasses
import os
import re
import secrets
import shlex
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from suanli.compute import script as sh
from suanli.compute.base import Backend, Submission
from suanli.compute.config import ClusterConfig, Configs
from suanli.compute.payload import suanli_pythonpath
from suanli.compute.sbatch import resource_options
from suanli.compute.store import JobRow, Store
from suanli.errors import BackendError, JobFailedError, RemoteTraceback, UsageError
from suanli.jobs.resources import Resources
from suanli.jobs.spec import Function, JobSpec
from suanli.jobs.state import JobState, combine_states

INSTALL_HINT = "pip install 'suanli[dask]'"
#: Pilot workers when the caller gives no ``max_concurrent``.
DEFAULT_MAX_WORKERS = 4
#: Options of ``map`` that apply to a dask pilot job (the names ``Client.map``/``build_spec`` use).
RESOURCE_OPTIONS = {"cpus_per_task": "cpus_per_task", "memory": "memory", "mem": "memory",
                    "accelerators": "accelerators", "accelerator_kind": "accelerator_kind", "time": "time"}
SPEC_OPTIONS = ("partition", "account", "qos", "constraint", "setup", "workdir", "env", "name")
#: Options of the dask engine itself.
ENGINE_OPTIONS = ("interface", "stall_timeout")
#: With no worker connected and every pilot job ended this long, the sweep gives up (the pilots cannot start).
RESULT_TIMEOUT_S = 300.0  # to fetch one finished item's value from its worker
STALL_TIMEOUT_S = 60.0
#: Memory per core of a pilot that asks for none, where the partition's config does not say its memory.
DEFAULT_MEMORY_PER_CORE_MB = 1024
#: How long a background thread keeps refreshing the cancelled pilots' rows after the sweep has returned.
SETTLE_AFTER_S = 60.0
_ID_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"
_ADDR = re.compile(r"NodeAddr=(\S+)", re.I)
_NODE = re.compile(r"^\s*NodeName=(\S+)", re.I | re.M)


class MapClient(Protocol):
    """What the engine needs from ``suanli.api.Client`` (this layer may not import it)."""

    store: Store

    @property
    def configs(self) -> Configs: ...

    def prepare(self, spec: JobSpec, cluster: str | None = None) -> tuple[Submission, Backend]: ...

    def refresh(self, rows: Sequence[JobRow]) -> None: ...

    def cancel_many(self, targets: Sequence[tuple[JobRow, int | None]]) -> None: ...


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


# ---------------------------------------------------------------- options
@dataclass(frozen=True)
class PilotRequest:
    """One pilot job's resolved request: what ``Client.prepare`` made of the options."""

    sub: Submission
    interface: str | None
    stall_timeout: float


def _new_id() -> str:
    first = secrets.choice(_ID_ALPHABET[:23])
    return first + "".join(secrets.choice(_ID_ALPHABET) for _ in range(7))


def resolve(client: MapClient, fn: Callable[[Any], Any], cluster: str | None, options: dict[str, Any]) -> PilotRequest:
    """Check the cluster and the options; resolve partition, account, defaults and limits like a submission."""
    cfg = client.configs.cluster(cluster)
    if cfg.backend != "slurm":
        raise UsageError(f"map: engine 'dask' needs a slurm cluster, but cluster {cfg.name!r} uses the "
                         f"{cfg.backend!r} backend; use engine 'array' there, or a slurm cluster")
    res_opts: dict[str, Any] = {}
    spec_opts: dict[str, Any] = {}
    interface: str | None = None
    stall = STALL_TIMEOUT_S
    for key, value in options.items():
        if key in RESOURCE_OPTIONS:
            res_opts[RESOURCE_OPTIONS[key]] = value
        elif key in SPEC_OPTIONS:
            spec_opts[key] = value
        elif key == "interface":
            interface = None if value is None else str(value)
        elif key == "stall_timeout":
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise UsageError(f"map: stall_timeout {value!r} is not a positive number of seconds")
            stall = float(value)
        elif key in ("nodes", "tasks_per_node", "ntasks_per_node", "array", "after", "dependencies", "requeue",
                     "max_restarts"):
            raise UsageError(f"map: option {key!r} does not apply to engine 'dask' (each pilot worker is one task "
                             "on one node; dask retries lost tasks itself)")
        else:
            valid = sorted({*RESOURCE_OPTIONS, *SPEC_OPTIONS, *ENGINE_OPTIONS})
            raise UsageError(f"map: unknown option {key!r} for engine 'dask'; valid options: {', '.join(valid)}")
    res = Resources(**res_opts)  # the same one-line UsageErrors as submit's options
    setup = spec_opts.pop("setup", ())
    if setup is not None and not isinstance(setup, str | list | tuple):
        raise UsageError(f"map: setup {setup!r} is not a shell line or a list of them")
    setup = (setup,) if isinstance(setup, str) else tuple(setup or ())
    workdir = spec_opts.get("workdir")
    if workdir is not None and not os.path.isdir(str(workdir)):
        raise UsageError(f"map: workdir {workdir!r} is not a folder here; the pilot jobs would run elsewhere")
    if interface is not None:
        import psutil

        if interface not in psutil.net_if_addrs():
            raise UsageError(f"map: interface {interface!r} is not a network interface of this machine; have: "
                             f"{', '.join(sorted(psutil.net_if_addrs()))}")
    env = dict(spec_opts.pop("env", None) or {})
    spec = JobSpec(workload=Function(fn), resources=res, cluster=cfg.name, setup=setup, env=env,
                   **{k: v for k, v in spec_opts.items() if v is not None})
    sub, _backend = client.prepare(spec, cfg.name)
    sub = with_pilot_memory(sub)
    for what, value in (("account", sub.spec.account), ("qos", sub.spec.qos), ("constraint", sub.spec.constraint)):
        if value is not None and (not value or any(c.isspace() or not c.isprintable() for c in value)):
            raise UsageError(f"{what}: {value!r} must be one word without spaces or control characters")
    if interface is None and nodes_are_local(cfg):
        interface = "lo"
    return PilotRequest(sub=sub, interface=interface, stall_timeout=stall)


def with_pilot_memory(sub: Submission) -> Submission:
    """The pilot's memory, fixed once: the request, or the core's share of the partition's memory per node
    (``DEFAULT_MEMORY_PER_CORE_MB`` a core where the config does not say). The same figure is the worker's
    ``--memory-limit`` and sbatch's ``--mem``, as dask-jobqueue does, so dask spills before Slurm kills."""
    res = sub.spec.resources
    if res.memory_mb:
        return sub
    part = sub.partition
    if part.memory_per_node_mb and part.cpus_per_node:
        mb = max(1, part.memory_per_node_mb * res.cpus_per_task // part.cpus_per_node)
    else:
        mb = DEFAULT_MEMORY_PER_CORE_MB * res.cpus_per_task
    spec = dataclasses.replace(sub.spec, resources=dataclasses.replace(res, memory=mb))
    return dataclasses.replace(sub, spec=spec)


def nodes_are_local(cfg: ClusterConfig) -> bool:
    """True when every node of the cluster's slurm.conf is this machine, so the scheduler can stay on
    loopback (nothing listens on the network). Unknown (no readable slurm.conf): False."""
    conf = cfg.slurm.get("conf") or os.environ.get("SLURM_CONF") or "/etc/slurm/slurm.conf"
    try:
        text = Path(str(conf)).read_text()
    except OSError:
        return False
    local = {"localhost", "127.0.0.1", "::1", socket.gethostname(), socket.gethostname().split(".")[0],
             socket.getfqdn()}
    lines = [ln.split("#", 1)[0] for ln in text.splitlines()]
    nodes = [ln for ln in lines if re.match(r"^\s*NodeName=", ln, re.I)
             and not re.match(r"^\s*NodeName=DEFAULT\b", ln, re.I)]
    if not nodes:
        return False
    for ln in nodes:
        addr = _ADDR.search(ln)
        name = _NODE.search(ln)
        where = addr.group(1) if addr else (name.group(1) if name else "")
        if where not in local and not where.startswith("127."):
            return False
    return True


# ---------------------------------------------------------------- pilot jobs
class Pilots:
    """The pilot jobs of one sweep: recorded in the registry before sbatch, cancelled on the way out."""

    def __init__(self, client: MapClient, req: PilotRequest, sweep_id: str, fn_name: str) -> None:
        self.client = client
        self.req = req
        self.sweep_id = sweep_id
        self.name = req.sub.spec.name or f"dask-worker:{fn_name}"
        self.ids: list[str] = []
        self.refused: list[str] = []  # sbatch's own words for each pilot it refused
        self.lock = threading.Lock()
        self.closing = threading.Event()
        self.cancelled: set[str] = set()
        self.settler: threading.Thread | None = None
        conf = req.sub.cluster.slurm.get("conf")
        self.env_prefix = ["env", f"SLURM_CONF={conf}"] if conf else []

    def job_dir(self, pilot_id: str) -> Path:
        return self.client.store.root / "jobs" / pilot_id

    def sbatch_argv(self, pilot_id: str) -> list[str]:
        """Every scheduler option on the command line, none in the script."""
        sub = self.req.sub
        res = sub.spec.resources
        d = self.job_dir(pilot_id)
        argv = [*self.env_prefix, "sbatch", "--parsable", f"--job-name=suanli-dask-{self.sweep_id}",
                f"--partition={sub.partition.name}", "--nodes=1", "--ntasks=1", f"--cpus-per-task={res.cpus_per_task}",
                "--no-requeue", f"--output={d}/job.out", f"--error={d}/job.err", *resource_options(sub)]
        return argv

    def cancel_argv(self) -> list[str]:
        return [*self.env_prefix, "scancel"]

    def prologue(self) -> list[str]:
        """Shell lines before the worker starts: exports (quoted) and the configured setup lines."""
        sub = self.req.sub
        spec = sub.spec
        env: dict[str, str] = {"SUANLI_CLUSTER": sub.cluster.name, "SUANLI_BACKEND": "slurm",
                               "SUANLI_ADAPTER": sub.adapter.name, "SUANLI_SWEEP_ID": self.sweep_id}
        # The workers unpickle the caller's functions: they need the caller's import path.
        own_prefixes = tuple({sys.prefix, sys.base_prefix, sys.exec_prefix})
        paths = [p for p in sys.path if p and os.path.isdir(p) and not p.startswith(own_prefixes)
                 and "dask-scratch-space" not in p]
        current = os.environ.get("PYTHONPATH", "").split(os.pathsep)
        own = suanli_pythonpath().get("PYTHONPATH", "").split(os.pathsep)
        env["PYTHONPATH"] = os.pathsep.join(p for p in dict.fromkeys([*own, *paths, *current]) if p)
        env.update(sub.adapter.environment(spec.resources))
        env.update(spec.env)
        lines = [sh.export_lines(env), f"cd {sh.quote(os.path.abspath(spec.workdir or os.getcwd()))} || exit 1"]
        lines += [*sub.adapter.setup_lines(), *sub.cluster.setup, *sub.partition.setup, *spec.setup]
        return lines

    def record(self, pilot_id: str, script: str) -> None:
        """Insert the pilot's row (PENDING, Submitting) and its folder before sbatch runs."""
        sub = self.req.sub
        s = sub.spec
        d = self.job_dir(pilot_id)
        d.mkdir(parents=True, exist_ok=True)
        (d / "job.sh").write_text(script)
        row = JobRow(
            id=pilot_id, name=self.name, cluster=sub.cluster.name, backend="slurm", native_id=None,
            kind="dask-worker", partition=sub.partition.name, account=s.account, user=sub.user,
            submitted_at=time.time(), job_dir=str(d),
            meta={"resources": s.resources.to_dict(), "array": None, "dependencies": [], "max_restarts": 0,
                  "qos": s.qos, "constraint": s.constraint, "adapter": sub.adapter.name, "layout": {},
                  "engine": "dask", "sweep": self.sweep_id},
            done=False,
        )
        self.client.store.insert(row, [None], JobState.PENDING, "Submitting")
        with self.lock:
            self.ids.append(pilot_id)

    def submitted(self, pilot_id: str, native: str) -> None:
        self.client.store.set_native_id(pilot_id, native)

    def failed(self, pilot_id: str, why: str) -> None:
        """sbatch refused: nothing refused stays recorded, but the watchdog learns why."""
        self.client.store.delete(pilot_id)
        with self.lock:
            if pilot_id in self.ids:
                self.ids.remove(pilot_id)
            self.refused.append(why)

    def rows(self) -> list[JobRow]:
        with self.lock:
            ids = list(self.ids)
        return self.client.store.query(ids=ids) if ids else []

    def cancel_all(self) -> None:
        """scancel every pilot that has a Slurm id, is not known to be over and was not cancelled yet (one
        call)."""
        rows = [r for r in self.rows() if r.native_id and not r.done and r.id not in self.cancelled]
        self.cancelled.update(r.id for r in rows)
        if rows:
            try:
                self.client.cancel_many([(r, None) for r in rows])
            except Exception:  # noqa: BLE001 - best effort on the way out; the fallback below retries once
                subprocess_scancel(self.cancel_argv(), [r.native_id for r in rows if r.native_id])

    def settle(self, timeout: float) -> None:
        """Refresh the pilots' rows until their final states are recorded, at most ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        delay = 0.3
        while True:
            try:
                rows = [r for r in self.rows() if not r.done]
                if not rows:
                    return
                self.client.refresh(rows)
            except Exception:  # noqa: BLE001 - (a closed registry, sacct down) a later `suanli status` does it
                return
            if time.monotonic() + delay > deadline:
                return
            time.sleep(delay)
            delay = min(delay * 1.5, 2.0)

    def settle_later(self, timeout: float) -> None:
        """``settle`` in a daemon thread, so the sweep returns at once and the interpreter can still exit
        (an exit cuts it short; the next ``suanli status`` or ``accounting sync`` finishes the job)."""
        if not any(not r.done for r in self.rows()):
            return
        self.settler = threading.Thread(target=self.settle, args=(timeout,), daemon=True,
                                        name=f"suanli-dask-settle-{self.sweep_id}")
        self.settler.start()

    def stderr_tail(self) -> str:
        for pid in reversed(self.rows()):
            try:
                lines = (Path(pid.job_dir) / "job.err").read_text(errors="replace").strip().splitlines()
            except OSError:
                continue
            if lines:
                return " | ".join(lines[-5:])
        return ""


def subprocess_scancel(prefix: list[str], ids: list[str]) -> None:
    import subprocess

    if ids:
        subprocess.run([*prefix, *ids], capture_output=True, timeout=60)


def _job_class(pilots: Pilots) -> type:
    """A SLURMJob that records itself in the suanli registry and keeps options off the ``#SBATCH`` header."""
    import importlib

    base: Any = importlib.import_module("dask_jobqueue.slurm").SLURMJob

    class SuanliSLURMJob(base):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.job_header = "# scheduler options are on the sbatch command line"
            self.suanli_id = _new_id()
            self.submit_command = shlex.join(pilots.sbatch_argv(self.suanli_id))
            self.cancel_command = shlex.join(pilots.cancel_argv())
            prologue = [*pilots.prologue(), f"export SUANLI_JOB_ID={sh.quote(self.suanli_id)}"]
            self._job_script_prologue = prologue

        async def _submit_job(self, script_filename: str) -> str:
            if pilots.closing.is_set():
                raise RuntimeError("the sweep is closing; no new pilot job")
            pilots.record(self.suanli_id, self.job_script())
            try:
                out: str = await super()._submit_job(script_filename)
                native = self._job_id_from_submit_output(out)
            except BaseException as exc:
                lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
                error_lines = [ln for ln in lines if "error" in ln.lower()]
                pilots.failed(self.suanli_id, (error_lines or lines or [type(exc).__name__])[-1])
                raise
            pilots.submitted(self.suanli_id, native)
            if pilots.closing.is_set():  # sbatch raced with the shutdown: no orphan
                subprocess_scancel(pilots.cancel_argv(), [native])
            return out

    return SuanliSLURMJob


def pilot_job_options(req: PilotRequest) -> dict[str, Any]:
    """What each pilot's ``SLURMJob`` is built with. ``memory`` is the worker's one ``--memory-limit`` (no
    second one in extra arguments); the same figure reaches sbatch as ``--mem`` (``Pilots.sbatch_argv``)."""
    res = req.sub.spec.resources
    return {"cores": res.cpus_per_task, "processes": 1, "memory": f"{res.memory_mb}MiB",
            "python": sh.quote(sys.executable), "interface": req.interface}


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
        dcluster = slurm_cluster(job_cls=_job_class(pilots), scheduler_options={"dashboard_address": None},
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
