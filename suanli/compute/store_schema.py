"""The job registry's tables and rows: the schema's migrations, the row types (``JobRow``, ``TaskRow``) and
their decoding. Apart from ``store.py`` (connections, writes and queries) because every caller needs these
names, not the SQL."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, NamedTuple

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



class JobRow(NamedTuple):
    """One job as the registry holds it. A named tuple, not a dataclass: built once per job a status lists,
    and `suanli status` then loads no dataclass machinery."""

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


class TaskRow(NamedTuple):
    """One task as the registry holds it (``Store.tasks``). A fresh state goes the other way as the backend's
    own ``NativeStatus`` (``Store.update_tasks``), so there is no third record of the same fields."""

    task: int | None  # None: the job is not an array
    state: JobState
    reason: str | None
    restarts: int
    started_at: float | None
    ended_at: float | None
    exit_code: int | None
    native_id: str | None


_JOB_COLS = "id, name, cluster, backend, native_id, kind, partition, account, user, submitted_at, job_dir, meta, done"
#: TaskRow's columns; NULLIF gives a job that is not an array its task None in SQLite, not per row in Python.
_TASK_COLS = "NULLIF(task, -1), state, reason, restarts, started_at, ended_at, exit_code, native_id"
#: JobInfo's columns (jobs ``j`` joined with tasks ``t``), in its field order: `status` reads them in one query.
_INFO_COLS = ("j.id, j.name, j.cluster, j.backend, COALESCE(NULLIF(t.native_id, ''), j.native_id), "
              "NULLIF(t.task, -1), t.state, t.reason, t.restarts, j.partition, j.account, j.user, j.submitted_at, "
              "t.started_at, t.ended_at, t.exit_code")


def _job(row: tuple[Any, ...]) -> JobRow:
    # Positional, in _JOB_COLS order: this runs once per job of `status --all`.
    return tuple.__new__(JobRow, (row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7], row[8], row[9],
                                  row[10], _Meta(row[11]), bool(row[12])))


_STATES = {s.value: s for s in JobState}
_UNKNOWN = JobState.UNKNOWN


def _task_rows(rows: Iterable[tuple[Any, ...]]) -> list[TaskRow]:
    """TaskRows from rows of ``_TASK_COLS``, built as plain tuples."""
    new, states = tuple.__new__, _STATES
    return [new(TaskRow, (task, states.get(state, _UNKNOWN), reason, restarts, started, ended, code, native))
            for task, state, reason, restarts, started, ended, code, native in rows]


def _job_infos(j: JobRow, rows: Iterable[tuple[Any, ...]]) -> list[JobInfo]:
    """A job's JobInfos from its rows of ``_TASK_COLS`` (the job's fields from ``j``, a task's own native id
    first), built as plain tuples: `status ARRAY_ID` of a 10,000-task map builds 10,000."""
    new, states = tuple.__new__, _STATES
    jid, name, cluster, backend, jnative, partition, account, user, submitted = (
        j.id, j.name, j.cluster, j.backend, j.native_id, j.partition, j.account, j.user, j.submitted_at)
    return [new(JobInfo, (jid, name, cluster, backend, native or jnative, task, states.get(state, _UNKNOWN), reason,
                          restarts, partition, account, user, submitted, started, ended, code))
            for task, state, reason, restarts, started, ended, code, native in rows]


def _infos(rows: Iterable[tuple[Any, ...]]) -> list[JobInfo]:
    """JobInfos from rows of ``_INFO_COLS``; built as tuples (no per-field work beyond the state's lookup)."""
    new, states = tuple.__new__, _STATES
    return [new(JobInfo, (a, b, c, d, e, f, states.get(g, _UNKNOWN), h, i, j, k, m, n, o, p, q))
            for a, b, c, d, e, f, g, h, i, j, k, m, n, o, p, q in rows]
