"""Accounting at the top of the stack: admission at submit, booking usage when jobs end, `accounting sync`
from sacct and the registry, and `quota apply` into Slurm's association limits.

This is where the ledger (``suanli.accounting``, which runs no commands) meets the clusters and the registry
(``suanli.compute``); ``api.Client`` calls it and owns one instance.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from suanli.accounting.db import LedgerError
from suanli.accounting.estimate import Estimate, worst_case
from suanli.accounting.ledger import Check, Ledger
from suanli.accounting.records import UsageRecord, charge_of
from suanli.accounts_slurm import SYNC_WINDOW_S, SlurmAccounting, SyncResult, _login, _rates, parse_usage
from suanli.compute.backends import usage_source
from suanli.compute.config import ClusterConfig
from suanli.compute.slurm.sacct_usage import ParseStats
from suanli.errors import BackendError, SuanliError, UsageError
from suanli.jobs.resources import Resources
from suanli.jobs.state import JobState

if TYPE_CHECKING:
    from suanli.api import Client
    from suanli.compute.base import Submission
    from suanli.compute.store import JobRow

__all__ = ["SYNC_WINDOW_S", "Accounts", "SyncResult"]

log = logging.getLogger("suanli")

class Accounts(SlurmAccounting):
    """The accounting service that ``api.Client`` owns: the ledger, admission, booking ended jobs, sync."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self._ledger: Ledger | None = None
        self._physical: dict[str, str] = {}  # slurm.conf path -> record-id key of that Slurm cluster

    # ------------------------------------------------------------ the ledger
    @property
    def ledger(self) -> Ledger:
        if self._ledger is None:
            self._ledger = Ledger(self.client.configs.settings.ledger, self.client.store.root)
        return self._ledger

    def close(self) -> None:
        if self._ledger is not None:
            self._ledger.close()

    def user(self, fallback: str) -> str:
        """Who the ledger books this process as: the database role in PostgreSQL mode (row-level security
        keys on it; a centre gives each login a role of the same name), else the login name."""
        return self.ledger.db.user or fallback

    # ------------------------------------------------------------ admission
    def estimate(self, sub: Submission, tasks: int | None = None) -> Estimate:
        part = sub.partition
        return worst_case(sub.spec.resources, tasks or sub.spec.task_count, part.charge.cpu_hour,
                          part.charge.accelerator_hour)

    def admit(self, sub: Submission, est: Estimate, *, reserve: bool = True) -> list[Check]:
        """Refuse (QuotaExceeded, exit 3) or reserve the worst case. A ledger that cannot be read refuses
        the submission unless the settings say ``on_ledger_error: allow``."""
        settings = self.client.configs.settings
        if not sub.spec.account:
            return []  # quotas belong to accounts: a job without one has nothing to check
        if settings.ledger is None and not self.ledger.db.exists:
            return []  # no ledger yet, so no quota: nothing to check
        try:
            self._settle(sub.spec.account)
            return self.ledger.admit(job_id=sub.job_id, cluster=sub.cluster.name, account=sub.spec.account,
                                     user=self.user(sub.user), est=est, reserve=reserve)
        except LedgerError as exc:
            if settings.on_ledger_error == "allow":
                log.warning("%s; submitting without a quota check (on_ledger_error: allow)", exc)
                return []
            raise LedgerError(f"{exc} (submissions are refused while the ledger cannot be read; settings.yaml "
                              "on_ledger_error: allow lets them through unaccounted)") from None

    def _settle(self, account: str) -> None:
        """Book this account's jobs that ended since anyone last looked, so their worst-case reservations do
        not refuse a new job (only this registry's open jobs that hold a reservation are asked about)."""
        held = self.ledger.reserved_jobs(account)
        if not held:
            return
        rows = self.client.store.query(ids=held)
        open_rows = [r for r in rows if not r.done]
        if open_rows:
            self.client.refresh(open_rows)  # books the ones that ended (Client.refresh -> finished)
        done = [r for r in rows if r.done]
        if done:
            self.finished(done)  # ended before, but the booking failed then (a busy ledger): try again

    def submitted(self, job_id: str, native_id: str, checks: Sequence[Check]) -> None:
        if not checks:
            return
        try:
            self.ledger.bind(job_id, native_id)
        except SuanliError as exc:
            log.warning("job %s: could not note its native id in the ledger: %s", job_id, exc)

    def abandoned(self, job_id: str, checks: Sequence[Check]) -> None:
        """Give a reservation back: the backend refused the job, or a dask sweep ended (its pilots' own
        usage is booked as they end)."""
        if not checks:
            return
        try:
            self.ledger.release([job_id])
        except SuanliError as exc:
            log.warning("job %s: its reservation stays in the ledger until the next sync: %s", job_id, exc)

    # ------------------------------------------------------------ jobs that ended
    def finished(self, rows: Sequence[JobRow]) -> None:
        """Book the usage of jobs that just ended and release their reservations. It waits at most half a
        second for a busy ledger and only warns on failure: a job whose reservation is still held is tried
        again when the next job ends, and `suanli accounting sync` books whatever is left."""
        if not rows:
            return
        db = self.ledger.db
        try:
            with db.quick():
                rows = self._with_reserved_done(rows)
                # Each backend says where its usage comes from (``Backend.usage_source``): plug-ins, local
                # and Ray book from the registry, Slurm from sacct.
                source = {b: usage_source(b) for b in {r.backend for r in rows}}
                local = [r for r in rows if source[r.backend] == "registry"]
                if local:
                    self.ledger.record(list(self._registry_records(local)), release_jobs=[r.id for r in local])
                by_cluster: dict[str, list[JobRow]] = {}
                for r in rows:
                    if source[r.backend] == "sacct" and r.native_id:
                        by_cluster.setdefault(r.cluster, []).append(r)
                for cluster, group in by_cluster.items():
                    cfg = self.client.configs.cluster(cluster)
                    natives = {n: r.id for r in group for n in (r.native_id or "").split(",") if n}
                    stats = ParseStats()
                    lines = self._sacct(cfg, ["-j", ",".join(natives)])
                    # A few jobs: read them all first, so the release below knows what sacct booked.
                    parsed = parse_usage(lines, cfg.name, _rates(cfg), stats=stats, key=self.physical(cfg))
                    recs = list(self._with_job_ids(parsed, natives))
                    # Released only once sacct has booked every part: slurmdbd may still say COMPLETING.
                    self.ledger.record(recs, release_native=(cfg.name, sorted(stats.booked_jobs - stats.open_jobs)))
        except (SuanliError, OSError) as exc:
            log.warning("usage of %d finished job(s) not booked yet (%s); `suanli accounting sync` books it",
                        len(rows), exc)

    def _with_reserved_done(self, rows: Sequence[JobRow]) -> list[JobRow]:
        """These rows plus finished jobs of this registry that still hold a reservation (a retry)."""
        held = {r["job_id"] for r in self.ledger.reservations()} - {r.id for r in rows}
        if not held:
            return list(rows)
        return [*rows, *(r for r in self.client.store.query(ids=sorted(held)) if r.done)]

    def _registry_records(self, rows: Sequence[JobRow]) -> Iterator[UsageRecord]:
        """Local and Ray jobs: the backend's own start/end times and what suanli allocated at submission. One
        record per attempt that started (a requeued task's earlier attempts too); tasks that never started used
        nothing and are not booked."""
        tasks = self.client.store.tasks([r.id for r in rows])
        earlier = self.client.store.attempts([r.id for r in rows])
        db_user = self.ledger.db.user  # in PostgreSQL mode the registry's jobs are booked to the role
        for r in rows:
            try:
                cfg: ClusterConfig | None = self.client.configs.cluster(r.cluster)
            except UsageError:
                cfg = None
            res = Resources.from_dict(r.meta.get("resources") or {})
            cpu_rate, acc_rate = 0.0, 0.0
            if cfg is not None:
                try:
                    part = cfg.partition(r.partition)
                    cpu_rate, acc_rate = part.charge.cpu_hour, part.charge.accelerator_hour
                except UsageError:
                    pass
            cpus = res.nodes * res.cpus_per_node
            accs = res.nodes * res.accelerators_per_node
            for t in tasks[r.id]:
                task, state, _reason, restarts, started, ended = t[:6]
                if not JobState(state).is_terminal:
                    continue
                runs = [(i, a.get("started_at"), a.get("ended_at"), a.get("state") or "FAILED")
                        for i, a in enumerate(earlier.get((r.id, task), ()))]
                for attempt, begun, end, final in [*runs, (restarts, started, ended, state)]:
                    if not begun:
                        continue  # never started: it used nothing
                    elapsed = max(0.0, (end or 0.0) - begun)
                    cpu_s, acc_s = cpus * elapsed, accs * elapsed
                    yield UsageRecord(
                        record_id=f"{r.cluster}|{r.id}|{task}|{attempt}", cluster=r.cluster, backend=r.backend,
                        native_id=r.native_id, job_id=r.id, array_task=None if task == -1 else task,
                        attempt=attempt, user=db_user or r.user, account=r.account, partition=r.partition,
                        adapter=r.meta.get("adapter"), accelerator_kind=res.accelerator_kind if accs else None,
                        nodes=res.nodes, cpus=cpus, accelerators=accs, submit_time=r.submitted_at, start_time=begun,
                        end_time=end or begun, elapsed_s=elapsed, state=final, cpu_seconds=cpu_s,
                        accelerator_seconds=acc_s, charge=charge_of(cpu_s, acc_s, cpu_rate, acc_rate),
                        total_cpu_s=None, source=r.backend,
                    )

    @staticmethod
    def _with_job_ids(records: Iterator[UsageRecord], natives: dict[str, str]) -> Iterator[UsageRecord]:
        for rec in records:
            job_id = natives.get((rec.native_id or "").split("_")[0])
            yield dataclasses.replace(rec, job_id=job_id) if job_id else rec

    # ------------------------------------------------------------ sync
    def sync(self, cluster: str | None = None, since: float | None = None, all_users: bool = False,
             until: float | None = None) -> list[SyncResult]:
        configs = self.client.configs
        names = [cluster] if cluster else sorted(configs.clusters)
        out: list[SyncResult] = []
        for name in names:
            cfg = configs.cluster(name)
            try:
                if usage_source(cfg.backend) == "sacct":
                    out.append(self._sync_slurm(cfg, since, all_users, until))
                else:
                    out.append(self._sync_registry(cfg, since, until))
            except BackendError as exc:
                if cluster:
                    raise
                # One unreachable cluster must not stop the others; the caller sees the error per cluster.
                out.append(SyncResult(name, cfg.backend, since or 0.0, until or time.time(), 0, error=str(exc)))
        return out

    def _sync_registry(self, cfg: ClusterConfig, since: float | None, until: float | None) -> SyncResult:
        """Local and Ray jobs from the registry (a user's own, thousands at most): every finished job, or those
        submitted since ``since``; rewriting a booked one changes nothing."""
        until = time.time() if until is None else until
        rows = self.client.store.query(cluster=cfg.name, since=since)
        if any(not r.done for r in rows):
            # Jobs that ended since anyone looked: settle them first (one status call), or the sync misses them.
            fresh = self.client.refresh(rows)
            rows = [fresh.get(r.id, r) for r in rows]
        rows = [r for r in rows if r.done and r.submitted_at < until]
        n = self.ledger.record(self._registry_records(rows), release_jobs=[r.id for r in rows])
        self.ledger.set_mark(cfg.name, "registry:" + self.user(_login()), until)
        return SyncResult(cfg.name, cfg.backend, since or 0.0, until, n, released=len(rows))

