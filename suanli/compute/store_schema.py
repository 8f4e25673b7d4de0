"""The job registry's tables and rows: the schema's migrations, the row types (``JobRow``, ``TaskUpdate``) and
their decoding. Apart from ``store.py`` (connections, writes and queries) because every caller needs these
names, not the SQL."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from suanli.jobs.record import JobInfo
from suanli.jobs.state import JobState

SCHEMA_VERSION = 3
_MIGRATIONS = {
    1: """
    CREATE TABLE jobs (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        cluster TEXT NOT NULL,
        backend TEXT NOT NULL,
        native_id TEXT,
        kind TEXT NOT NULL,
        partition TEXT,
        account TEXT,
        user TEXT,
        submitted_at REAL NOT NULL,
        job_dir TEXT NOT NULL,
        meta TEXT NOT NULL DEFAULT '{}',
        done INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX jobs_by_time ON jobs (submitted_at);
    CREATE INDEX jobs_open ON jobs (done, cluster);
    CREATE INDEX jobs_native ON jobs (native_id);
    CREATE TABLE tasks (
        job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
        task INTEGER NOT NULL,
        state TEXT NOT NULL,
        reason TEXT,
        restarts INTEGER NOT NULL DEFAULT 0,
        started_at REAL,
        ended_at REAL,
        exit_code INTEGER,
        native_id TEXT,
        PRIMARY KEY (job_id, task)
    ) WITHOUT ROWID;
    """,
    # Earlier attempts of requeued tasks (JSON list), so each attempt is booked as its own usage record.
    2: """
    ALTER TABLE tasks ADD COLUMN attempts TEXT;
    CREATE INDEX jobs_unsubmitted ON jobs (done, native_id);
    """,
    # `suanli status` lists jobs that ended in the last day: found by this index, not by reading every task.
    3: """
    CREATE INDEX tasks_ended ON tasks (ended_at);
    """,
}
NO_TASK = -1  # the task column of a job that is not an array



@dataclass(frozen=True)
class JobRow:
    id: str
    name: str
    cluster: str
    backend: str
    native_id: str | None
    kind: str
    partition: str | None
    account: str | None
    user: str | None
    submitted_at: float
    job_dir: str
    meta: Mapping[str, Any]
    done: bool


class _Meta(Mapping[str, Any]):
    """A job's metadata as stored, decoded only when first read: listing jobs never reads it, and decoding it
    for every row was a third of `suanli status` over a large registry."""

    __slots__ = ("_text", "_data")

    def __init__(self, text: str) -> None:
        self._text = text
        self._data: dict[str, Any] | None = None

    def _decoded(self) -> dict[str, Any]:
        if self._data is None:
            self._data = json.loads(self._text)
        return self._data

    def __getitem__(self, key: str) -> Any:
        return self._decoded()[key]

    def get(self, key: str, default: Any = None) -> Any:
        if self._data is None and f'"{key}"' not in self._text:
            return default  # absent: no need to decode (JSON object keys are always quoted)
        return self._decoded().get(key, default)

    def __iter__(self) -> Iterator[str]:
        return iter(self._decoded())

    def __len__(self) -> int:
        return len(self._decoded())

    def __repr__(self) -> str:
        return repr(self._decoded())

    def text(self) -> str:
        return self._text if self._data is None else json.dumps(self._data)


@dataclass(frozen=True)
class TaskUpdate:
    job_id: str
    task: int | None
    state: JobState
    reason: str | None = None
    restarts: int = 0
    started_at: float | None = None
    ended_at: float | None = None
    exit_code: int | None = None
    native_id: str | None = None
    attempts: tuple[dict[str, Any], ...] = ()


_JOB_COLS = "id, name, cluster, backend, native_id, kind, partition, account, user, submitted_at, job_dir, meta, done"
_TASK_COLS = "task, state, reason, restarts, started_at, ended_at, exit_code, native_id"
def _job(row: tuple[Any, ...]) -> JobRow:
    # Positional, in _JOB_COLS order: this runs once per job of `status --all`.
    return JobRow(row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7], row[8], row[9], row[10],
                  _Meta(row[11]), bool(row[12]))


_STATES = {s.value: s for s in JobState}


def _info(j: JobRow, t: tuple[Any, ...]) -> JobInfo:
    task, state, reason, restarts, started, ended, code, native = t
    st = _STATES.get(state, JobState.UNKNOWN)
    return JobInfo(
        id=j.id, name=j.name, cluster=j.cluster, backend=j.backend,
        native_id=native or j.native_id,
        array_task=None if task == NO_TASK else task, state=st, reason=reason, restarts=restarts,
        partition=j.partition, account=j.account, user=j.user, submitted_at=j.submitted_at,
        started_at=started, ended_at=ended, exit_code=code,
    )
