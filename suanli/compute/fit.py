"""Does a request fit a partition? Checked before anything is submitted, with the fix in the message."""

from __future__ import annotations

from typing import TYPE_CHECKING

from suanli.errors import UsageError

if TYPE_CHECKING:
    from suanli.compute.config import PartitionConfig
    from suanli.jobs.resources import Resources


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
