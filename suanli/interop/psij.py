"""suanli as a PSI/J executor: ``JobExecutor.get_instance("suanli")`` submits through ``suanli.api.Client``.

The cluster is the executor config's ``cluster``, else the URL (``suanli:srun:CLUSTER`` in PSI/J's test syntax),
else a job's ``suanli.cluster`` custom attribute, else suanli's default cluster. A PSI/J job's ``native_id`` is
the suanli job id, so ``attach`` works for any job in the registry. Status comes from ONE poller thread per
executor: each poll is one ``Client.refresh`` for every job it follows (one scheduler call per backend), at an
interval that starts short and grows; the thread ends when it follows no job.

States, one to one: PENDING/REQUEUED -> QUEUED; RUNNING/COMPLETING/SUSPENDED -> ACTIVE; COMPLETED -> COMPLETED;
CANCELLED -> CANCELED; FAILED/TIMEOUT/OUT_OF_MEMORY/NODE_FAIL/PREEMPTED -> FAILED (message names suanli's state
and reason, exit_code is the job's); UNKNOWN changes nothing.
"""

from __future__ import annotations

import builtins
import threading
from typing import TYPE_CHECKING, Any

from psij import (
    InvalidJobException,
    Job,
    JobExecutor,
    JobExecutorConfig,
    JobStatus,
    SubmitException,
)
from psij import JobState as PsijState

from suanli.errors import SuanliError, UsageError
from suanli.interop.psij_spec import translate
from suanli.jobs.record import JobInfo
from suanli.jobs.state import JobState, combine_states

if TYPE_CHECKING:
    from suanli.api import Client

#: suanli state -> PSI/J state (UNKNOWN is absent: it leaves the job's state as it was).
STATES: dict[JobState, PsijState] = {
    JobState.PENDING: PsijState.QUEUED,
    JobState.REQUEUED: PsijState.QUEUED,
    JobState.RUNNING: PsijState.ACTIVE,
    JobState.COMPLETING: PsijState.ACTIVE,
    JobState.SUSPENDED: PsijState.ACTIVE,
    JobState.COMPLETED: PsijState.COMPLETED,
    JobState.CANCELLED: PsijState.CANCELED,
    JobState.FAILED: PsijState.FAILED,
    JobState.TIMEOUT: PsijState.FAILED,
    JobState.OUT_OF_MEMORY: PsijState.FAILED,
    JobState.NODE_FAIL: PsijState.FAILED,
    JobState.PREEMPTED: PsijState.FAILED,
}


class SuanliExecutorConfig(JobExecutorConfig):
    """Which suanli cluster (and cluster-config search path) jobs go to, and how often status is asked."""

    def __init__(self, cluster: str | None = None, suanli_config: str | None = None,
                 poll_initial_s: float = 0.1, poll_max_s: float = 1.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.cluster = cluster
        self.suanli_config = suanli_config
        self.poll_initial_s = poll_initial_s
        self.poll_max_s = poll_max_s


def psij_status(info: JobInfo | list[JobInfo]) -> JobStatus | None:
    """The PSI/J status of one suanli job (an array's tasks combined), None while suanli does not know it."""
    infos = info if isinstance(info, list) else [info]
    state = combine_states(i.state for i in infos)
    target = STATES.get(state)
    if target is None:
        return None
    codes = [i.exit_code for i in infos if i.exit_code is not None]
    code = next((c for c in codes if c != 0), codes[0] if codes else None)
    message = None
    if target in (PsijState.FAILED, PsijState.CANCELED):
        reason = next((i.reason for i in infos if i.reason), None)
        message = f"suanli state {state.value}" + (f" ({reason})" if reason else "")
    ended = max((i.ended_at for i in infos if i.ended_at), default=None)
    return JobStatus(target, time=ended if target.final else None, message=message,
                     exit_code=code if target.final else None, metadata={"suanli_state": state.value})


class _Poller:
    """One thread that follows every job of one executor: one ``Client.refresh`` per poll for all of them."""

    def __init__(self, executor: SuanliJobExecutor) -> None:
        self._executor = executor
        self._jobs: dict[str, list[Job]] = {}
        self._cv = threading.Condition()
        self._thread: threading.Thread | None = None
        self._interval = executor.poll_initial_s

    def add(self, job: Job, job_id: str) -> None:
        with self._cv:
            self._jobs.setdefault(job_id, []).append(job)
            self._interval = self._executor.poll_initial_s  # a new job: look soon
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="suanli-psij-poller", daemon=True)
                self._thread.start()
            self._cv.notify_all()

    @property
    def thread(self) -> threading.Thread | None:
        return self._thread

    def _run(self) -> None:
        while True:
            with self._cv:
                if not self._jobs:
                    self._thread = None
                    return
                ids = list(self._jobs)
            infos: dict[str, list[JobInfo]] | None
            try:
                infos = self._executor._infos(ids)
            except Exception as exc:  # a transient scheduler error must not kill status for every job
                import logging

                logging.getLogger("suanli").warning("psij: status not refreshed: %s", exc)
                infos = None
            done = [job_id for job_id, job_infos in (infos or {}).items() if self._deliver(job_id, job_infos)]
            if infos is not None:
                done += [job_id for job_id in ids if job_id not in infos and self._lost(job_id)]
            with self._cv:
                for job_id in done:
                    self._jobs.pop(job_id, None)
                if not self._jobs:
                    self._thread = None
                    return
                self._cv.wait(self._interval)
                self._interval = min(self._interval * 1.5, self._executor.poll_max_s)

    def _lost(self, job_id: str) -> bool:
        """A followed job no longer in the registry (deleted by hand): FAILED, never followed forever."""
        status = JobStatus(PsijState.FAILED, message=f"suanli job {job_id} is no longer in the registry")
        with self._cv:
            jobs = list(self._jobs.get(job_id, []))
        for job in jobs:
            self._executor._set_job_status(job, status)
        return True

    def _deliver(self, job_id: str, infos: list[JobInfo]) -> bool:
        """Hand the status to every PSI/J job on this id; True once it is final."""
        status = psij_status(infos)
        if status is None:
            return False
        with self._cv:
            jobs = list(self._jobs.get(job_id, []))
        started = any(i.started_at is not None for i in infos)
        for job in jobs:
            if status.state.final and started and job.status.state in (PsijState.NEW, PsijState.QUEUED):
                # It ran, between two polls: ACTIVE first (PSI/J fills it in only before COMPLETED).
                self._executor._set_job_status(job, JobStatus(PsijState.ACTIVE))
            self._executor._set_job_status(job, status)
        return status.state.final


