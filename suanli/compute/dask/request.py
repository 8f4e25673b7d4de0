"""A sweep's pilot request: the options of ``map(..., engine="dask")`` checked and resolved like a submission's.
Apart from ``engine.py`` (the sweep driver) because it runs before dask is imported and fails fast, one line."""

from __future__ import annotations

import dataclasses
import os
import re
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from suanli.compute.base import Backend, Submission
from suanli.compute.config import ClusterConfig, Configs
from suanli.compute.store import JobRow, Store
from suanli.errors import UsageError
from suanli.jobs.options import BY_KEYWORD, OPTIONS, Option, in_group, keywords
from suanli.jobs.resources import Resources
from suanli.jobs.spec import Function, JobSpec

#: Options of ``map`` that apply to a dask pilot job (keyword -> Resources field / JobSpec field), from the
#: one option table (``jobs/options.py``: an entry whose ``dask`` is empty).
RESOURCE_OPTIONS = {kw: o.field for o in in_group("resources") if not o.dask for kw in o.keywords}
SPEC_OPTIONS = tuple(kw for o in OPTIONS if o.group != "resources" and not o.dask for kw in o.keywords)
#: Options of the dask engine itself.
ENGINE_OPTIONS = ("interface", "stall_timeout")
#: With no worker connected and every pilot job ended this long, the sweep gives up (the pilots cannot start).
STALL_TIMEOUT_S = 60.0
#: Memory per core of a pilot that asks for none, where the partition's config does not say its memory.
DEFAULT_MEMORY_PER_CORE_MB = 1024
_ADDR = re.compile(r"NodeAddr=(\S+)", re.I)
_NODE = re.compile(r"^\s*NodeName=(\S+)", re.I | re.M)


class MapClient(Protocol):
    """What the engine needs from ``suanli.api.Client`` (this layer may not import it)."""

    store: Store

    @property
    def configs(self) -> Configs: ...

    def prepare(self, spec: JobSpec, cluster: str | None = None) -> tuple[Submission, Backend]: ...

    def refresh(self, rows: Sequence[JobRow]) -> None: ...

    def cancel_many(self, targets: Sequence[tuple[JobRow, int | None]]) -> None: ...


# ---------------------------------------------------------------- options
@dataclass(frozen=True)
class PilotRequest:
    """One pilot job's resolved request: what ``Client.prepare`` made of the options."""

    sub: Submission
    interface: str | None
    stall_timeout: float
    backend: Backend  # the cluster's Slurm backend: it renders the scheduler options (``resource_options``)
    #: The scheduler's own interface when the nodes are elsewhere and no ``interface`` was given: the one this
    #: machine reaches them by (the workers then find their own route to it).
    scheduler_interface: str | None = None


def resolve(client: MapClient, fn: Callable[[Any], Any], cluster: str | None, options: dict[str, Any]) -> PilotRequest:
    """Check the cluster and the options; resolve partition, account, defaults and limits like a submission."""
    cfg = client.configs.cluster(cluster)
    if cfg.backend != "slurm":
        raise UsageError(f"map: engine 'dask' needs a slurm cluster, but cluster {cfg.name!r} uses the "
                         f"{cfg.backend!r} backend; use engine 'array' there, or a slurm cluster")
    res_opts: dict[str, Any] = {}
    spec_opts: dict[str, Any] = {}
    interface: str | None = None
    stall = STALL_TIMEOUT_S
    for key, value in options.items():
        if key == "interface":
            interface = None if value is None else str(value)
        elif key == "stall_timeout":
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise UsageError(f"map: stall_timeout {value!r} is not a positive number of seconds")
            stall = float(value)
        else:
            option = _pilot_option(key)
            if option.group == "resources":
                res_opts[option.field] = value
            else:
                spec_opts[option.target] = value
    res = Resources(**res_opts)  # the same one-line UsageErrors as submit's options
    setup = spec_opts.pop("setup", ())
    if setup is not None and not isinstance(setup, str | list | tuple):
        raise UsageError(f"map: setup {setup!r} is not a shell line or a list of them")
    setup = (setup,) if isinstance(setup, str) else tuple(setup or ())
    workdir = spec_opts.get("workdir")
    if workdir is not None and not os.path.isdir(str(workdir)):
        raise UsageError(f"map: workdir {workdir!r} is not a folder here; the pilot jobs would run elsewhere")
    if interface is not None:
        import psutil

        if interface not in psutil.net_if_addrs():
            raise UsageError(f"map: interface {interface!r} is not a network interface of this machine; have: "
                             f"{', '.join(sorted(psutil.net_if_addrs()))}")
    env = dict(spec_opts.pop("env", None) or {})
    spec = JobSpec(workload=Function(fn), resources=res, cluster=cfg.name, setup=setup, env=env,
                   **{k: v for k, v in spec_opts.items() if v is not None})
    sub, backend = client.prepare(spec, cfg.name)
    sub = with_pilot_memory(sub)
    for what, value in (("account", sub.spec.account), ("qos", sub.spec.qos), ("constraint", sub.spec.constraint)):
        if value is not None and (not value or any(c.isspace() or not c.isprintable() for c in value)):
            raise UsageError(f"{what}: {value!r} must be one word without spaces or control characters")
    scheduler_interface = None
    if interface is None:
        # All nodes here: loopback, nothing listens on the network. Nodes elsewhere: the scheduler listens on
        # the interface this machine reaches them by, so it advertises an address they can connect to.
        if nodes_are_local(cfg):
            interface = "lo"
        else:
            scheduler_interface = node_interface(cfg)
    return PilotRequest(sub=sub, interface=interface, stall_timeout=stall, backend=backend,
                        scheduler_interface=scheduler_interface)


