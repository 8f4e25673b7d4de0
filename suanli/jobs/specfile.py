"""Job spec files (``suanli submit JOB.yaml``): the same fields as the Python API, with file:line errors."""

from __future__ import annotations

import importlib
import re
from collections.abc import Mapping
from typing import Any

from suanli.errors import ConfigError, UsageError
from suanli.jobs.components import MAX_COMPONENTS, Component
from suanli.jobs.resources import Resources
from suanli.jobs.scheduler import SchedulerOptions, check_stdio
from suanli.jobs.spec import MPI, Array, Command, Dependency, Function, JobSpec, Training, Workload
from suanli.yamlfile import Source, load_yaml

WORKLOAD_KEYS = ("command", "function", "training", "mpi")
#: sbatch options (``JobSpec.scheduler``), top-level keys like the API's keyword arguments.
SCHEDULER_KEYS = ("exclusive", "reservation", "mail_type", "mail_user", "mem_per_cpu", "gres", "nodelist",
                  "exclude", "export", "extra")
STDIO_KEYS = ("stdin", "stdout", "stderr")
SPEC_KEYS = (
    "name", "cluster", "partition", "account", "qos", "constraint", "resources", "env", "setup", "workdir",
    "array", "after", "requeue", *STDIO_KEYS, *SCHEDULER_KEYS, *WORKLOAD_KEYS, "components",
)
#: The keys of one item of ``components`` (a heterogeneous job's part: its own command, resources, partition).
COMPONENT_KEYS = ("command", "resources", "partition")
# (a map workload comes from Python only: its items are Python objects, not YAML)
RESOURCE_KEYS = ("nodes", "tasks_per_node", "cpus_per_task", "memory", "accelerators", "time")


def load_spec_file(path: str) -> JobSpec:
    return parse_spec(load_yaml(path))


def _check_keys(src: Source, data: Any, path: tuple[str | int, ...], allowed: tuple[str, ...]) -> Mapping[str, Any]:
    result: Mapping[str, Any] = src.mapping(data, path, allowed)
    return result


def _guard(src: Source, path: tuple[str | int, ...], make: Any) -> Any:
    """Run a constructor; its UsageError gets the file, line and key path."""
    try:
        return make()
    except ConfigError:
        raise  # already names the file and line
    except UsageError as exc:
        msg = str(exc)
        m = re.match(r"^([\w.]+): ", msg)
        if m and path and m.group(1).split(".")[0] == path[-1]:
            # "resources.time: ..." raised for path ("resources",) points at the time key itself.
            path = path + tuple(m.group(1).split(".")[1:])
            msg = msg[m.end():]
        src.fail(path, msg)


def parse_spec(src: Source) -> JobSpec:
    data = _check_keys(src, src.data, (), SPEC_KEYS)
    given = [k for k in WORKLOAD_KEYS if k in data]
    components: tuple[Component, ...] = ()
    workload: Workload
    if "components" in data:
        if given:
            src.fail((given[0],), "a job with components runs each component's command; move it into a "
                     "component, or drop components")
        components = _components(src, data["components"])
        workload = components[0].workload  # the job's workload is component 0's
    elif len(given) != 1:
        src.fail((), f"give exactly one workload key of: {', '.join(WORKLOAD_KEYS)} (found {len(given)})")
    else:
        key = given[0]
        workload = _guard(src, (key,), lambda: _workload(src, key, data[key]))
    resources = _resources(src, ("resources",), data.get("resources"))
    strings = {k: _scalar(src, k, data.get(k), numbers=k != "workdir")
               for k in ("name", "cluster", "partition", "account", "qos", "constraint", "workdir")}
    array = data.get("array")
    if array is not None:
        array = _guard(src, ("array",), lambda: Array.parse(_array_value(src, array)))
    after = [_guard(src, ("after",) if i is None else ("after", i), lambda a=a: Dependency.parse(a))
             for i, a in _after(src, data.get("after"))]
    stdio = {k: _scalar(src, k, data.get(k), numbers=False) for k in STDIO_KEYS}
    for k, v in stdio.items():
        _guard(src, (k,), lambda k=k, v=v: check_stdio(k, v, array is not None))
    scheduler = _scheduler(src, data)
    spec: JobSpec = _guard(src, (), lambda: JobSpec(
        workload=workload,
        scheduler=scheduler,
        **stdio,
        resources=resources,
        env=_env(src, data.get("env")),
        setup=_setup(src, data.get("setup")),
        array=array,
        dependencies=tuple(after),
        max_restarts=_requeue(src, data.get("requeue")),
        components=components,
        **strings,
    ))
    return spec


