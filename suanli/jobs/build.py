"""``submit``'s keyword arguments -> a JobSpec: one option table for the Python API (and the CLI, which builds
its spec through it)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from suanli.errors import UsageError
from suanli.jobs.handle import Job
from suanli.jobs.options import OPTIONS, in_group, lookup
from suanli.jobs.resources import Resources
from suanli.jobs.scheduler import SchedulerOptions, scheduler_options
from suanli.jobs.spec import MPI, Array, Command, Dependency, Function, JobSpec, Map, Training

#: Keyword options of ``submit``/``map`` that go into Resources (keyword -> field), from the one option table.
RESOURCE_OPTIONS = {kw: o.field for o in in_group("resources") for kw in o.keywords}
#: Keyword options of ``submit``/``map`` that go into JobSpec (keyword -> field; ``scheduler.FIELD`` for one field
#: of SchedulerOptions; ``scheduler`` for a whole one).
SPEC_OPTIONS = {kw: o.target for o in OPTIONS if o.group != "resources" for kw in o.keywords}


def build_spec(target: Any, args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None, *,
               cluster: str | None = None, partition: str | None = None, account: str | None = None,
               resources: Resources | None = None, name: str | None = None,
               env: Mapping[str, str] | None = None, **options: Any) -> JobSpec:
    """A JobSpec from ``submit``'s arguments: a callable, an argv list, a workload or a JobSpec."""
    res_opts: dict[str, Any] = {}
    spec_opts: dict[str, Any] = {}
    sched_opts: dict[str, Any] = {}
    base_sched: SchedulerOptions | None = None
    for key, value in options.items():
        option = lookup(key, "submit")
        if option.group == "resources":
            res_opts[option.field] = value
        elif option.group == "scheduler":
            sched_opts[option.field] = value
        elif key == "scheduler":
            base_sched = None if value is None else scheduler_options(value)
        else:
            spec_opts[option.target] = value
    if "dependencies" in spec_opts:
        deps = spec_opts["dependencies"]
        if isinstance(deps, str | Job | Dependency) or not isinstance(deps, Iterable):
            deps = [deps]
        spec_opts["dependencies"] = tuple(Dependency.parse(d) for d in deps)
    if "array" in spec_opts and spec_opts["array"] is not None:
        spec_opts["array"] = Array.parse(spec_opts["array"])

    if isinstance(target, JobSpec):
        if args or kwargs:
            raise UsageError("submit: positional args and kwargs belong to a callable, not to a JobSpec")
        spec = target
    else:
        if isinstance(target, Command | Function | Map | Training | MPI):
            workload: Any = target
            if args or kwargs:
                raise UsageError("submit: positional args and kwargs belong to a callable, not to a workload")
        elif callable(target):
            workload = Function(target, tuple(args), dict(kwargs or {}))
        elif isinstance(target, list | tuple) and target and all(isinstance(a, str) for a in target):
            workload = Command([*target, *map(str, args)])
        else:
            raise UsageError(f"submit: {target!r} is not a callable, an argv list, a workload or a JobSpec")
        spec = JobSpec(workload=workload)
    base_res = resources or spec.resources
    if res_opts:
        merged = {f.name: getattr(base_res, f.name) for f in dataclasses.fields(Resources)}
        if "accelerators" in res_opts and "accelerator_kind" not in res_opts:
            merged["accelerator_kind"] = None
        merged.update(res_opts)
        base_res = Resources(**merged)
    changes: dict[str, Any] = {"resources": base_res, **spec_opts}
    if base_sched is not None or sched_opts:
        changes["scheduler"] = SchedulerOptions.build(sched_opts, spec.scheduler if base_sched is None else base_sched)
    for key, value in (("cluster", cluster), ("partition", partition), ("account", account), ("name", name)):
        if value is not None:
            changes[key] = value
    if env:
        changes["env"] = {**spec.env, **env}
    return dataclasses.replace(spec, **changes)
