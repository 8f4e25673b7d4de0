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
from suanli.adapters import get_adapter
from suanli.compute.backends import usage_source
from suanli.compute.config import ClusterConfig
from suanli.errors import BackendError, QuotaExceeded, SuanliError, UsageError
from suanli.jobs.resources import Resources

if TYPE_CHECKING:
    from suanli.accounts_slurm import SlurmAccounting, SyncResult
    from suanli.api import Client
    from suanli.compute.base import Submission
    from suanli.compute.store import JobRow

__all__ = ["Accounts"]

log = logging.getLogger("suanli")

class Accounts:
    """The accounting service that ``api.Client`` owns: the ledger, admission, booking ended jobs, sync. Its Slurm
    side (sacct, `accounting sync`, `quota apply`: ``accounts_slurm.py``) loads on first use, so admitting a job
    imports no sacct reader."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self._ledger: Ledger | None = None
        self._slurm: SlurmAccounting | None = None

    # ------------------------------------------------------------ the ledger
    @property
    def ledger(self) -> Ledger:
        if self._ledger is None:
            self._ledger = Ledger(self.client.configs.settings.ledger, self.client.store.root)
        return self._ledger

    @property
    def slurm(self) -> SlurmAccounting:
        """The Slurm side, on this service's client, ledger and user."""
        if self._slurm is None:
            self._slurm = _slurm_side(self)
        return self._slurm

    def apply_plan(self, cluster: str) -> tuple[list[list[str]], list[str]]:
        """The sacctmgr commands that mirror the quotas into Slurm's GrpTRESMins, and warnings."""
        return self.slurm.apply_plan(cluster)

    def apply(self, cluster: str) -> tuple[list[list[str]], list[str]]:
        """Run ``apply_plan``'s commands (`suanli quota apply`)."""
        return self.slurm.apply(cluster)

    def close(self) -> None:
        if self._ledger is not None:
            self._ledger.close()

    def user(self, fallback: str) -> str:
        """Who the ledger books this process as: the database role in PostgreSQL mode (row-level security
        keys on it; a centre gives each login a role of the same name), else the login name."""
        return self.ledger.db.user or fallback

    # ------------------------------------------------------------ admission
    def estimate(self, sub: Submission, tasks: int | None = None) -> Estimate:
        """The worst case of the whole job: a heterogeneous job's components each at their own partition's
        rates (component 0 is the job's own request), added up."""
        part = sub.partition
        est = worst_case(sub.spec.resources, tasks or sub.spec.task_count, part.charge.cpu_hour,
                         part.charge.accelerator_hour)
        for comp in sub.spec.components[1:]:
            cpart = sub.cluster.partition(comp.partition)
            more = worst_case(dataclasses.replace(comp.resources, time=sub.spec.resources.time), 1,
                              cpart.charge.cpu_hour, cpart.charge.accelerator_hour)
            kind = more.accelerator_kind or (get_adapter(cpart.adapter).accelerator_kind if more.accelerators
                                             else None)
            if est.accelerators and more.accelerators and kind != est.accelerator_kind:
                # Quotas are kept per accelerator kind: one estimate cannot charge two kinds.
                raise UsageError(f"components: accelerators of two kinds ({est.accelerator_kind}, {kind}) in one "
                                 "job; submit the components that need each kind as separate jobs")
            est = est._replace(
                cpus=est.cpus + more.cpus, accelerators=est.accelerators + more.accelerators,
                accelerator_kind=est.accelerator_kind or kind,
                cpu_hours=_add(est.cpu_hours, more.cpu_hours),
                accelerator_hours=_add(est.accelerator_hours, more.accelerator_hours),
                charge=_add(est.charge, more.charge))
        return est

    def admit(self, sub: Submission, est: Estimate, *, reserve: bool = True,
              native_id: str | None = None) -> list[Check]:
        """Refuse (QuotaExceeded, exit 3) or reserve the worst case. A ledger that cannot be read refuses
        the submission unless the settings say ``on_ledger_error: allow``."""
        settings = self.client.configs.settings
        if not sub.spec.account:
            return []  # quotas belong to accounts: a job without one has nothing to check
        if settings.ledger is None and not self.ledger.db.exists:
            return []  # no ledger yet, so no quota: nothing to check
        def attempt() -> list[Check]:
            return self.ledger.admit(job_id=sub.job_id, cluster=sub.cluster.name, account=sub.spec.account,
                                     user=self.user(sub.user), est=est, reserve=reserve, native_id=native_id)

        try:
            try:
                return attempt()
            except QuotaExceeded:
                # Jobs that ended since anyone looked still count at their worst case: book them, then ask
                # again. Only when it matters: their booking (a status call, the first write of a session's
                # roll-up trigger) would otherwise cost every submission, and a later look books them anyway.
                if not self._settle(sub.spec.account):
                    raise
                return attempt()
        except LedgerError as exc:
            if settings.on_ledger_error == "allow":
                log.warning("%s; submitting without a quota check (on_ledger_error: allow)", exc)
                return []
            raise LedgerError(f"{exc} (submissions are refused while the ledger cannot be read; settings.yaml "
                              "on_ledger_error: allow lets them through unaccounted)") from None

    def _settle(self, account: str) -> bool:
        """Book this account's jobs that ended since anyone last looked, so their worst-case reservations do
        not refuse a new job (only this registry's open jobs that hold a reservation are asked about). Whether
        any reservation was given back."""
        held = self.ledger.reserved_jobs(account)
        if not held:
            return False
        rows = self.client.store.query(ids=held)
        open_rows = [r for r in rows if not r.done]
        if open_rows:
            self.client.refresh(open_rows)  # books the ones that ended (Client.refresh -> finished)
        done = [r for r in rows if r.done]
        if done:
            self.finished(done)  # ended before, but the booking failed then (a busy ledger): try again
        return len(self.ledger.reserved_jobs(account)) < len(held)

    def submitted(self, job_id: str, native_id: str, checks: Sequence[Check], reserved_as: str | None = None) -> None:
        """Note the job's native id on its reservation (``accounting sync`` finds it by that id); nothing to do
        when the reservation was made under that id already (``Plan.native_id``)."""
        if not checks or native_id == reserved_as:
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
                if by_cluster:
                    from suanli.accounts_slurm import ParseStats, _rates, parse_usage
                for cluster, group in by_cluster.items():
                    cfg = self.client.configs.cluster(cluster)
                    natives = {n: r.id for r in group for n in (r.native_id or "").split(",") if n}
                    stats = ParseStats()
                    lines = self.slurm._sacct(cfg, ["-j", ",".join(natives)])
                    # A few jobs: read them all first, so the release below knows what sacct booked.
                    parsed = parse_usage(lines, cfg.name, _rates(cfg), stats=stats, key=self.slurm.physical(cfg))
                    recs = list(self._with_job_ids(parsed, natives))
                    # Released only once sacct has booked every part: slurmdbd may still say COMPLETING.
                    self.ledger.record(recs, release_native=(cfg.name, sorted(stats.booked_jobs - stats.open_jobs)))
        except (SuanliError, OSError) as exc:
            log.warning("usage of %d finished job(s) not booked yet (%s); `suanli accounting sync` books it",
                        len(rows), exc)

    def _with_reserved_done(self, rows: Sequence[JobRow]) -> list[JobRow]:
        """These rows plus finished jobs of this registry that still hold a reservation (a retry)."""
        held = set(self.ledger.reserved_jobs()) - {r.id for r in rows}
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
                if not t.state.is_terminal:
                    continue
                task, state, restarts, started, ended = (-1 if t.task is None else t.task, t.state.value, t.restarts,
                                                         t.started_at, t.ended_at)
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
        from suanli.accounts_slurm import SyncResult

        configs = self.client.configs
        names = [cluster] if cluster else sorted(configs.clusters)
        out: list[SyncResult] = []
        for name in names:
            cfg = configs.cluster(name)
            try:
                if usage_source(cfg.backend) == "sacct":
                    out.append(self.slurm._sync_slurm(cfg, since, all_users, until))
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
        from suanli.accounts_slurm import SyncResult, _login

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


def _slurm_side(accounts: Accounts) -> SlurmAccounting:
    """``SlurmAccounting`` (a mixin) bound to this service: its client, ledger and database user."""
    from suanli.accounts_slurm import SlurmAccounting

    class SlurmSide(SlurmAccounting):
        def __init__(self) -> None:
            self.client = accounts.client
            self._physical = {}  # slurm.conf path -> record-id key of that Slurm cluster

        @property
        def ledger(self) -> Ledger:
            return accounts.ledger

        def user(self, fallback: str) -> str:
            return accounts.user(fallback)

    return SlurmSide()


def _add(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a + b
