"""Job handles: what ``suanli.submit`` returns. They talk to a controller so this layer imports no backend."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Literal, Protocol, overload

from suanli.jobs.record import JobInfo
from suanli.jobs.state import JobState, combine_states

Stream = Literal["stdout", "stderr"]


class JobController(Protocol):
    """What a handle needs from the layer that owns the registry and the backends."""

    def infos(self, job_id: str) -> list[JobInfo]:
        """Fresh snapshots of every task of the job (one for a plain job)."""

    def wait_for(self, keys: Sequence[tuple[str, int | None]], timeout: float | None) -> list[JobInfo]:
        """Block until every (job, task) is terminal; TimeoutError when ``timeout`` passes first."""

    def read_log(self, job_id: str, task: int | None, stream: Stream) -> str:
        """The whole log file so far."""

    def follow_log(self, job_id: str, task: int | None, stream: Stream) -> Iterator[str]:
        """Lines as the job writes them, until it ends."""

    def read_result(self, job_id: str, task: int | None) -> Any:
        """The Function's return value, or raise its remote exception."""

    def cancel(self, job_id: str, task: int | None) -> None:
        """Ask the backend to stop the job (or one array task)."""


class Job:
    """A handle on one job or one array task; cheap to create, safe to recreate with ``suanli.get_job``."""

    def __init__(self, job_id: str, controller: JobController, task: int | None = None) -> None:
        self.job_id = job_id
        self.task = task
        self._ctl = controller

    @property
    def id(self) -> str:
        """``JOB`` or ``JOB_7`` for array task 7."""
        return self.job_id if self.task is None else f"{self.job_id}_{self.task}"

    def __repr__(self) -> str:
        return f"Job({self.id!r})"

    def info(self) -> JobInfo:
        """A fresh snapshot; for an array job the combined state of its tasks."""
        infos = self._ctl.infos(self.job_id)
        if self.task is not None:
            for i in infos:
                if i.array_task == self.task:
                    return i
            raise KeyError(f"job {self.job_id} has no array task {self.task}")
        if len(infos) == 1:
            return infos[0]
        return _combine(infos)

    def status(self) -> JobState:
        return self.info().state

    def done(self) -> bool:
        return self.status().is_terminal

    def wait(self, timeout: float | None = None) -> JobState:
        """Block until the job ends; return its final state. TimeoutError if ``timeout`` seconds pass first."""
        infos = self._ctl.wait_for([(self.job_id, self.task)], timeout)
        return infos[0].state if len(infos) == 1 else combine_states(i.state for i in infos)

    def logs(self, stream: Stream = "stdout") -> str:
        return self._ctl.read_log(self.job_id, self.task, stream)

    def stream_logs(self, stream: Stream = "stdout") -> Iterator[str]:
        """Lines of the log as they are written, until the job ends."""
        return self._ctl.follow_log(self.job_id, self.task, stream)

    def result(self, timeout: float | None = None) -> Any:
        """The Function's return value; re-raises its exception with the remote traceback as the cause."""
        self._ctl.wait_for([(self.job_id, self.task)], timeout)
        return self._ctl.read_result(self.job_id, self.task)

    def cancel(self) -> None:
        self._ctl.cancel(self.job_id, self.task)


class JobArray(Sequence[Job]):
    """The tasks of one array job, in input order (task i is item i of a ``suanli.map``)."""

    def __init__(self, job_id: str, controller: JobController, tasks: Sequence[int]) -> None:
        self.id = job_id
        self._ctl = controller
        self._jobs = [Job(job_id, controller, t) for t in tasks]

    def __repr__(self) -> str:
        return f"JobArray({self.id!r}, tasks={len(self._jobs)})"

    @overload
    def __getitem__(self, i: int) -> Job: ...

    @overload
    def __getitem__(self, i: slice) -> Sequence[Job]: ...

    def __getitem__(self, i: int | slice) -> Job | Sequence[Job]:
        return self._jobs[i]

    def __len__(self) -> int:
        return len(self._jobs)

    def infos(self) -> list[JobInfo]:
        return self._ctl.infos(self.id)

    def status(self) -> JobState:
        return combine_states(i.state for i in self.infos())

    def wait(self, timeout: float | None = None) -> JobState:
        infos = self._ctl.wait_for([(self.id, None)], timeout)
        return combine_states(i.state for i in infos)

    def results(self, timeout: float | None = None, return_exceptions: bool = False) -> list[Any]:
        """Every task's result in input order; the first failure raises unless ``return_exceptions``."""
        self.wait(timeout)
        out: list[Any] = []
        for job in self._jobs:
            try:
                out.append(self._ctl.read_result(self.id, job.task))
            except Exception as exc:
                if not return_exceptions:
                    raise
                out.append(exc)
        return out

    def cancel(self) -> None:
        self._ctl.cancel(self.id, None)


def _combine(infos: list[JobInfo]) -> JobInfo:
    """One row for a whole array: combined state, earliest start, latest end, worst exit code."""
    first = infos[0]
    state = combine_states(i.state for i in infos)
    starts = [i.started_at for i in infos if i.started_at is not None]
    done = all(i.state.is_terminal for i in infos)
    ends = [i.ended_at for i in infos if i.ended_at is not None]
    codes = [i.exit_code for i in infos if i.exit_code is not None]
    nonzero = [c for c in codes if c != 0]
    reasons = [i.reason for i in infos if i.reason]
    return JobInfo(
        id=first.id,
        name=first.name,
        cluster=first.cluster,
        backend=first.backend,
        native_id=first.native_id,
        array_task=None,
        state=state,
        reason=reasons[0] if reasons else None,
        restarts=sum(i.restarts for i in infos),
        partition=first.partition,
        account=first.account,
        user=first.user,
        submitted_at=first.submitted_at,
        started_at=min(starts) if starts else None,
        ended_at=max(ends) if done and ends else None,
        exit_code=(nonzero[0] if nonzero else (0 if codes and done else None)),
    )


combine_infos = _combine
