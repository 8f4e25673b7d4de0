"""Job spec files (``suanli submit JOB.yaml``): the same fields as the Python API, with file:line errors."""

from __future__ import annotations

import importlib
import re
from collections.abc import Mapping
from typing import Any

from suanli.errors import UsageError
from suanli.jobs.resources import Resources
from suanli.jobs.spec import MPI, Array, Command, Dependency, Function, JobSpec, Training, Workload
from suanli.yamlsrc import Source, load_yaml

WORKLOAD_KEYS = ("command", "function", "training", "mpi")
SPEC_KEYS = (
    "name", "cluster", "partition", "account", "qos", "constraint", "resources", "env", "setup", "workdir",
    "array", "after", "requeue", *WORKLOAD_KEYS,
)
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
    if len(given) != 1:
        src.fail((), f"give exactly one workload key of: {', '.join(WORKLOAD_KEYS)} (found {len(given)})")
    key = given[0]
    workload: Workload = _guard(src, (key,), lambda: _workload(src, key, data[key]))
    res_data = dict(_check_keys(src, data.get("resources") or {}, ("resources",), RESOURCE_KEYS))
    if "time" in res_data:
        res_data["time"] = src.text(("resources", "time"), res_data["time"])
    resources = _guard(src, ("resources",), lambda: Resources(**res_data))
    after = data.get("after") or []
    if isinstance(after, str):
        after = [after]
    env = data.get("env") or {}
    if not isinstance(env, Mapping):
        src.fail(("env",), "expected a mapping of NAME: value")
    setup = data.get("setup") or ()
    if isinstance(setup, str):
        setup = (setup,)
    for k in ("name", "cluster", "partition", "account", "qos", "constraint", "workdir"):
        if k in data and data[k] is not None and not isinstance(data[k], str | int):
            src.fail((k,), f"{data[k]!r} is not a string")
    spec: JobSpec = _guard(src, (), lambda: JobSpec(
        workload=workload,
        name=_opt_str(data.get("name")),
        resources=resources,
        env={str(k): "" if v is None else str(src.text(("env", k), v)) for k, v in env.items()},
        setup=tuple(setup),
        workdir=_opt_str(data.get("workdir")),
        cluster=_opt_str(data.get("cluster")),
        partition=_opt_str(data.get("partition")),
        account=_opt_str(data.get("account")),
        qos=_opt_str(data.get("qos")),
        constraint=_opt_str(data.get("constraint")),
        array=None if data.get("array") is None else Array.parse(str(data["array"])),
        dependencies=tuple(Dependency.parse(str(a)) for a in after),
        max_restarts=int(data.get("requeue") or 0),
    ))
    return spec


def _opt_str(v: Any) -> str | None:
    return None if v is None else str(v)


def _workload(src: Source, key: str, value: Any) -> Workload:
    if key == "command":
        return Command(src.text_list(("command",)) or value)
    if key == "mpi":
        if isinstance(value, list):
            return MPI(src.text_list(("mpi",)) or value)
        v = _check_keys(src, value, ("mpi",), ("argv", "ranks", "ranks_per_node"))
        return MPI(src.text_list(("mpi", "argv")) or v.get("argv") or [], v.get("ranks"), v.get("ranks_per_node"))
    if key == "training":
        v = _check_keys(src, value, ("training",), ("script", "module", "args", "nproc_per_node"))
        args = src.text_list(("training", "args")) or v.get("args") or ()
        return Training(script=v.get("script"), module=v.get("module"), args=tuple(args),
                        nproc_per_node=v.get("nproc_per_node"))
    v = _check_keys(src, value, ("function",), ("call", "args", "kwargs"))
    target = v.get("call")
    if not isinstance(target, str) or ":" not in target:
        src.fail(("function", "call"), f"{target!r} is not a reference; use 'package.module:function'")
    module, _, attr = target.partition(":")
    try:
        fn = importlib.import_module(module)
        for part in attr.split("."):
            fn = getattr(fn, part)
    except (ImportError, AttributeError) as exc:
        src.fail(("function", "call"), f"cannot import {target!r}: {exc}")
    return Function(fn, tuple(v.get("args") or ()), dict(v.get("kwargs") or {}))  # type: ignore[arg-type]