def _resources(src: Source, path: tuple[str | int, ...], value: Any) -> Resources:
    res_data = dict(_check_keys(src, value or {}, path, RESOURCE_KEYS))
    if "time" in res_data:
        res_data["time"] = src.text((*path, "time"), res_data["time"])
    result: Resources = _guard(src, path, lambda: Resources(**res_data))
    return result


def _components(src: Source, value: Any) -> tuple[Component, ...]:
    """``components:`` -- a list of {command, resources, partition}, each checked with its own line."""
    if not isinstance(value, list):
        src.fail(("components",), "expected a list of components, each {command: [...], resources: {...}, "
                 "partition: NAME}")
    if not value:
        src.fail(("components",), f"no components; give 2 to {MAX_COMPONENTS}, or drop components")
    if len(value) > MAX_COMPONENTS:  # before parsing any: the work stays bounded whatever the file holds
        src.fail(("components",), f"{len(value)} given; a heterogeneous job has 2 to {MAX_COMPONENTS} components "
                 "(submit several jobs instead)")
    out: list[Component] = []
    for i, item in enumerate(value):
        path: tuple[str | int, ...] = ("components", i)
        v = _check_keys(src, item, path, COMPONENT_KEYS)
        if "command" not in v:
            src.fail(path, "a component needs its command: [program, args...]")
        command = _guard(src, (*path, "command"), lambda p=path, c=v["command"]: Command(
            src.text_list((*p, "command")) or c))
        resources = _resources(src, (*path, "resources"), v.get("resources"))
        partition = _scalar(src, (*path, "partition"), v.get("partition")) if "partition" in v else None
        out.append(_guard(src, path, lambda c=command, r=resources, p=partition: Component(c, r, p)))
    return tuple(out)


def _scheduler(src: Source, data: Mapping[str, Any]) -> SchedulerOptions:
    """The sbatch options, each checked on its own so an error names its key's line."""
    values: dict[str, Any] = {}
    for key in SCHEDULER_KEYS:
        if key not in data or data[key] is None:
            continue
        value = data[key]
        if key == "extra":
            if not isinstance(value, Mapping):
                src.fail(("extra",), "expected a mapping of sbatch option: value, such as {begin: now+1hour}")
            value = {k: v if isinstance(v, bool) else src.text(("extra", k), v) for k, v in value.items()}
        elif isinstance(value, list):
            value = [src.text((key, i), v) for i, v in enumerate(value)]
        elif not isinstance(value, bool):
            value = src.text((key,), value)
        values[key] = value
        _guard(src, (key,), lambda k=key, v=value: SchedulerOptions(**{k: v}))
    result: SchedulerOptions = _guard(src, (), lambda: SchedulerOptions(**values))
    return result


def _scalar(src: Source, key: str | tuple[str | int, ...], value: Any, numbers: bool = True) -> str | None:
    """A string field (``key``: a top-level key, or the full path of a nested one such as a component's
    partition); a number counts only where names may be numeric, and then as written (``name: 0755``)."""
    path = key if isinstance(key, tuple) else (key,)
    if value is None or isinstance(value, str):
        return value
    if numbers and isinstance(value, int) and not isinstance(value, bool):
        return str(src.text(path, value))
    src.fail(path, f"{value!r} is not a string; quote it ('{value}')" if not isinstance(value, list | dict)
             else f"expected a string, got a {type(value).__name__}")


