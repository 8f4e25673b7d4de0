"""Cluster configuration: YAML files that describe clusters and partitions, validated with file:line errors."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, NoReturn

from suanli.adapters import adapter_names, is_adapter
from suanli.compute.config_checks import (
    _NAME,
    _choice,
    _float,
    _get,
    _int,
    _lines,
    _mapping,
    _memory,
    _name,
    _str,
    _time,
)
from suanli.compute.settings import AUTO as AUTO
from suanli.compute.settings import LEDGER_ERROR_POLICIES as LEDGER_ERROR_POLICIES
from suanli.compute.settings import Routing as Routing
from suanli.compute.settings import Settings, parse_settings, settings_from_env
from suanli.errors import ConfigError, SuanliError, UsageError
from suanli.jobs.spec import MAX_ARRAY_TASKS
from suanli.yamlfile import Path_, Source, load_yaml

log = logging.getLogger("suanli")

BACKENDS = ("local", "slurm", "ray")
MPI_LAUNCHERS = ("srun", "mpirun")

CLUSTER_KEYS = (
    "name", "backend", "description", "default_partition", "default_account", "setup", "partitions", "slurm", "ray",
    "max_array_size",
)
#: The most array tasks one submission may have, up to ``max_array_size`` in a cluster's config. Bigger arrays
#: are refused at submission (exit 2): their registry rows, state and bookings grow with the task count.
DEFAULT_MAX_ARRAY_SIZE = 100_000
#: No cluster config can allow more tasks than this (an array index list of this size already takes ~1 GB).
HARD_MAX_ARRAY_SIZE = MAX_ARRAY_TASKS
PARTITION_KEYS = (
    "name", "adapter", "nodes", "cpus_per_node", "accelerators_per_node", "memory_per_node", "numa_nodes",
    "default_time", "max_time", "qos", "constraint", "mpi_launcher", "setup", "charge", "network_interface",
)
CHARGE_KEYS = ("cpu_hour", "accelerator_hour")
BACKEND_SECTION_KEYS: dict[str, tuple[str, ...]] = {
    "slurm": ("conf", "signal_seconds", "job_root", "max_array_size", "submit_rate"),
    "ray": ("address", "job_root", "python"),
}


@dataclass(frozen=True)
class Charge:
    """Billing units per hour: per allocated CPU and per allocated accelerator."""

    cpu_hour: float = 0.0
    accelerator_hour: float = 0.0


@dataclass(frozen=True)
class PartitionConfig:
    name: str
    adapter: str = "cpu"
    nodes: int | None = None
    cpus_per_node: int | None = None
    accelerators_per_node: int = 0
    memory_per_node_mb: int | None = None
    numa_nodes: int | None = None
    default_time: timedelta | None = None
    max_time: timedelta | None = None
    qos: str | None = None
    constraint: str | None = None
    mpi_launcher: str | None = None
    setup: tuple[str, ...] = ()
    charge: Charge = field(default_factory=Charge)
    #: The interface the nodes share (GLOO_SOCKET_IFNAME/NCCL_SOCKET_IFNAME of Training jobs); None: detected.
    network_interface: str | None = None

    @property
    def accelerator_kind(self) -> str | None:
        from suanli.adapters import get_adapter

        return get_adapter(self.adapter).accelerator_kind

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "adapter": self.adapter,
            "nodes": self.nodes,
            "cpus_per_node": self.cpus_per_node,
            "accelerators_per_node": self.accelerators_per_node,
            "memory_per_node_mb": self.memory_per_node_mb,
            "numa_nodes": self.numa_nodes,
            "default_time_s": self.default_time.total_seconds() if self.default_time else None,
            "max_time_s": self.max_time.total_seconds() if self.max_time else None,
            "qos": self.qos,
            "constraint": self.constraint,
            "mpi_launcher": self.mpi_launcher,
            "charge": {"cpu_hour": self.charge.cpu_hour, "accelerator_hour": self.charge.accelerator_hour},
        }


@dataclass(frozen=True)
class ClusterConfig:
    name: str
    backend: str
    partitions: tuple[PartitionConfig, ...]
    description: str = ""
    default_partition: str | None = None
    default_account: str | None = None
    setup: tuple[str, ...] = ()
    slurm: Mapping[str, Any] = field(default_factory=dict)
    ray: Mapping[str, Any] = field(default_factory=dict)
    source: str = "<built-in>"
    #: The validated section named after the backend (``slurm``, ``ray`` or a plug-in backend's own, checked
    #: by its ``Backend.config_section``); what a plug-in backend reads its settings from.
    options: Mapping[str, Any] = field(default_factory=dict)
    #: The most tasks of one array job; None: the backend's default (see ``Client.array_cap``).
    max_array_size: int | None = None

    def partition(self, name: str | None) -> PartitionConfig:
        """The named partition, or the default one; an unknown name lists the valid ones."""
        name = name or self.default_partition or self.partitions[0].name
        for p in self.partitions:
            if p.name == name:
                return p
        valid = ", ".join(p.name for p in self.partitions)
        raise UsageError(f"partition: cluster {self.name!r} has no partition {name!r}; valid partitions: {valid}")

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "backend": self.backend,
            "description": self.description,
            "default_partition": self.default_partition or self.partitions[0].name,
            "default_account": self.default_account,
            "source": self.source,
            "max_array_size": self.max_array_size,
            "partitions": [p.to_json() for p in self.partitions],
        }


# ---------------------------------------------------------------- parsing
def parse_cluster(src: Source) -> ClusterConfig:
    data = _mapping(src, src.data, (), CLUSTER_KEYS + _plugin_section(src), "cluster")
    for required in ("name", "backend"):
        if required not in data:
            src.fail((), f"missing required key {required!r}")
    name = _name(src)(data["name"], ("name",))
    if name == AUTO:
        src.fail(("name",), f"{AUTO!r} is reserved (--cluster auto routes the job); rename this cluster")
    backend = _str(src)(data["backend"], ("backend",))
    if backend not in BACKENDS:
        from suanli.compute.backends import backend_names

        if backend not in backend_names():
            src.fail(("backend",), f"{backend!r} is not a backend; use one of: {', '.join(backend_names())} "
                     "(dask-jobqueue is an engine on a slurm cluster, not a backend)")
    raw_parts = data.get("partitions")
    if raw_parts is None:
        src.fail((), "missing required key 'partitions' (a list with at least one partition)")
    if not isinstance(raw_parts, list) or not raw_parts:
        src.fail(("partitions",), "expected a list with at least one partition")
    parts = tuple(_partition(src, p, ("partitions", i)) for i, p in enumerate(raw_parts))
    seen: set[str] = set()
    for i, p in enumerate(parts):
        if p.name in seen:
            src.fail(("partitions", i, "name"), f"partition {p.name!r} is defined twice")
        seen.add(p.name)
    default_partition = _get(src, data, (), "default_partition", _str(src), None)
    if default_partition is not None and default_partition not in seen:
        src.fail(("default_partition",), f"{default_partition!r} is not a partition of this cluster; "
                 f"valid partitions: {', '.join(sorted(seen))}")
    sections: dict[str, Mapping[str, Any]] = {}
    for section, keys in BACKEND_SECTION_KEYS.items():
        raw = data.get(section)
        sections[section] = {} if raw is None else dict(_mapping(src, raw, (section,), keys, section))
    for key in ("signal_seconds", "max_array_size"):
        if key in sections["slurm"]:
            _int(src, 1)(sections["slurm"][key], ("slurm", key))
    if "submit_rate" in sections["slurm"]:
        _submit_rate(src)(sections["slurm"]["submit_rate"], ("slurm", "submit_rate"))
    if backend == "ray" and not sections["ray"].get("address"):
        src.fail(("ray",), "a ray cluster needs ray.address (the dashboard URL, such as http://127.0.0.1:8265)")
    options = sections.get(backend) or ({} if backend in BACKENDS else _plugin_options(src, backend, data))
    return ClusterConfig(
        name=name,
        backend=backend,
        partitions=parts,
        description=_get(src, data, (), "description", _str(src), ""),
        default_partition=default_partition,
        default_account=_get(src, data, (), "default_account", _str(src), None),
        setup=_get(src, data, (), "setup", _lines(src), ()),
        slurm=sections["slurm"],
        ray=sections["ray"],
        source=src.file,
        max_array_size=_get(src, data, (), "max_array_size", _array_cap(src), None),
        options=options,
    )


def _plugin_section(src: Source) -> tuple[str, ...]:
    """The top-level key a plug-in backend's own section has (its name), so the cluster schema admits it;
    the built-in backends' sections are in ``CLUSTER_KEYS`` already."""
    raw = src.data.get("backend") if isinstance(src.data, Mapping) else None
    if not isinstance(raw, str) or raw in BACKENDS or raw in CLUSTER_KEYS or not _NAME.match(raw):
        return ()
    return (raw,)


