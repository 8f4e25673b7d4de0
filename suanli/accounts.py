"""Accounting at the top of the stack: admission at submit, booking usage when jobs end, `accounting sync`
from sacct and the registry, and `quota apply` into Slurm's association limits.

This is where the ledger (``suanli.accounting``, which runs no commands) meets the clusters and the registry
(``suanli.compute``); ``api.Client`` calls it and owns one instance.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import time
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from suanli.accounting.db import LedgerError
from suanli.accounting.estimate import Estimate, worst_case
from suanli.accounting.ledger import Check, Ledger
from suanli.accounting.records import UsageRecord, charge_of
from suanli.accounting.sacct import FIELDS, ParseStats, parse_usage
from suanli.compute.backends import usage_source
from suanli.compute.config import ClusterConfig
from suanli.errors import BackendError, SuanliError, UsageError
from suanli.jobs.resources import Resources
from suanli.jobs.state import JobState

if TYPE_CHECKING:
    from suanli.api import Client
    from suanli.compute.base import Submission
    from suanli.compute.slurm.backend import SlurmBackend
    from suanli.compute.store import JobRow

log = logging.getLogger("suanli")

#: sacct is read in windows of this many seconds, so a centre's years of history stream in pieces.
SYNC_WINDOW_S = 86400.0


@dataclasses.dataclass
class SyncResult:
    cluster: str
    backend: str
    since: float
    until: float
    records: int
    skipped_lines: int = 0
    open_jobs: int = 0
    unknown_states: tuple[str, ...] = ()
    released: int = 0
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Accounts:
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

    def _sync_slurm(self, cfg: ClusterConfig, since: float | None, all_users: bool,
                    until: float | None) -> SyncResult:
        """Book one physical Slurm cluster's jobs from sacct. Every config over the same cluster books the same
        records (keyed on the physical cluster, not the config) and moves the same sync mark, so a job is
        booked once whichever config submitted or synced it."""
        scope = "all" if all_users else self.user(_login())
        until = time.time() if until is None else until
        key = self.physical(cfg)
        siblings = self.siblings(cfg)
        names = [c.name for c in siblings]
        if self.ledger.db.may_rewrite:
            self.ledger.adopt_keys(names, key)  # records booked before ids named the physical cluster
        if since is None:
            since = self.ledger.mark(key, scope) or self.ledger.mark(cfg.name, scope)
        if since is None:  # first sync: the start of last month
            t = datetime.fromtimestamp(until)
            since = datetime(t.year - (t.month == 1), (t.month - 2) % 12 + 1, 1).timestamp()
        natives: dict[str, tuple[str, str]] = {}  # native id -> (suanli id, config that submitted it)
        for r in self.client.store.query():
            if r.cluster in names:
                for n in (r.native_id or "").split(","):
                    if n:
                        natives[n] = (r.id, r.cluster)
        reserved = set().union(*(self.ledger.reserved_natives(n) for n in names))
        stats = ParseStats(track=set(natives) | reserved)
        # A job no suanli of this registry submitted shows under one config of the cluster, always the same.
        owner = next((c for c in siblings if c.name == key.removeprefix("slurm:")), siblings[0])
        rates = {c.name: _rates(c) for c in siblings}
        total = 0
        lo = since
        while lo < until:
            hi = min(lo + SYNC_WINDOW_S, until)
            argv = ["-S", _sacct_time(lo), "-E", _sacct_time(hi)] + (["--allusers"] if all_users else [])
            lines = self._sacct(cfg, argv)
            parsed = parse_usage(lines, owner.name, rates[owner.name], stats=stats, key=key)
            total += self.ledger.record(self._submitters(parsed, natives, owner.name, rates))
            lo = hi
        done = stats.booked_jobs - stats.open_jobs
        release_jobs = sorted({natives[n][0] for n in done if n in natives}
                              - {natives[n][0] for n in stats.open_jobs if n in natives})
        self.ledger.release(release_jobs, (names, sorted(done)))
        # The mark moves only after every window is stored: a sync killed halfway redoes the same windows,
        # and the upsert on record_id makes that rewrite the same rows.
        self.ledger.set_mark(key, scope, until)
        return SyncResult(cfg.name, "slurm", since, until, total, stats.bad, len(stats.open_jobs),
                          tuple(sorted(stats.unknown_states)), len(release_jobs))

    @staticmethod
    def _submitters(records: Iterator[UsageRecord], natives: dict[str, tuple[str, str]], owner: str,
                    rates: dict[str, Any]) -> Iterator[UsageRecord]:
        """Records of jobs this registry submitted carry their suanli id and the config (and its rates) that
        submitted them."""
        for rec in records:
            known = natives.get((rec.native_id or "").split("_")[0])
            if known is None:
                yield rec
                continue
            job_id, name = known
            if name == owner:
                yield dataclasses.replace(rec, job_id=job_id)
                continue
            cpu_rate, acc_rate, adapter = rates[name](rec.partition)
            yield dataclasses.replace(rec, job_id=job_id, cluster=name, adapter=adapter,
                                      charge=charge_of(rec.cpu_seconds, rec.accelerator_seconds, cpu_rate, acc_rate))

    # ------------------------------------------------------------ which Slurm cluster a config names
    def physical(self, cfg: ClusterConfig) -> str:
        """``slurm:CLUSTERNAME``, the key of the Slurm cluster behind a config: its slurm.conf's ClusterName
        (read from the file, else ``scontrol show config``), else the conf file's real path. Sacct's job ids
        are unique per Slurm cluster, so usage records and sync marks are keyed on this, not the config."""
        conf = str(cfg.slurm.get("conf") or os.environ.get("SLURM_CONF") or "/etc/slurm/slurm.conf")
        if conf not in self._physical:
            name = _conf_cluster_name(Path(conf))
            if name is None:
                try:
                    name = self._slurm(cfg).config().get("ClusterName") or None
                except BackendError:
                    name = None
            self._physical[conf] = "slurm:" + (name.lower() if name else "conf:" + os.path.realpath(conf))
        return self._physical[conf]

    def siblings(self, cfg: ClusterConfig) -> list[ClusterConfig]:
        """The Slurm configs over the same physical cluster as ``cfg`` (itself included), by name."""
        key = self.physical(cfg)
        out = [c for c in self.client.configs.clusters.values() if c.backend == "slurm" and self.physical(c) == key]
        return sorted(out or [cfg], key=lambda c: c.name)

    def _slurm(self, cfg: ClusterConfig) -> SlurmBackend:
        """The cluster's Slurm backend: it owns running Slurm's commands (SLURM_CONF, retries, streaming)."""
        from suanli.compute.slurm.backend import SlurmBackend

        backend = self.client.backend(cfg.name, "slurm")
        assert isinstance(backend, SlurmBackend)
        return backend

    def _sacct(self, cfg: ClusterConfig, extra: list[str]) -> Iterator[str]:
        """Stream sacct's usage lines (header first). Without -X: the step lines carry the measured CPU time
        (Slurm 22.05 prints TotalCPU 00:00:00 on a -X allocation line), and the parser folds them in."""
        argv = ["sacct", "--parsable2", "-D", "-o", ",".join(FIELDS), *extra]
        return self._slurm(cfg).stream(argv, f"cluster {cfg.name}: sacct")

    # ------------------------------------------------------------ Slurm association limits
    def apply_plan(self, cluster: str) -> tuple[list[list[str]], list[str]]:
        """The sacctmgr commands that mirror the quotas into Slurm's GrpTRESMins, and warnings."""
        from suanli.adapters import adapter_names, get_adapter

        cfg = self.client.configs.cluster(cluster)
        if cfg.backend != "slurm":
            raise UsageError(f"quota apply: cluster {cluster!r} runs {cfg.backend}, not slurm; only Slurm "
                             "enforces quotas itself (elsewhere suanli checks them at submission)")
        conf = self._slurm(cfg).config()
        slurm_name = conf.get("ClusterName", cfg.name)
        gres = {a.accelerator_kind: a.gres_name for a in map(get_adapter, adapter_names())
                if a.accelerator_kind and a.gres_name}
        warnings: list[str] = []
        cmds: list[list[str]] = []
        reset = conf.get("PriorityUsageResetPeriod", "NONE").upper()
        decay = conf.get("PriorityDecayHalfLife", "")
        for q in self.ledger.quotas():
            # Slurm holds one limit per association: the quota in force now (overlapping ones are refused).
            if q.cluster not in (None, cluster) or q.window() is None:
                continue
            tres = []
            if q.cpu_hours is not None:
                tres.append(f"cpu={round(q.cpu_hours * 60)}")
            for kind, hours in sorted(q.accelerator_hours.items()):
                tres.append(f"gres/{gres.get(kind, kind)}={round(hours * 60)}")
            if q.charge is not None:
                warnings.append(f"quota {q.id} ({q.scope()}): its charge limit is enforced by suanli only")
            if not tres:
                continue
            want = "MONTHLY" if q.period == "month" else "NONE"
            if reset != want:
                warnings.append(f"quota {q.id} ({q.scope()}) is per {q.period}, but Slurm resets usage "
                                f"{reset} (PriorityUsageResetPeriod); set it to {want} so both agree")
            where = ["where", f"name={q.user or q.account}", f"cluster={slurm_name}"]
            if q.user:
                where.append(f"account={q.account}")
            cmds.append(["sacctmgr", "-i", "modify", "user" if q.user else "account", *where, "set",
                         "GrpTRESMins=" + ",".join(tres)])
        if decay not in ("", "0", "00:00:00", "0-00:00:00"):
            warnings.append(f"PriorityDecayHalfLife is {decay}: Slurm decays recorded usage, so its limits drift "
                            "from the ledger; set it to 0")
        return cmds, warnings

    def apply(self, cluster: str) -> tuple[list[list[str]], list[str]]:
        cmds, warnings = self.apply_plan(cluster)
        slurm = self._slurm(self.client.configs.cluster(cluster))
        hint = "(does the association exist? sacctmgr show assoc)"
        for argv in cmds:
            what = f"quota apply: {' '.join(argv[3:5])}"
            try:
                out = slurm.run(argv, what).stdout
            except BackendError as exc:
                raise BackendError(f"{exc} {hint}") from None
            if "Nothing modified" in out:
                raise BackendError(f"{what}: sacctmgr modified nothing {hint}")
        return cmds, warnings


# ---------------------------------------------------------------- helpers
def _login() -> str:
    from suanli.compute.base import current_user

    return current_user()


_CLUSTER_NAME = re.compile(r"^\s*ClusterName\s*=\s*([^\s#]+)", re.IGNORECASE | re.MULTILINE)


def _conf_cluster_name(conf: Path) -> str | None:
    """ClusterName from a slurm.conf (None when unreadable or absent: configless sites ask scontrol)."""
    try:
        m = _CLUSTER_NAME.search(conf.read_text(errors="replace"))
    except OSError:
        return None
    return m.group(1) if m else None


def _sacct_time(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(t))


def _rates(cfg: ClusterConfig) -> Any:
    parts = {p.name: p for p in cfg.partitions}

    def rates(partition: str | None) -> tuple[float, float, str | None]:
        p = parts.get(partition or "")
        if p is None:
            return 0.0, 0.0, None
        return p.charge.cpu_hour, p.charge.accelerator_hour, p.adapter

    return rates
