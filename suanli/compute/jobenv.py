"""The environment and setup lines every backend gives a job, in one order: suanli's identity variables, its
import path, the adapter's variables, the backend's own, and the user's ``env`` last (the user wins); setup
runs the adapter's toolkit lines, then the cluster's, the partition's and the job's own."""

from __future__ import annotations

from collections.abc import Mapping

from suanli.compute.base import Submission


def identity(sub: Submission, backend: str, job_dir: str, nodes: bool = True) -> dict[str, str]:
    """SUANLI_JOB_ID and the rest that suanli.runtime reads inside the job."""
    env = {
        "SUANLI_JOB_ID": sub.job_id,
        "SUANLI_JOB_NAME": sub.spec.display_name,
        "SUANLI_CLUSTER": sub.cluster.name,
        "SUANLI_BACKEND": backend,
        "SUANLI_JOB_DIR": job_dir,
        "SUANLI_ADAPTER": sub.adapter.name,
    }
    if nodes:
        env["SUANLI_NNODES"] = str(sub.spec.resources.nodes)
    return env


def job_env(sub: Submission, backend: str, job_dir: str, *, pythonpath: Mapping[str, str] | None = None,
            own: Mapping[str, str] | None = None, user: bool = True, nodes: bool = True) -> dict[str, str]:
    """The job's variables, layered in the one order (see the module docstring)."""
    env = identity(sub, backend, job_dir, nodes)
    env.update(pythonpath or {})
    env.update(sub.adapter.environment(sub.spec.resources))
    env.update(own or {})
    if user:
        env.update(sub.spec.env)
    return env


def setup_lines(sub: Submission) -> list[str]:
    """Shell lines run before the workload: adapter toolkit, cluster, partition, then the job's own."""
    return [*sub.adapter.setup_lines(), *sub.cluster.setup, *sub.partition.setup, *sub.spec.setup]
