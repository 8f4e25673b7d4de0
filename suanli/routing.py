"""``--cluster auto``: weigh every configured partition for one job and choose where it starts first.

Each partition is prepared and planned exactly as a named submission would be (so the kind, size and time
checks are the same ones), its worst-case charge is checked against the account's quotas without reserving,
and the backends are asked, all at once and within one bound, when they expect the plan to start (Slurm:
``sbatch --test-only`` with the plan's own options). :func:`suanli.compute.route.pick` then chooses. The rows
are kept on the job, so ``suanli status JOB --explain`` shows later why it went where it did.
"""

from __future__ import annotations

import dataclasses
import time
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from suanli.adapters import get_adapter
from suanli.compute.base import Backend, Plan, StartEstimate, Submission
from suanli.compute.config import AUTO, ClusterConfig, PartitionConfig
from suanli.compute.route import MAX_CANDIDATES, Candidate, closest_miss, pick
from suanli.errors import BackendError, QuotaExceeded, SuanliError, UsageError
from suanli.jobs.spec import JobSpec

if TYPE_CHECKING:
    from suanli.api import Client


@dataclass
class Routed:
    """A routing decision: the chosen submission, ready to submit, and every row that was weighed."""

    sub: Submission
    backend: Backend
    plan: Plan
    rows: list[Candidate]
    chosen: Candidate
    prefer: str
    decided_at: float

    def to_json(self) -> dict[str, Any]:
        return {"cluster": self.chosen.cluster, "partition": self.chosen.partition, "prefer": self.prefer,
                "decided_at": self.decided_at, "candidates": [c.to_json() for c in self.rows]}


class RoutingFailed(SuanliError):
    """No candidate is left; carries the rows so ``--explain`` can still show them."""

    def __init__(self, message: str, exit_code: int, rows: list[Candidate]) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.rows = rows


def _places(client: Client, spec: JobSpec, cluster: str | None) -> list[tuple[ClusterConfig, PartitionConfig]]:
    """Every (cluster, partition) routing weighs, in config order."""
    configs = client.configs
    name = spec.cluster or cluster
    if name == AUTO:
        settings = configs.settings
        if settings.routing.clusters is not None:
            names = list(settings.routing.clusters)
            for n in names:
                configs.cluster(n)  # an unknown name in settings is an error that lists the valid ones
        else:
            names = [n for n, c in configs.clusters.items()
                     if c.source != "<built-in>" or n == settings.default_cluster]
        cfgs = [configs.clusters[n] for n in names]
    else:
        cfgs = [configs.cluster(name)]
    wanted = None if spec.partition in (None, AUTO) else spec.partition
    out = [(c, p) for c in cfgs for p in c.partitions if wanted is None or p.name == wanted]
    if not out:
        raise UsageError(f"partition: no configured cluster has a partition {wanted!r}; drop --partition or "
                         "name one that `suanli clusters` lists")
    if len(out) > MAX_CANDIDATES:
        raise UsageError(f"cluster auto: {len(out)} partitions to weigh, more than {MAX_CANDIDATES}; list the "
                         "ones to consider in settings.yaml routing.clusters")
    return out


def _pinned_cluster(client: Client, spec: JobSpec) -> str | None:
    """A dependent job runs where its parents run (Slurm dependencies do not cross clusters)."""
    clusters = {client.store.resolve(d.job_id)[0].cluster for d in spec.dependencies}
    if len(clusters) > 1:
        raise UsageError(f"dependency: the jobs this one waits for run on {', '.join(sorted(clusters))}; "
                         "dependencies must stay on one cluster")
    return clusters.pop() if clusters else None


