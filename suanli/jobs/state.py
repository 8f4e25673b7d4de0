"""Job states: one enum for every backend, and the table type each backend maps through."""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping


class JobState(str, enum.Enum):
    """The lifecycle of a job, the same names on every backend.

    A ``str`` enum so that JSON output and the registry store plain names.
    """

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUSPENDED = "SUSPENDED"
    REQUEUED = "REQUEUED"
    COMPLETING = "COMPLETING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    TIMEOUT = "TIMEOUT"
    PREEMPTED = "PREEMPTED"
    OUT_OF_MEMORY = "OUT_OF_MEMORY"
    NODE_FAIL = "NODE_FAIL"
    UNKNOWN = "UNKNOWN"

    @property
    def is_terminal(self) -> bool:
        """True once the job will not change any more (its record can be cached)."""
        return self in _TERMINAL

    @property
    def is_success(self) -> bool:
        return self is JobState.COMPLETED

    def __str__(self) -> str:
        return self.value


_TERMINAL = frozenset(
    {
        JobState.COMPLETED,
        JobState.FAILED,
        JobState.CANCELLED,
        JobState.TIMEOUT,
        JobState.PREEMPTED,
        JobState.OUT_OF_MEMORY,
        JobState.NODE_FAIL,
    }
)

# Worst first: the state an array shows when its tasks ended differently.
_SEVERITY = [
    JobState.NODE_FAIL,
    JobState.OUT_OF_MEMORY,
    JobState.FAILED,
    JobState.TIMEOUT,
    JobState.PREEMPTED,
    JobState.CANCELLED,
    JobState.UNKNOWN,
    JobState.COMPLETED,
]

_ACTIVE_ORDER = [
    JobState.RUNNING,
    JobState.COMPLETING,
    JobState.REQUEUED,
    JobState.SUSPENDED,
    JobState.PENDING,
    JobState.UNKNOWN,
]


def combine_states(states: Iterable[JobState]) -> JobState:
    """The state of an array job from the states of its tasks."""
    seen = set(states)
    if not seen:
        return JobState.UNKNOWN
    if all(s.is_terminal for s in seen):
        for s in _SEVERITY:
            if s in seen:
                return s
    for s in _ACTIVE_ORDER:
        if s in seen:
            return s
    return JobState.RUNNING  # some ended, none waiting: the rest are running


class StateTable:
    """Maps one scheduler's native state names onto :class:`JobState`.

    An unknown native state becomes UNKNOWN with one warning per name, never an exception:
    a new Slurm or Ray release must not break status.
    """

    def __init__(self, scheduler: str, table: Mapping[str, JobState]) -> None:
        self.scheduler = scheduler
        self._table = {k.upper(): v for k, v in table.items()}
        self._warned: set[str] = set()

    @staticmethod
    def _key(native: str) -> str:
        # Slurm appends detail: "CANCELLED by 0", "RUNNING+" (sacct); keep the first word.
        key = native.strip().upper()
        return key.split()[0].rstrip("+") if key else key

    def __call__(self, native: str) -> JobState:
        key = self._key(native)
        state = self._table.get(key)
        if state is None:
            if key not in self._warned:
                self._warned.add(key)
                import logging  # here, not at the top: `suanli status` of finished jobs needs no logging

                logging.getLogger("suanli").warning("unknown %s job state %r: shown as UNKNOWN", self.scheduler, native)
            return JobState.UNKNOWN
        return state

    def __contains__(self, native: str) -> bool:
        return self._key(native) in self._table