def _plugin_options(src: Source, backend: str, data: Mapping[str, Any]) -> Mapping[str, Any]:
    """A plug-in backend's section, validated by the backend class itself (``Backend.config_section``); its
    errors carry this file's line like every other config error."""
    from suanli.compute.backends import PLANNED, backend_class

    if backend in PLANNED:
        return {}
    raw = None if backend in CLUSTER_KEYS else data.get(backend)  # a plug-in named like a key has no section
    if raw is not None and not isinstance(raw, Mapping):
        src.fail((backend,), f"expected a mapping, got {type(raw).__name__}")
    try:
        cls = backend_class(backend)
    except SuanliError as exc:
        src.fail(("backend",), str(exc))

    def fail(path: Path_, message: str) -> NoReturn:
        src.fail((backend, *path), message)

    return dict(cls.config_section(raw or {}, fail))


#: Bounds of ``slurm.submit_rate`` (sbatch calls per second per process): below the floor a loop would crawl,
#: above the ceiling it is no throttle at all (slurmctld itself manages a few hundred RPCs per second).
SUBMIT_RATE_RANGE = (0.1, 1000.0)


def _submit_rate(src: Source) -> Callable[[Any, Path_], float]:
    def check(v: Any, p: Path_) -> float:
        if isinstance(v, bool) or not isinstance(v, int | float):
            src.fail(p, f"{v!r} is not a number; give sbatch calls per second, such as 50")
        lo, hi = SUBMIT_RATE_RANGE
        if not lo <= v <= hi:
            src.fail(p, f"{v} is out of range; give sbatch calls per second between {lo:g} and {hi:g}")
        return float(v)

    return check


