"""A snapshot of one job (or one array task) as the registry knows it; its JSON form is a stable contract."""

from __future__ import annotations

from dataclasses import dataclass

from suanli.jobs.state import JobState

#: Field order of ``suanli status --json``; scripts depend on these names.
STATUS_FIELDS = (
    "id",
    "name",
    "cluster",
    "backend",
    "native_id",
    "array_task",
    "state",
    "reason",
    "restarts",
    "partition",
    "account",
    "user",
    "submitted_at",
    "started_at",
    "ended_at",
    "exit_code",
)


def iso(ts: float | None) -> str | None:
    """ISO 8601 UTC with a Z, whole seconds: what every field ``*_at`` holds. Built from integer arithmetic and
    a per-day cache (``status --all --json`` formats three per job: strftime was most of its time)."""
    if ts is None:
        return None
    day, rem = divmod(int(ts // 1), 86400)
    date = _DAYS.get(day)
    if date is None:
        import time

        date = _DAYS[day] = time.strftime("%Y-%m-%d", time.gmtime(day * 86400))
    hour, rem = divmod(rem, 3600)
    return f"{date}T{hour:02d}:{rem // 60:02d}:{rem % 60:02d}Z"


_DAYS: dict[int, str] = {}


@dataclass(frozen=True)
class JobInfo:
    id: str
    name: str
    cluster: str
    backend: str
    native_id: str | None
    array_task: int | None
    state: JobState
    reason: str | None
    restarts: int
    partition: str | None
    account: str | None
    user: str | None
    submitted_at: float | None
    started_at: float | None
    ended_at: float | None
    exit_code: int | None

    @property
    def task_id(self) -> str:
        """``JOB`` or ``JOB_7`` for array task 7: the form the CLI accepts."""
        return self.id if self.array_task is None else f"{self.id}_{self.array_task}"

    @property
    def elapsed(self) -> float | None:
        if self.started_at is None:
            return None
        import time

        end = self.ended_at if self.ended_at is not None else time.time()
        return max(0.0, end - self.started_at)

    def to_json(self) -> dict[str, object]:
        return {
            "id": self.id,
            "name": self.name,
            "cluster": self.cluster,
            "backend": self.backend,
            "native_id": self.native_id,
            "array_task": self.array_task,
            "state": self.state.value,
            "reason": self.reason,
            "restarts": self.restarts,
            "partition": self.partition,
            "account": self.account,
            "user": self.user,
            "submitted_at": iso(self.submitted_at),
            "started_at": iso(self.started_at),
            "ended_at": iso(self.ended_at),
            "exit_code": self.exit_code,
        }