class SuanliJobExecutor(JobExecutor):
    """A PSI/J JobExecutor backed by suanli's Client (any of its clusters: local, Slurm, Ray)."""

    def __init__(self, url: str | None = None, config: JobExecutorConfig | None = None) -> None:
        cfg = config if config is not None else SuanliExecutorConfig()
        super().__init__(url=url, config=cfg)
        self.cluster: str | None = getattr(cfg, "cluster", None) or _cluster_from_url(url)
        self.poll_initial_s = float(getattr(cfg, "poll_initial_s", 0.1))
        self.poll_max_s = float(getattr(cfg, "poll_max_s", 1.0))
        # Imported here: PSI/J loads every plugin's class when psij itself is imported (a psij backend inside
        # suanli, any workflow tool); the API and its backends load only when an executor is made.
        from suanli.api import Client

        self.client: Client = Client(getattr(cfg, "suanli_config", None))
        self._lock = threading.RLock()  # one Client: submit, cancel and the poller take turns
        self._poller = _Poller(self)

    # ------------------------------------------------------------ JobExecutor
    def submit(self, job: Job) -> None:
        """Translate, submit through suanli, record the suanli id as the native id, then QUEUED."""
        ps = self._check_job(job)
        try:
            with self._lock:
                cluster = _custom_cluster(ps) or self.cluster
                t = translate(ps, self.client.configs.cluster(cluster).backend, cluster)
                for path in t.truncate:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_bytes(b"")
                handle = self.client.submit_spec(t.spec, t.cluster)
        except InvalidJobException:
            job.executor = None
            raise
        except UsageError as exc:
            job.executor = None
            raise InvalidJobException(str(exc)) from None
        except (SuanliError, OSError) as exc:
            job.executor = None
            raise SubmitException(str(exc)) from None
        job._native_id = handle.id
        self._set_job_status(job, JobStatus(PsijState.QUEUED, metadata={"native_id": handle.id}))
        self._poller.add(job, handle.id)

    def cancel(self, job: Job) -> None:
        """suanli's cancel; the CANCELED state arrives through the poller like any other."""
        if job.native_id is None:
            raise SubmitException("cancel: the job was never submitted (it has no native id)")
        try:
            with self._lock:
                self.client.cancel(job.native_id, None)
        except SuanliError as exc:
            raise SubmitException(f"cancel: {exc}") from None

    def list(self) -> list[str]:
        """The suanli ids of every unfinished job in the registry (suanli's "squeue")."""
        with self._lock:
            return [r.id for r in self.client.store.query(only_open=True)]

    def attach(self, job: Job, native_id: str) -> None:
        """Follow any suanli job by its id (from any executor, the CLI or the Python API)."""
        if job.status.state != PsijState.NEW:
            raise InvalidJobException("attach: the job must be in the NEW state")
        with self._lock:
            if self.client.store.get(native_id) is None:
                raise InvalidJobException(f"attach: no job {native_id!r} in suanli's registry "
                                          f"{self.client.store.path}")
        job._native_id = native_id
        job.executor = self
        self._poller.add(job, native_id)

    # ------------------------------------------------------------ polling
    def _infos(self, ids: builtins.list[str]) -> dict[str, builtins.list[JobInfo]]:
        """One refresh for every job followed (one status call per backend), grouped by job id."""
        with self._lock:
            rows = self.client.store.query(ids=ids)
            infos = self.client.list_infos(rows)
        out: dict[str, builtins.list[JobInfo]] = {}
        for i in infos:
            out.setdefault(i.id, []).append(i)
        return out

    @property
    def poller_thread(self) -> threading.Thread | None:
        """The status thread while it runs (tests count threads through it)."""
        return self._poller.thread

    def close(self) -> None:
        with self._lock:
            self.client.close()


def _cluster_from_url(url: str | None) -> str | None:
    """``CLUSTER`` or ``suanli://CLUSTER``; empty means suanli's default cluster."""
    if not url:
        return None
    return url.split("://", 1)[1].strip("/") or None if "://" in url else url


def _custom_cluster(ps: Any) -> str | None:
    attrs = ps.attributes
    value = (attrs.custom_attributes or {}).get("suanli.cluster") if attrs is not None else None
    return None if value is None else str(value)
