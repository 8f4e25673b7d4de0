"""/metrics: suanli's usage, quotas, jobs and sync lag in Prometheus' text format (prometheus-client).

Built per scrape from the ledger's roll-ups (the same ``Ledger.report`` as `suanli usage --json`, so the figures
are equal by construction and a test compares them) and one GROUP BY over the registry; no backend is polled.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from suanli.portal.data import PortalData

USAGE_BY = ["cluster", "account", "partition", "accelerator"]
USAGE_LABELS = ["cluster", "account", "partition", "accelerator_kind"]
QUOTA_LABELS = ["quota_id", "account", "user", "cluster", "resource", "accelerator_kind", "window"]

#: (name, help) of every family, for the README and the Grafana dashboard.
METRICS = {
    "suanli_usage_cpu_hours": "cpu-hours booked in the ledger (counter)",
    "suanli_usage_accelerator_hours": "accelerator-hours booked in the ledger (counter)",
    "suanli_usage_charge": "charge units booked in the ledger (counter)",
    "suanli_usage_jobs": "usage records (job attempts) booked in the ledger (counter)",
    "suanli_quota_limit": "a quota's limit in its window (hours or charge units)",
    "suanli_quota_used": "what the quota's window has used",
    "suanli_quota_reserved": "worst cases reserved by running jobs",
    "suanli_quota_remaining": "limit - used - reserved (negative when overdrawn)",
    "suanli_jobs": "tasks of unfinished jobs and tasks that ended in the last 24 h, by cluster and state",
    "suanli_ledger_sync_lag_seconds": "seconds since `accounting sync` last moved this cluster's mark",
    "suanli_metrics_scrape_seconds": "time to build this scrape",
}


class SuanliCollector(Collector):
    def __init__(self, data: PortalData, since: float | None = None, until: float | None = None) -> None:
        self.data = data
        self.since = since
        self.until = until

    def collect(self) -> Iterator[Metric]:
        t0 = time.perf_counter()
        yield from self._usage()
        yield from self._quotas()
        jobs = GaugeMetricFamily("suanli_jobs", METRICS["suanli_jobs"], labels=["cluster", "state"])
        for cluster, state, n in self.data.job_states():
            jobs.add_metric([cluster, state], n)
        yield jobs
        lag = GaugeMetricFamily("suanli_ledger_sync_lag_seconds", METRICS["suanli_ledger_sync_lag_seconds"],
                                labels=["cluster", "scope"])
        for m in self.data.sync_marks():
            lag.add_metric([m["cluster"], m["scope"]], m["lag_s"])
        yield lag
        yield GaugeMetricFamily("suanli_metrics_scrape_seconds", METRICS["suanli_metrics_scrape_seconds"],
                                value=time.perf_counter() - t0)

    def _usage(self) -> Iterator[Metric]:
        fams = {k: CounterMetricFamily(f"suanli_usage_{k}", METRICS[f"suanli_usage_{k}"], labels=USAGE_LABELS)
                for k in ("cpu_hours", "accelerator_hours", "charge", "jobs")}
        if self.data.ledger_ready():
            for r in self.data.ledger.report(USAGE_BY, since=self.since, until=self.until):
                labels = [str(r[k] or "") for k in USAGE_BY]
                for k, fam in fams.items():
                    fam.add_metric(labels, float(r[k]))
        yield from fams.values()

    def _quotas(self) -> Iterator[Metric]:
        fams = {k: GaugeMetricFamily(f"suanli_quota_{k}", METRICS[f"suanli_quota_{k}"], labels=QUOTA_LABELS)
                for k in ("limit", "used", "reserved", "remaining")}
        if self.data.ledger_ready():
            for c in self.data.ledger.quota_status():
                q = c.quota
                labels = [str(q.id), q.account, q.user or "", q.cluster or "", c.resource, c.kind or "", c.window]
                for k, fam in fams.items():
                    fam.add_metric(labels, float(getattr(c, k)))
        yield from fams.values()


def exposition(data: PortalData, since: float | None = None, until: float | None = None) -> bytes:
    from prometheus_client import generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(SuanliCollector(data, since, until))
    return generate_latest(registry)
