"""The top of the stack: turns specs into submissions, keeps the registry current, and backs Job handles.

Both the Python API (``suanli.submit``) and the CLI go through :class:`Client`, so validation, defaults and
the registry behave the same from either.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, overload

from suanli.adapters import get_adapter
from suanli.compute.backends import get_backend
from suanli.compute.base import Backend, DependencyRef, JobRef, Plan, Submission, current_user
from suanli.compute.config import (
    AUTO,
    DEFAULT_MAX_ARRAY_SIZE,
    HARD_MAX_ARRAY_SIZE,
    ClusterConfig,
    Configs,
    PartitionConfig,
    load_configs,
)
from suanli.compute.fit import check_capabilities
from suanli.compute.fit import check_fits as check_fits
from suanli.compute.logs import follow_files as follow_files
from suanli.compute.store import JobRow, Store
from suanli.compute.submitter import new_id as new_id
from suanli.compute.submitter import submitter, test_pause
from suanli.errors import JobFailedError, RemoteTraceback, UsageError
from suanli.jobs.build import RESOURCE_OPTIONS as RESOURCE_OPTIONS
from suanli.jobs.build import SPEC_OPTIONS as SPEC_OPTIONS
from suanli.jobs.build import build_spec as build_spec
from suanli.jobs.handle import Job, JobArray, JobController, Stream
from suanli.jobs.record import JobInfo
from suanli.jobs.spec import Array, Dependency, JobSpec, Map
from suanli.refresh import StatusRefresh

log = logging.getLogger("suanli")

if TYPE_CHECKING:
    from suanli.accounts import Accounts
    from suanli.compute.dask.engine import Sweep
    from suanli.routing import Routed


class Client(StatusRefresh, JobController):
    """Submission, status and handles over one registry (``$SUANLI_HOME``) and one config search path."""

    def __init__(self, config: str | None = None, store: Store | None = None) -> None:
        self.config_path = config
        self.store = store or Store()
        self._configs: Configs | None = None
        self._backends: dict[tuple[str, str], Backend] = {}
        self._accounts: Accounts | None = None

    @property
    def accounts(self) -> Accounts:
        """Quotas, the usage ledger and sync (created on first use: most status calls never need it)."""
        if self._accounts is None:
            from suanli.accounts import Accounts

            self._accounts = Accounts(self)
        return self._accounts

    def close(self) -> None:
        if self._accounts is not None:
            self._accounts.close()
        self.store.close()

    # ------------------------------------------------------------ configuration
    @property
    def configs(self) -> Configs:
        if self._configs is None:
            self._configs = load_configs(self.config_path)
        return self._configs

    def backend(self, cluster: str, backend: str) -> Backend:
        key = (cluster, backend)
        if key not in self._backends:
            if backend == "local":
                # Status, logs and cancel of local jobs need no config: the job folder has everything.
                from suanli.compute.local.backend import LocalBackend

                cfg = ClusterConfig(name=cluster, backend="local", partitions=(PartitionConfig("local"),))
                self._backends[key] = LocalBackend(cfg)
            else:
                cfg = self.configs.cluster(cluster)
                self._backends[key] = get_backend(cfg)
        return self._backends[key]

    # ------------------------------------------------------------ submission
    def prepare(self, spec: JobSpec, cluster: str | None = None) -> tuple[Submission, Backend]:
        """Resolve cluster, partition, adapter, defaults and dependencies; check the request fits."""
        cfg = self.configs.cluster(spec.cluster or cluster)
        part = cfg.partition(spec.partition)
        adapter = get_adapter(part.adapter)
        res = spec.resources
        where = f"partition {part.name!r} of cluster {cfg.name!r}"
        if res.accelerators_per_node and res.accelerator_kind is None and adapter.accelerator_kind:
            res = dataclasses.replace(res, accelerator_kind=adapter.accelerator_kind)
        adapter.check(res, where)
        if res.time_limit is None and (part.default_time or part.max_time):
            res = dataclasses.replace(res, time=part.default_time or part.max_time)
        res = res.for_workload(spec.workload)  # ranks are tasks: fit check, estimate, sbatch and booking
        check_fits(res, part, where)
        backend = self._submit_backend(cfg)
        check_capabilities(spec, backend.capabilities, f"cluster {cfg.name!r} (backend {cfg.backend})")
        if spec.array is not None:
            self._check_array_size(len(spec.array), cfg, backend)
        deps = tuple(self._dependency(d, cfg.name) for d in spec.dependencies)
        spec = dataclasses.replace(
            spec, resources=res, cluster=cfg.name, partition=part.name,
            account=spec.account or cfg.default_account, qos=spec.qos or part.qos,
            constraint=spec.constraint or part.constraint,
        )
        job_id = new_id()
        sub = Submission(job_id=job_id, spec=spec, cluster=cfg, partition=part, adapter=adapter,
                         job_dir=self.store.root / "jobs" / job_id, user=current_user(), dependencies=deps)
        return sub, backend

    def array_cap(self, cfg: ClusterConfig, backend: Backend) -> int:
        """The most tasks of one array on this cluster: ``max_array_size`` in its config, else the backend's
        default (local: 100,000; Slurm: MaxArraySize x the split limit)."""
        if cfg.max_array_size is not None:
            return cfg.max_array_size
        default = backend.array_cap()
        return min(DEFAULT_MAX_ARRAY_SIZE if default is None else default, HARD_MAX_ARRAY_SIZE)

    def _check_array_size(self, n: int, cfg: ClusterConfig, backend: Backend) -> None:
        cap = self.array_cap(cfg, backend)
        if n > cap:
            raise UsageError(f"array: {n} tasks is more than cluster {cfg.name!r} allows ({cap}); submit fewer, "
                             "larger tasks, or raise max_array_size in the cluster's config")

    def _submit_backend(self, cfg: ClusterConfig) -> Backend:
        """A backend built from the full cluster config (status-only backends may be built without one)."""
        key = (cfg.name, "submit")
        if key not in self._backends:
            self._backends[key] = get_backend(cfg)
        return self._backends[key]

    def _dependency(self, dep: Dependency, cluster: str) -> DependencyRef:
        row, task = self.store.resolve(dep.job_id)
        if task is not None:
            raise UsageError(f"dependency: {dep.job_id!r} is an array task; depend on the whole job {row.id}")
        if row.cluster != cluster:
            raise UsageError(f"dependency: job {row.id} runs on cluster {row.cluster!r}, this job on {cluster!r}; "
                             "dependencies must stay on one cluster")
        return DependencyRef(kind=dep.kind, job_id=row.id, native_id=row.native_id, job_dir=row.job_dir)

    def plan(self, spec: JobSpec, cluster: str | None = None) -> tuple[Plan, Submission]:
        """The plan a submission would run; with ``cluster="auto"`` the routed one, its rows in ``plan.routing``."""
        sub, backend, plan = self._prepare_plan(spec, cluster)
        return plan, sub

    def route(self, spec: JobSpec, cluster: str | None = None) -> Routed:
        """Where ``--cluster auto`` would send the job, and every candidate it weighed (see ``routing.py``)."""
        from suanli.routing import route

        return route(self, spec, cluster)

    def _prepare_plan(self, spec: JobSpec, cluster: str | None) -> tuple[Submission, Backend, Plan]:
        if AUTO in (spec.cluster or cluster, spec.partition):
            routed = self.route(spec, cluster)
            routed.plan.routing = routed.to_json()
            return routed.sub, routed.backend, routed.plan
        sub, backend = self.prepare(spec, cluster)
        return sub, backend, backend.plan(sub)

    def submit_spec(self, spec: JobSpec, cluster: str | None = None) -> Job | JobArray:
        """Plan, record, submit. A refused submission leaves nothing in the registry."""
        from suanli.jobs.state import JobState

        sub, backend, plan = self._prepare_plan(spec, cluster)
        s = sub.spec
        row = JobRow(
            id=sub.job_id, name=s.display_name, cluster=sub.cluster.name, backend=sub.cluster.backend,
            native_id=None, kind=s.workload.kind, partition=s.partition, account=s.account, user=sub.user,
            submitted_at=time.time(), job_dir=plan.job_dir,
            meta={"resources": s.resources.to_dict(), "array": s.array.compact() if s.array else None,
                  "dependencies": [f"{d.kind}:{d.job_id}" for d in sub.dependencies],
                  "max_restarts": s.max_restarts, "qos": s.qos, "constraint": s.constraint,
                  "adapter": sub.adapter.name, "layout": plan.details.get("layout", {}),
                  "submitter": submitter(), **({"routing": plan.routing} if plan.routing else {})},
            done=False,
        )
        # Reservations of submissions whose submitter died are given back before this one is weighed.
        self.reconcile_unsubmitted(self.store.unsubmitted())
        # The quota check reserves the worst case before anything reaches the scheduler (exit 3 if it does
        # not fit); a refused submission gives the reservation back.
        checks = (self.accounts.admit(sub, self.accounts.estimate(sub), native_id=plan.native_id)
                  if self.quota_may_apply(sub) else [])
        try:
            self.store.insert(row, sub.tasks, JobState.PENDING, "Submitting")
        except BaseException:
            if checks:
                self.accounts.abandoned(sub.job_id, checks)
            raise
        test_pause("after-insert")
        try:
            native = backend.submit(plan)
        except BaseException:
            self.store.delete(sub.job_id)
            if checks:
                self.accounts.abandoned(sub.job_id, checks)
            raise
        test_pause("after-submit")
        self.store.set_native_id(sub.job_id, native)
        if checks:
            self.accounts.submitted(sub.job_id, native, checks, reserved_as=plan.native_id)
        if s.array is not None:
            return JobArray(sub.job_id, self, list(s.array.indices))
        return Job(sub.job_id, self)

    def quota_may_apply(self, sub: Submission) -> bool:
        """Admission's own first checks (``Accounts.admit``), made without loading the accounting package: a
        job without an account has no quota, and nobody has one while no ledger is configured and the SQLite
        one (``Ledger``'s ``$SUANLI_HOME/ledger.db``) was never written."""
        if not sub.spec.account:
            return False
        return self.configs.settings.ledger is not None or (self.store.root / "ledger.db").exists()

    def submit(self, target: Any, *args: Any, kwargs: Mapping[str, Any] | None = None,
               cluster: str | None = None, **options: Any) -> Job | JobArray:
        return self.submit_spec(build_spec(target, args, kwargs, **options), cluster)

    @overload
    def map(self, fn: Callable[[Any], Any], items: Iterable[Any], *, cluster: str | None = None,
            engine: Literal["dask"], max_concurrent: int | None = None, **options: Any) -> Sweep: ...

    @overload
    def map(self, fn: Callable[[Any], Any], items: Iterable[Any], *, cluster: str | None = None,
            engine: Literal["array"] | None = None, max_concurrent: int | None = None,
            **options: Any) -> JobArray: ...

    def map(self, fn: Callable[[Any], Any], items: Iterable[Any], *, cluster: str | None = None,
            engine: str | None = None, max_concurrent: int | None = None, **options: Any) -> JobArray | Sweep:
        """One array job of ``fn(item)`` (engine ``array``, the default), or a dask-jobqueue sweep on a Slurm
        cluster (engine ``dask``: pilot workers run many small tasks; it returns when the sweep is done). With
        engine ``dask``, ``max_concurrent`` is the most pilot workers (default min(4, number of items))."""
        if engine == "dask":
            from suanli.compute.dask import run_map

            def admit(sub: Submission, workers: int) -> Callable[[], None]:
                """Quotas hold for sweeps too: the worst case of every pilot at once, released at the end."""
                checks = self.accounts.admit(sub, self.accounts.estimate(sub, tasks=workers))
                return lambda: self.accounts.abandoned(sub.job_id, checks)

            return run_map(self, fn, items, cluster=cluster, max_workers=max_concurrent, admit=admit, **options)
        if engine not in (None, "array"):
            raise UsageError(f"map: engine {engine!r} is not available; valid engines: array, dask")
        workload = Map(fn, items)
        n = len(workload.items)
        array = Array(tuple(range(n)), max_concurrent)
        spec = build_spec(JobSpec(workload=workload, array=array), **options)
        handle = self.submit_spec(spec, cluster)
        assert isinstance(handle, JobArray)
        return handle

    def get_job(self, job_id: str) -> Job | JobArray:
        row, task = self.store.resolve(job_id)
        if task is None and row.meta.get("array"):
            tasks = [t.task for t in self.store.tasks([row.id])[row.id] if t.task is not None]
            return JobArray(row.id, self, tasks)
        return Job(row.id, self, task)

    def _row(self, job_id: str) -> JobRow:
        row = self.store.get(job_id)
        if row is None:
            raise UsageError(f"job: no job {job_id!r} in the registry {self.store.path}")
        return row

    # ------------------------------------------------------------ JobController
    def infos(self, job_id: str) -> list[JobInfo]:
        return self.list_infos([self._row(job_id)], strict=True)

    def wait_for(self, keys: Sequence[tuple[str, int | None]], timeout: float | None) -> list[JobInfo]:
        deadline = None if timeout is None else time.monotonic() + timeout
        rows = [self._row(j) for j in dict.fromkeys(k[0] for k in keys)]
        wanted = {k for k in keys}
        interval = min(self.backend(rows[0].cluster, rows[0].backend).poll_initial_s, 1.0) if rows else 0.1
        ceiling = self._poll_ceiling(rows)
        while True:
            infos = self.list_infos(rows, strict=True)
            picked = [i for i in infos if (i.id, i.array_task) in wanted or (i.id, None) in wanted]
            if all(i.state.is_terminal for i in picked):
                return picked
            rows = [r for r in self.store.query(ids=[r.id for r in rows])]
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"job(s) {', '.join(sorted({k[0] for k in keys}))} still running after "
                                   f"{timeout} s")
            pause = interval if deadline is None else min(interval, max(0.0, deadline - time.monotonic()))
            time.sleep(pause)
            interval = min(interval * 1.5, ceiling)

    def _poll_ceiling(self, rows: Sequence[JobRow]) -> float:
        ceilings = [self.backend(r.cluster, r.backend).poll_max_s for r in rows]
        ceiling = max(ceilings) if ceilings else 1.0
        if any(r.backend != "local" for r in rows):
            ceiling = min(ceiling, self.configs.settings.status_poll_max_s)
        return ceiling

    def log_paths(self, job_id: str, task: int | None) -> tuple[Path, Path]:
        row = self._row(job_id)
        return self.backend(row.cluster, row.backend).log_paths(self._ref(row), task)

    def read_log(self, job_id: str, task: int | None, stream: Stream) -> str:
        out, err = self.log_paths(job_id, task)
        path = out if stream == "stdout" else err
        try:
            return path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def follow_log(self, job_id: str, task: int | None, stream: Stream) -> Iterator[str]:
        out, err = self.log_paths(job_id, task)
        path = out if stream == "stdout" else err
        return (line for _, line in follow_files([path], lambda: self._task_done(job_id, task)))

    def _task_done(self, job_id: str, task: int | None) -> bool:
        infos = self.infos(job_id)
        return all(i.state.is_terminal for i in infos if task is None or i.array_task == task)

    def read_result(self, job_id: str, task: int | None) -> Any:
        import cloudpickle

        row = self._row(job_id)
        if row.kind not in ("function", "map"):
            raise UsageError(f"job {job_id} runs a {row.kind}, which has no result; use its logs or exit code")
        path = self.backend(row.cluster, row.backend).result_path(self._ref(row), task)
        try:
            with open(path, "rb") as fh:
                outcome = cloudpickle.load(fh)
        except FileNotFoundError:
            infos = [i for i in self.infos(job_id) if i.array_task == task]
            state = infos[0].state.value if infos else "UNKNOWN"
            tail = self.read_log(job_id, task, "stderr").strip().splitlines()[-5:]
            detail = ("; stderr ends: " + " | ".join(tail)) if tail else ""
            tid = job_id if task is None else f"{job_id}_{task}"
            raise JobFailedError(f"job {tid} ended {state} without a result{detail}") from None
        if outcome[0] == "ok":
            return outcome[1]
        _, exc, tb, text = outcome
        tid = job_id if task is None else f"{job_id}_{task} (task {task})"
        if isinstance(exc, Exception):
            raise exc from RemoteTraceback(tb)
        # SystemExit or KeyboardInterrupt raised in the job must not stop the submitter: it is that task's failure.
        raise JobFailedError(f"job {tid} raised {text}") from RemoteTraceback(tb)

    def cancel(self, job_id: str, task: int | None) -> None:
        self.cancel_many([(self._row(job_id), task)])

    def cancel_many(self, targets: Sequence[tuple[JobRow, int | None]]) -> None:
        """Cancel several jobs with one backend call per cluster. A job left "Submitting" by a submitter that
        died is first looked for on its backend: found, it is cancelled there; not found, it ends CANCELLED."""
        from suanli.jobs.state import JobState

        stuck = [row for row, _ in targets if not row.done and row.native_id is None]
        changed = self.reconcile_unsubmitted(stuck, lost=JobState.CANCELLED)
        if changed:
            again = {r.id: r for r in self.store.query(ids=changed)}
            targets = [(again.get(row.id, row), task) for row, task in targets]
        groups: dict[tuple[str, str], list[JobRef]] = {}
        for row, task in targets:
            if not row.done:
                groups.setdefault((row.cluster, row.backend), []).append(
                    self._ref(row, () if task is None else (task,)))
        for (cluster, backend_name), refs in groups.items():
            self.backend(cluster, backend_name).cancel(refs)