def _pilot_option(key: str) -> Option:
    """The table's entry for a ``map`` keyword a dask pilot takes, else a one-line error saying why not."""
    option = BY_KEYWORD.get(key)
    if option is None:
        valid = sorted({*keywords(dask=True), *ENGINE_OPTIONS})
        raise UsageError(f"map: unknown option {key!r} for engine 'dask'; valid options: {', '.join(valid)}")
    if option.dask:
        raise UsageError(f"map: option {key!r} does not apply to engine 'dask' ({option.dask})")
    return option


def with_pilot_memory(sub: Submission) -> Submission:
    """The pilot's memory, fixed once: the request, or the core's share of the partition's memory per node
    (``DEFAULT_MEMORY_PER_CORE_MB`` a core where the config does not say). The same figure is the worker's
    ``--memory-limit`` and sbatch's ``--mem``, as dask-jobqueue does, so dask spills before Slurm kills."""
    res = sub.spec.resources
    if res.memory_mb:
        return sub
    part = sub.partition
    if part.memory_per_node_mb and part.cpus_per_node:
        mb = max(1, part.memory_per_node_mb * res.cpus_per_task // part.cpus_per_node)
    else:
        mb = DEFAULT_MEMORY_PER_CORE_MB * res.cpus_per_task
    spec = dataclasses.replace(sub.spec, resources=dataclasses.replace(res, memory=mb))
    return dataclasses.replace(sub, spec=spec)


def node_interface(cfg: ClusterConfig) -> str | None:
    """The interface that routes to the first compute node of the cluster's slurm.conf (None: unknown, dask's
    own choice stands)."""
    from suanli.runtime.launch import route_interface

    nodes = _node_lines(cfg)
    for ln in nodes[:1]:
        addr = _ADDR.search(ln)
        name = _NODE.search(ln)
        where = addr.group(1) if addr else (name.group(1) if name else "")
        where = re.sub(r"\[(\d+)[^\]]*\]", r"\1", where)  # n[1-3] -> n1: the first of a range
        return route_interface(where) if where else None
    return None


def _node_lines(cfg: ClusterConfig) -> list[str]:
    conf = cfg.slurm.get("conf") or os.environ.get("SLURM_CONF") or "/etc/slurm/slurm.conf"
    try:
        text = Path(str(conf)).read_text()
    except OSError:
        return []
    lines = [ln.split("#", 1)[0] for ln in text.splitlines()]
    return [ln for ln in lines if re.match(r"^\s*NodeName=", ln, re.I)
            and not re.match(r"^\s*NodeName=DEFAULT\b", ln, re.I)]


def nodes_are_local(cfg: ClusterConfig) -> bool:
    """True when every node of the cluster's slurm.conf is this machine, so the scheduler can stay on
    loopback (nothing listens on the network). Unknown (no readable slurm.conf): False."""
    local = {"localhost", "127.0.0.1", "::1", socket.gethostname(), socket.gethostname().split(".")[0],
             socket.getfqdn()}
    nodes = _node_lines(cfg)
    if not nodes:
        return False
    for ln in nodes:
        addr = _ADDR.search(ln)
        name = _NODE.search(ln)
        where = addr.group(1) if addr else (name.group(1) if name else "")
        if where not in local and not where.startswith("127."):
            return False
    return True
