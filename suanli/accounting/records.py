"""One usage record per job attempt (or array task attempt): what the ledger stores and reports sum up.

CPU-seconds are allocated CPUs x elapsed seconds on every backend (Slurm's CPUTimeRAW), never measured CPU
time, so a job that idles is charged like one that computes. Seconds stay exact; rounding is for display.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, fields


@dataclass(slots=True)
class UsageRecord:
    record_id: str  # stable across syncs: the upsert key that makes sync idempotent
    cluster: str
    backend: str
    native_id: str | None
    job_id: str | None  # the suanli id, when suanli submitted it
    array_task: int | None
    attempt: int
    user: str | None
    account: str | None
    partition: str | None
    adapter: str | None
    accelerator_kind: str | None
    nodes: int
    cpus: int
    accelerators: int
    submit_time: float | None
    start_time: float | None
    end_time: float | None
    elapsed_s: float
    state: str
    cpu_seconds: float
    accelerator_seconds: float
    charge: float
    total_cpu_s: float | None  # measured CPU time where the backend reports it (sacct TotalCPU), for efficiency
    source: str
    booked_day: str | None = None  # YYYY-MM-DD when the source already has it as text (sacct's End)

    @property
    def day(self) -> str | None:
        """The local calendar day the usage is booked on: the day it ended (as sacct's -S/-E, local time)."""
        if self.booked_day:
            return self.booked_day
        t = self.end_time or self.start_time or self.submit_time
        return None if t is None else time.strftime("%Y-%m-%d", time.localtime(t))

    def row(self) -> tuple[object, ...]:
        """The ledger row, in COLUMNS order (written out: dataclasses.astuple costs more than the insert)."""
        day = self.day
        return (self.record_id, self.cluster, self.backend, self.native_id, self.job_id, self.array_task,
                self.attempt, self.user, self.account, self.partition, self.adapter, self.accelerator_kind,
                self.nodes, self.cpus, self.accelerators, self.submit_time, self.start_time, self.end_time,
                self.elapsed_s, self.state, self.cpu_seconds, self.accelerator_seconds, self.charge,
                self.total_cpu_s, self.source, day, None if day is None else day[:7])

    def to_json(self) -> dict[str, object]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "booked_day"}


#: Column names in ``UsageRecord.row()`` order (the ledger table adds ``recorded_at``).
COLUMNS = tuple(f.name if f.name not in ("user", "partition") else f.name + "_name"
                for f in fields(UsageRecord) if f.name != "booked_day") + ("day", "month")


def charge_of(cpu_seconds: float, accelerator_seconds: float, cpu_hour: float, accelerator_hour: float) -> float:
    return cpu_seconds / 3600.0 * cpu_hour + accelerator_seconds / 3600.0 * accelerator_hour
