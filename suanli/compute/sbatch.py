"""sbatch options for a submission's resources, shared by the Slurm backend and the dask engine's pilot jobs
(which may not import the backend): one place that turns a request into ``--opt=value`` arguments."""

from __future__ import annotations

from suanli.compute.base import Submission
from suanli.jobs.resources import format_slurm_time


def resource_options(sub: Submission) -> list[str]:
    """Account, QoS, constraint, memory, time limit and accelerator GRES (from the adapter) of a submission."""
    spec, res = sub.spec, sub.spec.resources
    out: list[str] = []
    if spec.account:
        out.append(f"--account={spec.account}")
    if spec.qos:
        out.append(f"--qos={spec.qos}")
    if spec.constraint:
        out.append(f"--constraint={spec.constraint}")
    if res.memory_mb:
        out.append(f"--mem={res.memory_mb}M")
    if res.time_limit is not None:
        out.append(f"--time={format_slurm_time(res.time_limit)}")
    if res.accelerators_per_node:
        out.append(f"--gres={sub.adapter.gres_name or 'gpu'}:{res.accelerators_per_node}")
    return out