def _array_cap(src: Source) -> Callable[[Any, Path_], int | None]:
    def check(v: Any, p: Path_) -> int | None:
        n = _int(src, 1)(v, p)
        if n > HARD_MAX_ARRAY_SIZE:
            src.fail(p, f"{n} is more than suanli's limit of {HARD_MAX_ARRAY_SIZE} array tasks")
        return n

    return check


def _partition(src: Source, raw: Any, path: Path_) -> PartitionConfig:
    data = _mapping(src, raw, path, PARTITION_KEYS, "partition")
    if "name" not in data:
        src.fail(path, "missing required key 'name'")
    if data["name"] == AUTO:
        src.fail(path + ("name",), f"{AUTO!r} is reserved (--partition auto routes the job); rename this partition")
    adapter = _get(src, data, path, "adapter", _str(src), "cpu")
    if not is_adapter(adapter):
        src.fail(path + ("adapter",), f"unknown adapter {adapter!r}; valid adapters: {', '.join(adapter_names())}")
    charge_raw = data.get("charge")
    charge = Charge()
    if charge_raw is not None:
        c = _mapping(src, charge_raw, path + ("charge",), CHARGE_KEYS, "charge")
        charge = Charge(
            cpu_hour=_get(src, c, path + ("charge",), "cpu_hour", _float(src), 0.0),
            accelerator_hour=_get(src, c, path + ("charge",), "accelerator_hour", _float(src), 0.0),
        )
    part = PartitionConfig(
        name=_name(src)(data["name"], path + ("name",)),
        adapter=adapter,
        nodes=_get(src, data, path, "nodes", _int(src, 1), None),
        cpus_per_node=_get(src, data, path, "cpus_per_node", _int(src, 1), None),
        accelerators_per_node=_get(src, data, path, "accelerators_per_node", _int(src, 0), 0),
        memory_per_node_mb=_get(src, data, path, "memory_per_node", _memory(src), None),
        numa_nodes=_get(src, data, path, "numa_nodes", _int(src, 1), None),
        default_time=_get(src, data, path, "default_time", _time(src), None),
        max_time=_get(src, data, path, "max_time", _time(src), None),
        qos=_get(src, data, path, "qos", _str(src), None),
        constraint=_get(src, data, path, "constraint", _str(src), None),
        mpi_launcher=_get(src, data, path, "mpi_launcher", _choice(src, MPI_LAUNCHERS), None),
        setup=_get(src, data, path, "setup", _lines(src), ()),
        charge=charge,
        network_interface=_get(src, data, path, "network_interface", _str(src), None),
    )
    if part.network_interface is not None and (part.network_interface == "lo" or len(part.network_interface) > 15
                                               or not part.network_interface.replace("-", "").replace(".", "")
                                               .replace("_", "").isalnum()):
        src.fail(path + ("network_interface",),
                 f"{part.network_interface!r} is not an interface the nodes share; name one such as eth0 or ib0 "
                 "(not lo), or remove the key to detect it")
    kind = part.accelerator_kind
    if part.accelerators_per_node and kind is None:
        src.fail(path + ("accelerators_per_node",),
                 f"adapter {adapter!r} has no accelerators; use adapter ascend or nvidia, or remove this key")
    if part.default_time and part.max_time and part.default_time > part.max_time:
        src.fail(path + ("default_time",), "is longer than max_time")
    return part