def route(client: Client, spec: JobSpec, cluster: str | None = None) -> Routed:
    """Choose the partition where ``spec`` is expected to start first (within quota); raise RoutingFailed
    (exit 2: nothing fits, 3: every fitting one over quota, 4: every fitting one unreachable) otherwise."""
    settings = client.configs.settings.routing
    places = _places(client, spec, cluster)
    pinned = _pinned_cluster(client, spec)
    rows: list[Candidate] = []
    ready: dict[int, tuple[Submission, Backend, Plan]] = {}
    for order, (cfg, part) in enumerate(places):
        cand = Candidate(cfg.name, part.name, cfg.backend, order)
        rows.append(cand)
        where = f"partition {part.name!r} of cluster {cfg.name!r}"
        if pinned is not None and cfg.name != pinned:
            cand.excluded, cand.reason = "pinned", f"depends on jobs on cluster {pinned!r}"
            continue
        adapter = get_adapter(part.adapter)
        try:
            adapter.check(spec.resources, where)
        except UsageError as exc:
            cand.excluded, cand.reason = "kind", str(exc)
            continue
        if not spec.resources.accelerators_per_node and adapter.accelerator_kind and spec.partition in (None, AUTO):
            cand.excluded = "kind"
            cand.reason = (f"a job without accelerators is not sent to {adapter.accelerator_kind} nodes; name the "
                           "partition (--partition) to run it there")
            continue
        try:
            sub, backend = client.prepare(dataclasses.replace(spec, cluster=cfg.name, partition=part.name))
            plan = backend.plan(sub)
        except UsageError as exc:
            cand.excluded, cand.reason = "fit", str(exc)
            continue
        except BackendError as exc:
            cand.excluded, cand.reason = "unreachable", str(exc)
            continue
        if _quota(client, cand, sub):
            ready[order] = (sub, backend, plan)
    _ask_schedulers(rows, ready, settings.timeout_s)
    now = time.time()
    max_wait = settings.max_wait.total_seconds() if settings.max_wait else None
    chosen = pick(rows, now, "cheapest" if settings.prefer == "cheapest" else "earliest", max_wait)
    if chosen is None:
        raise _failure(rows)
    sub, backend, plan = ready[chosen.order]
    return Routed(sub, backend, plan, rows, chosen, settings.prefer, now)


def _quota(client: Client, cand: Candidate, sub: Submission) -> bool:
    """Fill the candidate's worst-case charge and quota room; False (excluded) when a quota refuses it."""
    accounts = client.accounts
    est = accounts.estimate(sub)
    cand.charge = est.charge
    if not client.quota_may_apply(sub):
        return True
    try:
        checks = accounts.admit(sub, est, reserve=False)
    except QuotaExceeded as exc:
        cand.excluded, cand.reason = "quota", str(exc)
        return False
    except UsageError as exc:  # a quota in force needs a time limit
        cand.excluded, cand.reason = "fit", str(exc)
        return False
    if checks:
        tight = min(checks, key=lambda c: c.remaining - c.need)
        cand.quota_left, cand.quota_label = tight.remaining - tight.need, tight.label()
    return True


_POOL: ThreadPoolExecutor | None = None


def _pool() -> ThreadPoolExecutor:
    """One pool for the process: its threads are started once, not on every decision (a thread start under a
    busy GIL costs milliseconds, as much as the question it asks). Every call it runs is bounded."""
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=16, thread_name_prefix="suanli-route")
    return _POOL


def _ask_schedulers(rows: list[Candidate], ready: dict[int, tuple[Submission, Backend, Plan]],
                    timeout_s: float) -> None:
    """Every candidate's expected start, asked in parallel; one that has not answered by the bound is
    excluded as unreachable (its own call is bounded too, so no thread outlives it by much)."""
    if not ready:
        return
    pool = _pool()
    futures = {order: pool.submit(backend.expected_start, plan, sub, timeout_s)
               for order, (sub, backend, plan) in ready.items()}
    wait(list(futures.values()), timeout=timeout_s + 2.0)
    for order, fut in futures.items():
        cand = rows[order]
        if not fut.done():
            cand.excluded, cand.reason = "unreachable", f"no answer within {timeout_s:g} s"
            continue
        exc = fut.exception()
        if isinstance(exc, BackendError):
            cand.excluded, cand.reason = "unreachable", str(exc)
            continue
        if exc is not None:
            raise exc
        est: StartEstimate = fut.result()
        cand.start, cand.start_source = est.at, est.source
        if est.refused:
            cand.excluded, cand.reason = "refused", est.refused


def _failure(rows: list[Candidate]) -> RoutingFailed:
    fitting = [c for c in rows if c.excluded in ("quota", "unreachable")]
    kinds = {c.excluded for c in fitting}
    n = len(rows)
    hint = "suanli submit --dry-run --cluster auto --explain lists every candidate"
    if "quota" in kinds:
        c = next(c for c in fitting if c.excluded == "quota")
        return RoutingFailed(f"cluster auto: every partition that fits is over quota ({n} weighed); "
                             f"{c.cluster}/{c.partition}: {c.reason}", QuotaExceeded.exit_code, rows)
    if kinds == {"unreachable"}:
        c = fitting[0]
        return RoutingFailed(f"cluster auto: every cluster that fits is unreachable ({n} weighed); "
                             f"{c.cluster}/{c.partition}: {c.reason}", BackendError.exit_code, rows)
    miss = closest_miss(rows)
    detail = f"; closest: {miss.cluster}/{miss.partition}: {miss.reason}" if miss else ""
    return RoutingFailed(f"cluster auto: no partition fits this job ({n} weighed){detail} ({hint})",
                         UsageError.exit_code, rows)
