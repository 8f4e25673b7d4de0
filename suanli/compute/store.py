"""The job registry: one SQLite file under $SUANLI_HOME that every process shares.

Jobs outlive the process that submitted them, so everything a later ``suanli status`` or ``get_job`` needs
is written here. WAL mode plus a busy timeout make concurrent writers wait instead of failing.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from suanli.compute.store_db import RegistryConnection, home
from suanli.compute.store_schema import (
    _INFO_COLS,
    _JOB_COLS,
    _TASK_COLS,
    NO_TASK,
    SCHEMA_VERSION,
    JobRow,
    TaskRow,
    _infos,
    _job,
    _job_infos,
    _Meta,
    _task_rows,
)
from suanli.errors import UsageError
from suanli.jobs.record import JobInfo
from suanli.jobs.state import JobState

if TYPE_CHECKING:  # only read here: importing the backend contract would load its dataclasses on every status
    from suanli.compute.base import NativeStatus, TaskKey

__all__ = ["NO_TASK", "SCHEMA_VERSION", "JobRow", "Store", "TaskRow", "home", "now"]


#: Above this many jobs, ``tasks`` reads the whole table once instead of looking each job up.
_SCAN_JOBS = 5000
_IDS_PER_QUERY = 10_000


class Store(RegistryConnection):
    """Jobs and their tasks: written by submitters and pollers, read by every status, wait and log."""

    # ------------------------------------------------------------ writes
    def insert(self, job: JobRow, tasks: Sequence[int | None], state: JobState, reason: str | None) -> None:
        with self._write() as c:
            c.execute(
                f"INSERT INTO jobs ({_JOB_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (job.id, job.name, job.cluster, job.backend, job.native_id, job.kind, job.partition, job.account,
                 job.user, job.submitted_at, job.job_dir,
                 job.meta.text() if isinstance(job.meta, _Meta) else json.dumps(dict(job.meta)), int(job.done)),
            )
            c.executemany(
                "INSERT INTO tasks (job_id, task, state, reason) VALUES (?,?,?,?)",
                [(job.id, NO_TASK if t is None else t, state.value, reason) for t in tasks],
            )

    def set_native_id(self, job_id: str, native_id: str) -> None:
        with self._write() as c:
            c.execute("UPDATE jobs SET native_id = ? WHERE id = ?", (native_id, job_id))
            c.execute("UPDATE tasks SET reason = NULL WHERE job_id = ? AND reason = 'Submitting'", (job_id,))

    def delete(self, job_id: str) -> None:
        with self._write() as c:
            c.execute("DELETE FROM tasks WHERE job_id = ?", (job_id,))
            c.execute("DELETE FROM jobs WHERE id = ?", (job_id,))

    def update_tasks(self, updates: Iterable[tuple[TaskKey, NativeStatus]]) -> None:
        """Apply fresh states, ``((job id, task or None), status)`` as ``status_many`` answers them, in one
        transaction; a job whose tasks are all terminal is marked done."""
        updates = list(updates)
        if not updates:
            return
        terminal = tuple(s.value for s in JobState if s.is_terminal)
        marks = ",".join("?" * len(terminal))
        with self._write() as c:
            # A final state is never overwritten: a slower poller's older answer must not revive a task.
            c.executemany(
                "UPDATE tasks SET state = ?, reason = ?, restarts = ?, started_at = COALESCE(?, started_at), "
                "ended_at = ?, exit_code = ?, native_id = COALESCE(?, native_id), attempts = COALESCE(?, attempts) "
                f"WHERE job_id = ? AND task = ? AND state NOT IN ({marks})",
                [(u.state.value, u.reason, u.restarts, u.started_at, u.ended_at, u.exit_code, u.native_id,
                  json.dumps(list(u.attempts)) if u.attempts else None,
                  job_id, NO_TASK if task is None else task, *terminal) for (job_id, task), u in updates],
            )
            # Only a task that ended can end its job: one statement for those jobs, not an UPDATE per job.
            self._mark_done(c, sorted({job_id for (job_id, _), u in updates if u.state.is_terminal}))

    def _mark_done(self, c: sqlite3.Connection, job_ids: Sequence[str]) -> None:
        """Mark done those of ``job_ids`` whose tasks have all ended (inside the caller's transaction)."""
        terminal = tuple(s.value for s in JobState if s.is_terminal)
        marks = ",".join("?" * len(terminal))
        c.executemany(f"UPDATE jobs SET done = 1 WHERE id = ? AND done = 0 AND NOT EXISTS (SELECT 1 FROM tasks "
                      f"WHERE job_id = ? AND state NOT IN ({marks}))", [(j, j, *terminal) for j in job_ids])

    def apply_runs(self, runs: Sequence[tuple[str, int | None, int | None, Any]]) -> int:
        """Fresh states for ranges of tasks, ``(job id, first task, last task, status)`` with ``status`` a
        NativeStatus; returns how many task rows changed. SQLite compares and writes each range in one
        statement (one executemany for all), so an unchanged pending array of 50,000 tasks costs one statement,
        not 50,000 rows read into Python. As in ``update_tasks``, an ended task is never overwritten."""
        if not runs:
            return 0
        terminal = tuple(s.value for s in JobState if s.is_terminal)
        ended_states = ",".join(f"?{11 + i}" for i in range(len(terminal)))
        sql = ("UPDATE tasks SET state = ?1, reason = ?2, restarts = ?3, started_at = COALESCE(?4, started_at), "
               "ended_at = ?5, exit_code = ?6, native_id = COALESCE(?7, native_id) "
               f"WHERE job_id = ?8 AND task BETWEEN ?9 AND ?10 AND state NOT IN ({ended_states}) "
               "AND NOT (state IS ?1 AND reason IS ?2 AND restarts IS ?3 AND (?4 IS NULL OR started_at IS ?4) "
               "AND ended_at IS ?5 AND exit_code IS ?6 AND (?7 IS NULL OR native_id IS ?7))")
        with self._write() as c:
            before = c.total_changes
            c.executemany(sql, [(st.state.value, st.reason, st.restarts, st.started_at, st.ended_at, st.exit_code,
                                 st.native_id, job_id, NO_TASK if lo is None else lo, NO_TASK if hi is None else hi,
                                 *terminal) for job_id, lo, hi, st in runs])
            changed: int = c.total_changes - before
            if changed:
                self._mark_done(c, sorted({r[0] for r in runs if r[3].state.is_terminal}))
        return changed

    def end_unsubmitted(self, job_id: str, state: JobState, reason: str) -> None:
        """End every open task of a job that never reached its backend (its submitter died first)."""
        terminal = tuple(s.value for s in JobState if s.is_terminal)
        marks = ",".join("?" * len(terminal))
        with self._write() as c:
            c.execute(f"UPDATE tasks SET state = ?, reason = ?, ended_at = ? WHERE job_id = ? "
                      f"AND state NOT IN ({marks})", (state.value, reason, time.time(), job_id, *terminal))
            c.execute("UPDATE jobs SET done = 1 WHERE id = ?", (job_id,))

    # ------------------------------------------------------------ reads
    def unsubmitted(self) -> list[JobRow]:
        """Open jobs with no native id yet: being submitted now, or left behind by a submitter that died."""
        with self._read() as conn:
            rows = conn.execute(f"SELECT {_JOB_COLS} FROM jobs WHERE done = 0 AND native_id IS NULL "
                                "ORDER BY submitted_at, id").fetchall()
        return [_job(r) for r in rows]

    def attempts(self, job_ids: Sequence[str]) -> dict[tuple[str, int], list[dict[str, Any]]]:
        """Earlier attempts of requeued tasks, by (job, task); tasks never requeued are absent."""
        out: dict[tuple[str, int], list[dict[str, Any]]] = {}
        with self._read() as conn:
            for start in range(0, len(job_ids), 500):
                chunk = job_ids[start:start + 500]
                for job_id, task, text in conn.execute(
                        f"SELECT job_id, task, attempts FROM tasks WHERE job_id IN ({','.join('?' * len(chunk))}) "
                        "AND attempts IS NOT NULL", chunk):
                    out[(job_id, task)] = json.loads(text)
        return out

    def get(self, job_id: str) -> JobRow | None:
        with self._read() as conn:
            row = conn.execute(f"SELECT {_JOB_COLS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _job(row) if row else None

    def resolve(self, text: str) -> tuple[JobRow, int | None]:
        """A job from ``ID``, ``ID_7`` (array task 7), a unique id prefix, or a native id."""
        with self._read() as conn:
            return self._resolve(conn, text)

    def _resolve(self, conn: sqlite3.Connection, text: str) -> tuple[JobRow, int | None]:
        ident, task = text, None
        base, sep, tail = text.rpartition("_")
        if sep and tail.isascii() and tail.isdigit():
            ident, task = base, int(tail)
            if task > 2**31:
                raise UsageError(f"job: {text!r}: array task {tail} is out of range (Slurm indices stay below "
                                 "4 million)")
        row = conn.execute(f"SELECT {_JOB_COLS} FROM jobs WHERE id = ?", (ident,)).fetchone()
        if row is None:
            rows = conn.execute(f"SELECT {_JOB_COLS} FROM jobs WHERE native_id = ?", (ident,)).fetchall()
            if not rows and len(ident) >= 3:
                rows = conn.execute(f"SELECT {_JOB_COLS} FROM jobs WHERE id LIKE ? || '%' ESCAPE '\\'",
                                    (ident.replace("%", "\\%").replace("_", "\\_"),)).fetchall()
            if len(rows) > 1:
                raise UsageError(f"job: {text!r} matches {len(rows)} jobs ({', '.join(r[0] for r in rows[:5])}); "
                                 "give the full id")
            row = rows[0] if rows else None
        if row is None:
            raise UsageError(f"job: no job {text!r} in the registry {self.path}; `suanli status --all` lists them")
        job = _job(row)
        if task is not None:
            hit = conn.execute("SELECT 1 FROM tasks WHERE job_id = ? AND task = ?", (job.id, task)).fetchone()
            if hit is None:
                raise UsageError(f"job: {job.id} has no array task {task}")
        return job, task

    def tasks(self, job_ids: Sequence[str]) -> dict[str, list[TaskRow]]:
        """Each job's tasks in index order (a job that is not an array has one, task None)."""
        with self._read() as conn:
            raw = self._raw_tasks(conn, job_ids)
        return {job_id: _task_rows(rows) for job_id, rows in raw.items()}

    @staticmethod
    def _raw_tasks(conn: sqlite3.Connection, job_ids: Sequence[str]) -> dict[str, list[tuple[Any, ...]]]:
        """Each job's rows of ``_TASK_COLS``, in index order, as SQLite returns them."""
        if len(job_ids) == 1:  # `status ID`: no job id column to fetch and strip from every row
            return {job_ids[0]: conn.execute(f"SELECT {_TASK_COLS} FROM tasks WHERE job_id = ? ORDER BY task",
                                             (job_ids[0],)).fetchall()}
        out: dict[str, list[tuple[Any, ...]]] = {j: [] for j in job_ids}
        if len(out) > _SCAN_JOBS:
            # Most of the registry (`status --all`): one scan in key order beats thousands of IN lists.
            for r in conn.execute(f"SELECT job_id, {_TASK_COLS} FROM tasks ORDER BY job_id, task"):
                rows_of = out.get(r[0])
                if rows_of is not None:
                    rows_of.append(r[1:])
            return out
        for chunk_start in range(0, len(job_ids), 500):
            chunk = job_ids[chunk_start:chunk_start + 500]
            rows = conn.execute(
                f"SELECT job_id, {_TASK_COLS} FROM tasks WHERE job_id IN ({','.join('?' * len(chunk))}) "
                "ORDER BY job_id, task",
                chunk,
            ).fetchall()
            for r in rows:
                out[r[0]].append(r[1:])
        return out

    def query(self, *, ids: Sequence[str] | None = None, cluster: str | None = None, since: float | None = None,
              open_or_since: float | None = None, only_open: bool = False) -> list[JobRow]:
        """Jobs by filter, oldest first. ``open_or_since``: unfinished ones plus those submitted after it."""
        if ids is not None:
            if not ids:
                return []
            if len(ids) > _IDS_PER_QUERY:  # SQLite caps the parameters of one statement
                out = [row for start in range(0, len(ids), _IDS_PER_QUERY)
                       for row in self.query(ids=ids[start:start + _IDS_PER_QUERY], cluster=cluster, since=since,
                                             open_or_since=open_or_since, only_open=only_open)]
                return sorted(out, key=lambda r: (r.submitted_at, r.id))
        where, args = _filters(ids=ids, cluster=cluster, since=since, open_or_since=open_or_since,
                               only_open=only_open)
        sql = f"SELECT {_JOB_COLS} FROM jobs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY submitted_at, id"
        with self._read() as conn:
            rows = conn.execute(sql, args).fetchall()
        return [_job(r) for r in rows]

    def infos(self, jobs: Sequence[JobRow]) -> list[JobInfo]:
        """One JobInfo per task, jobs in the given order, tasks in index order."""
        with self._read() as conn:
            raw = self._raw_tasks(conn, [j.id for j in jobs])
        return [info for j in jobs for info in _job_infos(j, raw.get(j.id, ()))]

    def infos_where(self, *, cluster: str | None = None, since: float | None = None,
                   open_or_since: float | None = None) -> list[JobInfo]:
        """What ``infos(query(...))`` gives for these filters, from one joined query: no JobRow (nor its
        metadata) is built, which was most of ``status --all`` over a large registry."""
        where, args = _filters(ids=None, cluster=cluster, since=since, open_or_since=open_or_since, only_open=False,
                               table="j.")
        # CROSS JOIN: jobs stay the outer loop, read in submission order by the jobs_by_time index, so SQLite
        # only sorts jobs submitted in the same instant; given the choice it scanned the tasks and sorted all.
        sql = f"SELECT {_INFO_COLS} FROM jobs j CROSS JOIN tasks t ON t.job_id = j.id"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY j.submitted_at, j.id, t.task"
        with self._read() as conn:
            return _infos(conn.execute(sql, args).fetchall())


def _filters(*, ids: Sequence[str] | None, cluster: str | None, since: float | None, open_or_since: float | None,
             only_open: bool, table: str = "") -> tuple[list[str], list[Any]]:
    """The WHERE clauses (joined by AND) and their parameters of ``Store.query``'s filters on ``jobs``."""
    where: list[str] = []
    args: list[Any] = []
    if ids is not None:
        where.append(f"{table}id IN ({','.join('?' * len(ids))})")
        args += list(ids)
    if cluster:
        where.append(f"{table}cluster = ?")
        args.append(cluster)
    if since is not None:
        where.append(f"{table}submitted_at >= ?")
        args.append(since)
    if only_open:
        where.append(f"{table}done = 0")
    if open_or_since is not None:
        # A union of three index searches (jobs_open, jobs_by_time, tasks_ended): an OR here read every
        # job and every task of the registry.
        where.append(f"{table}id IN (SELECT id FROM jobs WHERE done = 0 UNION SELECT id FROM jobs "
                     "WHERE submitted_at >= ? UNION SELECT job_id FROM tasks WHERE ended_at >= ?)")
        args += [open_or_since, open_or_since]
    return where, args


def now() -> float:
    return time.time()
