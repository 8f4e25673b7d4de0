"""Keeping the registry current: one status call per backend for every unfinished job, reconciling rows
whose submitter died, booking jobs that just ended. A mixin of ``api.Client`` (split out so api.py stays the
submission path); it needs the client's store, configs, accounts and backend cache."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from suanli.compute.base import Backend, JobRef, NativeStatus, TaskKey
from suanli.compute.store import JobRow, Store, TaskRow
from suanli.compute.submitter import submitter_gone
from suanli.errors import BackendError, SuanliError, UsageError
from suanli.jobs.record import JobInfo

if TYPE_CHECKING:
    from suanli.accounts import Accounts
    from suanli.compute.config import Configs
    from suanli.jobs.state import JobState

log = logging.getLogger("suanli")


class StatusRefresh:
    """Status refresh and reconciliation over the client's registry."""

    store: Store

    if TYPE_CHECKING:  # provided by api.Client
        @property
        def configs(self) -> Configs: ...

        @property
        def accounts(self) -> Accounts: ...

        def backend(self, cluster: str, backend: str) -> Backend: ...

    def refresh(self, rows: Sequence[JobRow], strict: bool = False) -> dict[str, JobRow]:
        """Ask each backend once for every unfinished task of these jobs; terminal states are cached. Returns
        the rows it asked about as they are now (jobs that just ended are booked in the ledger)."""
        changed = self.reconcile_unsubmitted([r for r in rows if not r.done and r.native_id is None])
        if changed:
            again = {r.id: r for r in self.store.query(ids=changed)}
            rows = [again.get(r.id, r) for r in rows]
        open_rows = [r for r in rows if not r.done and r.native_id is not None]
        if not open_rows:
            return {r.id: r for r in rows if r.id in changed}
        groups: dict[tuple[str, str], list[JobRow]] = {}
        for r in open_rows:
            groups.setdefault((r.cluster, r.backend), []).append(r)
        updates: list[tuple[TaskKey, NativeStatus]] = []
        runs_changed = 0
        for (cluster, backend_name), group in groups.items():
            try:
                backend = self.backend(cluster, backend_name)
                status_runs = getattr(backend, "status_runs", None)
                if status_runs is not None:
                    # Ranges of tasks compared and written by SQLite: no task row is read into Python.
                    runs_changed += self.store.apply_runs(status_runs([self._ref(r) for r in group]))
                else:
                    updates += self._task_updates(backend, group)
            except (BackendError, UsageError) as exc:
                # One unreachable (or no longer configured) cluster must not hide the others: its jobs keep
                # their last known states. Waiting on them (strict) fails instead of waiting forever.
                if strict:
                    raise
                log.warning("cluster %s: states not refreshed: %s", cluster, exc)
                continue
        if not updates and not runs_changed and not changed:
            return {}
        if updates:
            self.store.update_tasks(updates)
        fresh = {r.id: r for r in self.store.query(ids=[*changed, *(r.id for r in open_rows)])}
        ended = [r for r in fresh.values() if r.done]
        if ended:
            self.accounts.finished(ended)
        return fresh

    def _task_updates(self, backend: Backend, group: Sequence[JobRow]) -> list[tuple[TaskKey, NativeStatus]]:
        """Task by task, for backends that answer per task: what changed since the registry's last look."""
        tasks = self.store.tasks([r.id for r in group])
        known = {(r.id, t.task): t for r in group for t in tasks[r.id]}
        refs = []
        for r in group:
            live = tuple(t.task for t in tasks[r.id] if not t.state.is_terminal)
            if live:
                refs.append(self._ref(r, live))
        # A big array's status rewrites only the tasks that changed.
        return [(key, st) for key, st in (backend.status_many(refs) if refs else {}).items()
                if not _unchanged(known.get(key), st)]

    def reconcile_unsubmitted(self, rows: Sequence[JobRow], lost: JobState | None = None) -> list[str]:
        """Rows still "Submitting" whose submitter died: the backend is asked whether the job reached it. Found:
        its native id is recorded and it is followed like any other job. Not found: it ends ``lost`` (FAILED,
        or CANCELLED when a cancel asked) with reason SubmitLost, having run nothing, and its quota reservation
        is given back. Returns the ids of the rows it changed."""
        from suanli.jobs.state import JobState

        changed: list[str] = []
        released: list[str] = []
        for r in rows:
            if r.done or r.native_id is not None or not submitter_gone(r):
                continue
            try:
                backend = self.backend(r.cluster, r.backend)
                native = backend.find_submitted(self._ref(r), r.submitted_at)
            except (BackendError, UsageError) as exc:
                log.warning("job %s: its submitter died; cannot ask cluster %s about it yet: %s", r.id, r.cluster,
                            exc)
                continue
            if native:
                self.store.set_native_id(r.id, native)
                self._ledger_call(functools.partial(_bind, job_id=r.id, native_id=native))
            else:
                self.store.end_unsubmitted(r.id, lost or JobState.FAILED, "SubmitLost")
                released.append(r.id)
            changed.append(r.id)
        if released:
            self._ledger_call(lambda ledger: ledger.release(released))
        return changed

    def _ledger_call(self, fn: Callable[[Any], None]) -> None:
        """Run ``fn(ledger)`` when a ledger is in use; a failure only warns (`accounting sync` catches up)."""
        try:
            if self.configs.settings.ledger is None and not self.accounts.ledger.db.exists:
                return
            fn(self.accounts.ledger)
        except (SuanliError, OSError) as exc:
            log.warning("ledger not updated for an abandoned submission: %s", exc)

    def list_infos(self, rows: Sequence[JobRow], refresh: bool = True, strict: bool = False) -> list[JobInfo]:
        if refresh:
            fresh = self.refresh(rows, strict)
            rows = [fresh.get(r.id, r) for r in rows]
        return self.store.infos(rows)

    def _ref(self, row: JobRow, tasks: tuple[int | None, ...] = ()) -> JobRef:
        return JobRef(row.id, row.native_id, row.job_dir, tasks, row.meta.get("layout") or {})


def _bind(ledger: Any, job_id: str, native_id: str) -> None:
    ledger.bind(job_id, native_id)


def _unchanged(known: TaskRow | None, st: NativeStatus) -> bool:
    """Whether a backend's answer repeats what the registry already holds for the task."""
    if known is None:
        return False
    return (st.state == known.state and st.reason == known.reason and st.restarts == known.restarts
            and st.started_at in (None, known.started_at) and st.ended_at == known.ended_at
            and st.exit_code == known.exit_code and st.native_id in (None, known.native_id))