def _array_value(src: Source, value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, str | int | list):
        src.fail(("array",), f"{value!r} is not an array spec; use 0-99, 0-99%10, 1,3,5 or a list of indices")
    return str(value) if isinstance(value, int) else value


def _after(src: Source, value: Any) -> list[tuple[int | None, str]]:
    """Job ids as written: ``after: 12345`` is a native id, ``after: [a1b2c3d4, afterany:x9y8z7w6]``."""
    if value is None:
        return []
    items = value if isinstance(value, list) else [value]
    out: list[tuple[int | None, str]] = []
    for i, item in enumerate(items):
        at = i if isinstance(value, list) else None
        path: tuple[str | int, ...] = ("after",) if at is None else ("after", at)
        if isinstance(item, bool) or not isinstance(item, str | int):
            src.fail(path, f"{item!r} is not a job id; give JOB, afterok:JOB or afterany:JOB")
        out.append((at, str(src.text(path, item))))
    return out


def _env(src: Source, value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        src.fail(("env",), "expected a mapping of NAME: value")
    env: dict[str, str] = {}
    for k, v in value.items():
        if isinstance(v, list | dict):
            src.fail(("env", k), f"the value of {k} is a {type(v).__name__}; give a string")
        env[str(k)] = "" if v is None else str(src.text(("env", k), v))
    return env


def _setup(src: Source, value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, list):
        src.fail(("setup",), f"expected a line of shell or a list of lines, got a {type(value).__name__}")
    for i, line in enumerate(value):
        if not isinstance(line, str):
            src.fail(("setup", i), f"{line!r} is not a line of shell; quote it")
    return tuple(value)


def _requeue(src: Source, value: Any) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        src.fail(("requeue",), f"{value!r} must be a whole number >= 0 (the maximum restarts)")
    return value


def _list(src: Source, path: tuple[str | int, ...], value: Any) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        src.fail(path, f"expected a list, got {type(value).__name__} {value!r}")
    return value


def _workload(src: Source, key: str, value: Any) -> Workload:
    if key == "command":
        return Command(src.text_list(("command",)) or value)
    if key == "mpi":
        if isinstance(value, list):
            return MPI(src.text_list(("mpi",)) or value)
        v = _check_keys(src, value, ("mpi",), ("argv", "ranks", "ranks_per_node", "launcher"))
        return MPI(src.text_list(("mpi", "argv")) or v.get("argv") or [], v.get("ranks"), v.get("ranks_per_node"),
                   v.get("launcher"))
    if key == "training":
        v = _check_keys(src, value, ("training",), ("script", "module", "args", "nproc_per_node"))
        for k in ("script", "module"):
            if v.get(k) is not None and not isinstance(v[k], str):
                src.fail(("training", k), f"{v[k]!r} is not a string")
        _list(src, ("training", "args"), v.get("args"))
        args = src.text_list(("training", "args")) or v.get("args") or ()
        return Training(script=v.get("script"), module=v.get("module"), args=tuple(args),
                        nproc_per_node=v.get("nproc_per_node"))
    v = _check_keys(src, value, ("function",), ("call", "args", "kwargs"))
    target = v.get("call")
    if not isinstance(target, str) or ":" not in target:
        src.fail(("function", "call"), f"{target!r} is not a reference; use 'package.module:function'")
    fn_args = _list(src, ("function", "args"), v.get("args"))
    kwargs = v.get("kwargs") or {}
    if not isinstance(kwargs, Mapping) or not all(isinstance(k, str) for k in kwargs):
        src.fail(("function", "kwargs"), f"expected a mapping of name: value, got {kwargs!r}")
    module, _, attr = target.partition(":")
    try:
        fn = importlib.import_module(module)
        for part in attr.split("."):
            fn = getattr(fn, part)
    except (ImportError, AttributeError) as exc:
        src.fail(("function", "call"), f"cannot import {target!r}: {exc}")
    return Function(fn, tuple(fn_args), dict(kwargs))  # type: ignore[arg-type]
