"""Commands and the components of a heterogeneous job: several parts with their own command, resources and
partition, run in ONE allocation (a Slurm hetjob), such as a CPU preprocessing part beside an accelerator
training part. Apart from ``spec.py`` so the spec stays readable; pure data, no backend imports."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from suanli.errors import UsageError
from suanli.jobs.resources import Resources

#: Most components of one job (Slurm allows more; a job of more parts is better several jobs).
MAX_COMPONENTS = 16


def _argv(value: Sequence[str] | str, field_name: str) -> tuple[str, ...]:
    if isinstance(value, str):
        raise UsageError(
            f"{field_name}: give an argv list such as ['python', 'sim.py'], not the string {value!r} "
            "(a string would need a shell to split it)"
        )
    if not isinstance(value, list | tuple):
        raise UsageError(f"{field_name}: {value!r} is not an argv list; give one such as ['python', 'sim.py']")
    argv = tuple(value)
    if not argv:
        raise UsageError(f"{field_name}: the command is empty; give the program and its arguments")
    for a in argv:
        if not isinstance(a, str):
            raise UsageError(f"{field_name}: argument {a!r} is not a string")
        if "\x00" in a:
            raise UsageError(f"{field_name}: argument {a!r} holds a NUL byte, which no program can receive")
    return argv


@dataclass(frozen=True)
class Command:
    """A program and its arguments, run as an argv list (never through a shell)."""

    argv: tuple[str, ...]

    def __init__(self, argv: Sequence[str] | str) -> None:
        object.__setattr__(self, "argv", _argv(argv, "command"))

    kind = "command"


@dataclass(frozen=True)
class Component:
    """One part of a heterogeneous job: its command runs on its own nodes (``srun --het-group``) with its
    own resources and partition; the job's name, time limit, account and other scheduler options are shared."""

    workload: Command
    resources: Resources = field(default_factory=Resources)
    partition: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.workload, list | tuple):
            object.__setattr__(self, "workload", Command(self.workload))
        if not isinstance(self.workload, Command):
            raise UsageError(f"workload: {self.workload!r} is not a Command; a component runs a command "
                             "(argv list)")
        if not isinstance(self.resources, Resources):
            raise UsageError(f"resources: {self.resources!r} is not a suanli.Resources")
        if self.partition is not None and (not isinstance(self.partition, str) or "\x00" in self.partition):
            raise UsageError(f"partition: {self.partition!r} is not a partition name")


def _only_time(res: Resources) -> bool:
    return dataclasses.replace(res, time=None) == Resources()


def _same_request(res: Resources, first: Resources) -> bool:
    """``res`` is component 0's request (its kind may have been filled in since)."""
    fields = ("nodes", "tasks_per_node", "cpus_per_task", "memory", "accelerators")
    return all(getattr(res, f) == getattr(first, f) for f in fields) and (
        first.accelerator_kind in (None, res.accelerator_kind))


#: A spec with components holds component 0's workload, resources and partition as its own, so
#: ``dataclasses.replace(spec, components=[...])`` hands the old component 0's to the new components.
_REPLACED = (" (to change a job's components, build a new JobSpec(components=[...]) or use "
             "suanli.jobs.components.with_components(spec, [...]), not dataclasses.replace)")


def with_components(spec: Any, components: Sequence[Component]) -> Any:
    """``spec`` with other components (``dataclasses.replace`` would keep the old component 0's workload,
    resources and partition, which are the job's own): the rest of the spec and the job's time limit stay."""
    return dataclasses.replace(spec, components=components, workload=None,
                               resources=Resources(time=spec.resources.time), partition=None)


def resolve_components(value: Any, workload: Any, resources: Resources, partition: str | None,
                       ) -> tuple[tuple[Component, ...], Command, Resources, str | None]:
    """Check a job's components; return them with the job's workload, resources and partition, which are
    component 0's (so everything that looks at one job's request sees the first component's), the time limit
    being the job's own. Building again from the result (``dataclasses.replace``) gives the same result."""
    if isinstance(value, Component) or not isinstance(value, list | tuple):
        raise UsageError(f"components: {value!r} is not a list of suanli.Component")
    comps = tuple(value)
    if not 2 <= len(comps) <= MAX_COMPONENTS:
        raise UsageError(f"components: {len(comps)} given; a heterogeneous job has 2 to {MAX_COMPONENTS} "
                         "components (one part is a plain job: drop components)")
    for i, c in enumerate(comps):
        if not isinstance(c, Component):
            raise UsageError(f"components[{i}]: {c!r} is not a suanli.Component")
        if c.resources.time_limit is not None:
            raise UsageError(f"components[{i}].resources.time: the time limit is the job's, shared by every "
                             "component; set it on the job (resources.time / --time)")
    first = comps[0]
    if workload is not None and workload != first.workload:
        raise UsageError("workload: a job with components runs each component's command; drop the job's own "
                         f"workload (command){_REPLACED}")
    if _only_time(resources):
        res = dataclasses.replace(first.resources, time=resources.time)
    elif _same_request(resources, first.resources):
        res = resources  # component 0's, as prepared (its accelerator kind filled in from the partition)
    else:
        raise UsageError("resources: a job with components takes nodes, tasks, CPUs, memory and accelerators per "
                         f"component; the job's resources may hold only time{_REPLACED}")
    if partition is not None and first.partition is not None and partition != first.partition:
        raise UsageError("partition: a job with components takes its partitions per component; drop the job's "
                         f"partition{_REPLACED}")
    return comps, first.workload, res, partition if partition is not None else first.partition


def check_component_spec(array: object, max_restarts: int) -> None:
    """What a heterogeneous job cannot also be (Slurm runs no array of hetjobs; suanli requeues none)."""
    if array is not None:
        raise UsageError("array: a job with components cannot be an array (Slurm runs no heterogeneous "
                         "arrays); submit one job per task, or drop components")
    if max_restarts:
        raise UsageError("requeue: a job with components is not requeued by suanli; drop requeue "
                         "(max_restarts) or components")
