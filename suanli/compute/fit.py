"""Does a request fit a partition? Checked before anything is submitted, with the fix in the message."""

from __future__ import annotations

from typing import TYPE_CHECKING

from suanli.errors import UsageError

if TYPE_CHECKING:
    from suanli.compute.config import PartitionConfig
    from suanli.jobs.resources import Resources
    from suanli.jobs.spec import JobSpec


# ---------------------------------------------------------------- request checks
def check_fits(res: Resources, part: PartitionConfig, where: str) -> None:
    """Refuse a request larger than the partition before anything is submitted."""

    def too_big(what: str, asked: object, have: object, hint: str) -> UsageError:
        return UsageError(f"{what}: asked for {asked}, but {where} has {have}; {hint}")

    if part.nodes is not None and res.nodes > part.nodes:
        raise too_big("nodes", res.nodes, f"{part.nodes} node(s)", "ask for fewer nodes")
    if part.cpus_per_node is not None and res.cpus_per_node > part.cpus_per_node:
        raise too_big("cpus", f"{res.cpus_per_node} CPUs per node ({res.tasks_per_node} tasks or ranks x "
                      f"{res.cpus_per_task} cpus)", f"{part.cpus_per_node} per node",
                      "ask for fewer tasks, ranks (nproc_per_node, ranks) or CPUs per task")
    if res.accelerators_per_node > part.accelerators_per_node:
        raise too_big("accelerators", f"{res.accelerators_per_node} per node",
                      f"{part.accelerators_per_node} per node", "ask for fewer accelerators per node, more nodes")
    if part.memory_per_node_mb is not None and res.memory_mb is not None and res.memory_mb > part.memory_per_node_mb:
        raise too_big("memory", f"{res.memory_mb} MiB per node", f"{part.memory_per_node_mb} MiB per node",
                      "ask for less memory")
    limit = res.time_limit
    if part.max_time is not None and limit is not None and limit > part.max_time:
        raise too_big("time", str(limit), f"a max_time of {part.max_time}", "ask for a shorter --time")


# ---------------------------------------------------------------- backend capabilities
#: What each capability means to a spec, how to do without it, and where it runs instead.
_NEEDS = {
    "arrays": ("array", "arrays (and maps)", "submit one job per task", "a slurm or local cluster"),
    "requeue": ("max_restarts", "restarts", "drop --max-restarts", "a slurm or local cluster"),
    "dependencies": ("dependency", "dependencies", "submit the job once the other has ended",
                     "a slurm or local cluster"),
    "functions": ("workload", "Python functions", "run the code as a command", "a slurm or local cluster"),
    "sbatch_options": ("", "sbatch options", "drop it", "a slurm cluster"),
    "stdio_paths": ("", "custom stdin/stdout/stderr paths", "drop it (logs stay in the job folder)",
                    "a slurm or local cluster"),
    "components": ("components", "heterogeneous jobs (components)", "submit one job per component",
                   "a slurm cluster"),
}


def check_capabilities(spec: JobSpec, capabilities: frozenset[str], where: str) -> None:
    """Refuse, before anything is recorded or submitted, a spec that needs what the backend cannot do
    (``Backend.capabilities``), instead of letting it run half or differently (an sbatch option a backend
    ignored would be a job that runs without the node, reservation or mail the user asked for)."""
    from suanli.jobs.spec import Function, Map

    stdio = [k for k in ("stdin", "stdout", "stderr") if getattr(spec, k) is not None]
    sbatch = spec.scheduler.set_fields()
    needed = {
        "arrays": spec.array is not None,
        "requeue": spec.max_restarts > 0,
        "dependencies": bool(spec.dependencies),
        "functions": isinstance(spec.workload, Function | Map),
        "sbatch_options": bool(sbatch),
        "stdio_paths": bool(stdio),
        "components": bool(spec.components),
    }
    for cap, needs in needed.items():
        if needs and cap not in capabilities:
            field, what, fix, instead = _NEEDS[cap]
            if cap == "sbatch_options":
                field, what = sbatch[0], f"sbatch options ({', '.join(sbatch)})"
            elif cap == "stdio_paths":
                field = stdio[0]
            raise UsageError(f"{field}: {where} cannot run {what}; {fix}, or use {instead}")