# ---------------------------------------------------------------- the built-in local cluster
def local_cluster() -> ClusterConfig:
    """This machine as one partition: its cores, memory and (where the driver shows them) NVIDIA GPUs."""
    from suanli.adapters.nvidia import visible_gpus

    gpus = visible_gpus()
    mem_mb: int | None = None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    mem_mb = int(line.split()[1]) // 1024
                    break
    except OSError:
        pass
    part = PartitionConfig(
        name="local",
        adapter="nvidia" if gpus else "cpu",
        nodes=1,
        cpus_per_node=os.cpu_count() or 1,
        accelerators_per_node=gpus,
        memory_per_node_mb=mem_mb,
    )
    return ClusterConfig(name="local", backend="local", partitions=(part,),
                         description="this machine (embedded backend)")


# ---------------------------------------------------------------- search path
def search_path(explicit: str | None = None) -> list[Path]:
    """Where configs are read from, highest priority first."""
    out: list[Path] = []
    if explicit:
        out.append(Path(explicit))
    env = os.environ.get("SUANLI_CONFIG")
    if env:
        out.extend(Path(p) for p in env.split(os.pathsep) if p)
    out.append(Path("cluster_configs"))
    out.append(Path(os.path.expanduser("~/.config/suanli/clusters")))
    return out


@dataclass
class Configs:
    clusters: dict[str, ClusterConfig]
    settings: Settings

    def cluster(self, name: str | None) -> ClusterConfig:
        name = name or self.settings.default_cluster
        if name not in self.clusters:
            raise UsageError(f"cluster: unknown cluster {name!r}; valid clusters: {', '.join(sorted(self.clusters))}")
        return self.clusters[name]


def load_configs(explicit: str | None = None) -> Configs:
    """Read every source; an earlier source wins a name clash (with a warning); ``local`` always exists."""
    clusters: dict[str, ClusterConfig] = {}
    settings_src: Source | None = None
    for i, base in enumerate(search_path(explicit)):
        if i == 0 and explicit and not base.exists():
            raise ConfigError(f"{base}: --config path does not exist; give a YAML file or a folder of them")
        if base.is_dir():
            files = sorted(p for p in base.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
        elif base.is_file():
            files = [base]
        else:
            continue
        for f in files:
            src = load_yaml(str(f))
            if f.stem == "settings":
                if settings_src is None:
                    settings_src = src
                continue
            if src.data is None:
                continue
            cfg = parse_cluster(src)
            if cfg.name in clusters:
                log.warning("cluster %r in %s is ignored: %s defines it first", cfg.name, f, clusters[cfg.name].source)
                continue
            clusters[cfg.name] = cfg
    if "local" not in clusters:
        clusters["local"] = local_cluster()
    settings = parse_settings(settings_src) if settings_src else Settings()
    settings = settings_from_env(settings)
    if settings.default_cluster not in clusters:
        raise ConfigError(f"settings: default_cluster {settings.default_cluster!r} is not a known cluster; "
                          f"valid clusters: {', '.join(sorted(clusters))}")
    return Configs(clusters, settings)
