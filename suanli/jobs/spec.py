"""The job spec: what to run (a workload), with what (resources) and where. Pure data, no backend imports."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from suanli.errors import UsageError
from suanli.jobs.components import Command as Command
from suanli.jobs.components import Component, _argv, check_component_spec, resolve_components
from suanli.jobs.resources import Resources
from suanli.jobs.scheduler import SchedulerOptions as SchedulerOptions
from suanli.jobs.scheduler import check_stdio, scheduler_options

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: What Slurm's sacctmgr accepts in an account name (it lowercases, and refuses control and quoting characters).
_ACCOUNT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,63}$")


@dataclass(frozen=True)
class Function:
    """A picklable callable; its return value (or its exception with the remote traceback) comes back."""

    fn: Callable[..., Any]
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    kind = "function"

    def __post_init__(self) -> None:
        if not callable(self.fn):
            raise UsageError(f"function: {self.fn!r} is not callable")
        object.__setattr__(self, "args", tuple(self.args))
        object.__setattr__(self, "kwargs", dict(self.kwargs))


@dataclass(frozen=True)
class Map:
    """One call of ``fn(item)`` per item, run as one array job whose task i gets item i."""

    fn: Callable[[Any], Any]
    items: tuple[Any, ...]

    kind = "map"

    def __init__(self, fn: Callable[[Any], Any], items: Iterable[Any]) -> None:
        if not callable(fn):
            raise UsageError(f"map: {fn!r} is not callable")
        object.__setattr__(self, "fn", fn)
        object.__setattr__(self, "items", tuple(items))
        if not self.items:
            raise UsageError("map: no items; give at least one")


@dataclass(frozen=True)
class Training:
    """A torch training script or module, launched like torchrun with ``nproc_per_node`` ranks per node.

    Every rank gets RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, MASTER_ADDR and MASTER_PORT.
    ``nproc_per_node`` defaults to the accelerators per node, else the tasks per node.
    """

    script: str | None = None
    module: str | None = None
    args: tuple[str, ...] = ()
    nproc_per_node: int | None = None

    kind = "training"

    def __post_init__(self) -> None:
        if (self.script is None) == (self.module is None):
            raise UsageError("training: give exactly one of script (a .py path) or module (a dotted name)")
        object.__setattr__(self, "args", tuple(self.args) and _argv(self.args, "training.args"))
        if self.nproc_per_node is not None and (
            isinstance(self.nproc_per_node, bool) or not isinstance(self.nproc_per_node, int) or self.nproc_per_node < 1
        ):
            raise UsageError(f"training.nproc_per_node: {self.nproc_per_node!r} must be a whole number >= 1")

    def procs_per_node(self, resources: Resources) -> int:
        if self.nproc_per_node:
            return self.nproc_per_node
        return resources.accelerators_per_node or resources.tasks_per_node


#: How an MPI job's ranks are started: Slurm's own ``srun --mpi=pmix``, or the MPI's ``mpirun`` in the allocation.
MPI_LAUNCHERS = ("srun", "mpirun")


@dataclass(frozen=True)
class MPI:
    """An MPI program: ``ranks`` in all (default nodes x tasks per node), ``ranks_per_node`` on each node;
    ``launcher`` (``srun`` or ``mpirun``) chooses how this job starts them, over the partition's
    ``mpi_launcher`` (an application built against another MPI than the site's PMIx may need mpirun)."""

    argv: tuple[str, ...]
    ranks: int | None = None
    ranks_per_node: int | None = None
    launcher: str | None = None

    kind = "mpi"

    def __init__(self, argv: Sequence[str], ranks: int | None = None, ranks_per_node: int | None = None,
                 launcher: str | None = None) -> None:
        object.__setattr__(self, "argv", _argv(argv, "mpi.argv"))
        for name, v in (("ranks", ranks), ("ranks_per_node", ranks_per_node)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise UsageError(f"mpi.{name}: {v!r} must be a whole number >= 1")
        if launcher is not None and launcher not in MPI_LAUNCHERS:
            raise UsageError(f"mpi.launcher: {launcher!r} is not a launcher; give one of {', '.join(MPI_LAUNCHERS)}")
        object.__setattr__(self, "ranks", ranks)
        object.__setattr__(self, "ranks_per_node", ranks_per_node)
        object.__setattr__(self, "launcher", launcher)

    def total_ranks(self, resources: Resources) -> int:
        if self.ranks:
            return self.ranks
        per_node = self.ranks_per_node or resources.tasks_per_node
        return per_node * resources.nodes

    def procs_per_node(self, resources: Resources) -> int:
        """Ranks started on the busiest node (what the allocation must hold there)."""
        return self.ranks_per_node or max(1, -(-self.total_ranks(resources) // resources.nodes))


Workload = Command | Function | Map | Training | MPI


def compact_ranges(values: Sequence[int]) -> str:
    """Sorted ints as ``0-3,7,9-10`` (Slurm's array and CPU-list notation)."""
    parts: list[str] = []
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and values[j + 1] == values[j] + 1:
            j += 1
        parts.append(str(values[i]) if i == j else f"{values[i]}-{values[j]}")
        i = j + 1
    return ",".join(parts)


_ARRAY_PART = re.compile(r"^(\d+)(?:-(\d+)(?::(\d+))?)?$")
#: Hard ceilings of any array, whatever the cluster allows (each cluster has its own, lower, ``max_array_size``):
#: they keep a typo such as 0-100000000 from allocating gigabytes before the cluster's cap is even looked at.
MAX_ARRAY_TASKS = 10_000_000
MAX_ARRAY_INDEX = 2**31 - 1


@dataclass(frozen=True)
class Array:
    """Array task indices with an optional limit on how many run at once (Slurm's ``0-99%10``)."""

    indices: tuple[int, ...]
    max_concurrent: int | None = None

    def __post_init__(self) -> None:
        idx = tuple(self.indices)
        if len(idx) > MAX_ARRAY_TASKS:
            raise UsageError(f"array: {len(idx)} tasks is more than suanli's limit of {MAX_ARRAY_TASKS}; "
                             "split the work into fewer, larger tasks")
        if any(b <= a for a, b in zip(idx, idx[1:], strict=False)):  # already sorted and unique: most arrays
            idx = tuple(sorted(set(idx)))
        if not idx:
            raise UsageError("array: no task indices")
        if idx[0] < 0:
            raise UsageError(f"array: index {idx[0]} is negative")
        if idx[-1] > MAX_ARRAY_INDEX:
            raise UsageError(f"array: index {idx[-1]} is larger than {MAX_ARRAY_INDEX}; use smaller indices")
        object.__setattr__(self, "indices", idx)
        if self.max_concurrent is not None and self.max_concurrent < 1:
            raise UsageError(f"array: concurrency limit {self.max_concurrent} must be at least 1")

    @classmethod
    def parse(cls, value: str | range | Iterable[int] | Array) -> Array:
        """From ``"0-99%10"``, ``"1,3,5-11:2"``, a range or a list of ints."""
        if isinstance(value, Array):
            return value
        if isinstance(value, range):
            try:
                n = len(value)
            except OverflowError:
                n = MAX_ARRAY_TASKS + 1
            if n > MAX_ARRAY_TASKS:
                raise UsageError(f"array: {value!r} has more than suanli's limit of {MAX_ARRAY_TASKS} tasks")
            return cls(tuple(value))
        if not isinstance(value, str):
            items = list(value)
            if not all(isinstance(i, int) and not isinstance(i, bool) for i in items):
                raise UsageError(f"array: {value!r} must hold whole numbers")
            return cls(tuple(items))
        text = value.strip()
        limit: int | None = None
        if "%" in text:
            text, _, lim = text.partition("%")
            if not lim.isdigit():
                raise UsageError(f"array: {value!r}: the part after % must be a number, as in 0-99%10")
            limit = int(lim)
        ranges: list[range] = []
        count = 0
        for part in text.split(","):
            m = _ARRAY_PART.match(part.strip())
            if not m:
                raise UsageError(f"array: {value!r} is not an array spec; use 0-99, 0-99%10, 1,3,5 or 0-20:5")
            if any(len(g) > 12 for g in m.groups() if g):
                raise UsageError(f"array: {part!r} in {value!r} holds a number above {MAX_ARRAY_INDEX}; "
                                 "use smaller indices")
            lo = int(m.group(1))
            hi = int(m.group(2)) if m.group(2) else lo
            step = int(m.group(3)) if m.group(3) else 1
            if hi < lo or step < 1:
                raise UsageError(f"array: {part!r} in {value!r} is an empty range")
            if hi > MAX_ARRAY_INDEX:
                raise UsageError(f"array: index {hi} in {value!r} is larger than {MAX_ARRAY_INDEX}; "
                                 "use smaller indices")
            # Counted before anything is built: an absurd range is refused without allocating it.
            count += (hi - lo) // step + 1
            if count > MAX_ARRAY_TASKS:
                raise UsageError(f"array: {value!r} has more than suanli's limit of {MAX_ARRAY_TASKS} tasks; "
                                 "split the work into fewer, larger tasks")
            ranges.append(range(lo, hi + 1, step))
        return cls(tuple(i for r in ranges for i in r), limit)

    def __len__(self) -> int:
        return len(self.indices)

    def compact(self) -> str:
        """The shortest Slurm-style text for these indices (with the ``%`` limit)."""
        text = compact_ranges(self.indices)
        return f"{text}%{self.max_concurrent}" if self.max_concurrent else text


DependencyKind = Literal["afterok", "afterany"]


@dataclass(frozen=True)
class Dependency:
    """Start only after another job ended: successfully (``afterok``) or in any way (``afterany``)."""

    job_id: str
    kind: DependencyKind = "afterok"

    def __post_init__(self) -> None:
        if self.kind not in ("afterok", "afterany"):
            raise UsageError(f"dependency: kind {self.kind!r} is not one of afterok, afterany")
        if not self.job_id or not isinstance(self.job_id, str):
            raise UsageError(f"dependency: {self.job_id!r} is not a job id")

    @classmethod
    def parse(cls, value: str | Dependency | Any) -> Dependency:
        """``JOB`` (after ok), ``afterok:JOB`` or ``afterany:JOB``; a Job handle works too."""
        if isinstance(value, Dependency):
            return value
        if not isinstance(value, str):
            job_id = getattr(value, "id", None)
            if isinstance(job_id, str):
                return cls(job_id)
            raise UsageError(f"dependency: {value!r} is not a job id or Job")
        kind, sep, job = value.partition(":")
        if sep:
            if kind not in ("afterok", "afterany", "ok", "any"):
                raise UsageError(f"dependency: {value!r}: use JOB, afterok:JOB or afterany:JOB")
            return cls(job.strip(), "afterany" if kind.endswith("any") else "afterok")
        return cls(value.strip())


@dataclass(frozen=True)
class JobSpec:
    """Everything a backend needs to run one job (or one array of tasks).

    ``setup`` lines are shell code run before the workload (``module load cann``, ``source venv/bin/activate``);
    everything else is data and reaches the job verbatim.
    """

    #: None only with ``components``: the job's workload, resources and partition are then component 0's.
    workload: Workload = None  # type: ignore[assignment]
    name: str | None = None
    resources: Resources = field(default_factory=Resources)
    env: Mapping[str, str] = field(default_factory=dict)
    setup: tuple[str, ...] = ()
    workdir: str | None = None
    cluster: str | None = None
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    array: Array | None = None
    dependencies: tuple[Dependency, ...] = ()
    max_restarts: int = 0
    #: sbatch options beyond the neutral request (only backends with ``sbatch_options`` run them).
    scheduler: SchedulerOptions = field(default_factory=SchedulerOptions)
    #: The job's own stdin, stdout and stderr files (default: /dev/null and the job folder's job.out/job.err);
    #: Slurm's %A %a %j %% patterns expand (only backends with ``stdio_paths`` run them).
    stdin: str | None = None
    stdout: str | None = None
    stderr: str | None = None
    #: The parts of a heterogeneous job (``suanli.Component``), run in one allocation; empty for other jobs.
    components: Sequence[Component] = ()

    def __post_init__(self) -> None:
        if self.components:
            comps, workload, res, part = resolve_components(self.components, self.workload, self.resources,
                                                            self.partition)
            for key, value in (("components", comps), ("workload", workload), ("resources", res),
                               ("partition", part)):
                object.__setattr__(self, key, value)
        if self.workload is None:
            raise UsageError("workload: give a Command, Function, Map, Training or MPI (or components=[...] for a "
                             "heterogeneous job)")
        if not isinstance(self.workload, Command | Function | Map | Training | MPI):
            raise UsageError(f"workload: {self.workload!r} is not a Command, Function, Map, Training or MPI")
        if not isinstance(self.resources, Resources):
            raise UsageError(f"resources: {self.resources!r} is not a suanli.Resources")
        self._check_env()
        if isinstance(self.setup, str):
            object.__setattr__(self, "setup", (self.setup,))
        if not isinstance(self.setup, list | tuple):
            raise UsageError(f"setup: {self.setup!r} is not a line of shell or a list of lines")
        object.__setattr__(self, "setup", tuple(self.setup))
        for line in self.setup:
            if not isinstance(line, str):
                raise UsageError(f"setup: {line!r} is not a line of shell")
        self._check_strings()
        if self.array is not None and not isinstance(self.array, Array):
            object.__setattr__(self, "array", Array.parse(self.array))
        if isinstance(self.workload, Map):
            n = len(self.workload.items)
            if self.array is None:
                object.__setattr__(self, "array", Array(tuple(range(n))))
            elif self.array.indices != tuple(range(n)):
                raise UsageError(f"array: a map of {n} items runs tasks 0-{n - 1}; only the % limit may be set")
        object.__setattr__(self, "dependencies", tuple(Dependency.parse(d) for d in self.dependencies))
        if isinstance(self.max_restarts, bool) or not isinstance(self.max_restarts, int) or self.max_restarts < 0:
            raise UsageError(f"requeue: {self.max_restarts!r} must be a whole number >= 0 (the maximum restarts)")
        self._check_scheduler()
        if self.components:
            check_component_spec(self.array, self.max_restarts)

    def _check_scheduler(self) -> None:
        object.__setattr__(self, "scheduler", scheduler_options(self.scheduler))
        for key in ("stdin", "stdout", "stderr"):
            object.__setattr__(self, key, check_stdio(key, getattr(self, key), self.array is not None))
        if self.scheduler.mem_per_cpu is not None and self.resources.memory_mb is not None:
            raise UsageError("mem_per_cpu: Slurm takes one of --mem and --mem-per-cpu; drop resources.memory "
                             "(--mem) or mem_per_cpu")

    def _check_env(self) -> None:
        if not isinstance(self.env, Mapping):
            raise UsageError(f"env: {self.env!r} is not a mapping of NAME: value")
        env = dict(self.env)
        for k, v in env.items():
            if not isinstance(k, str) or not _ENV_NAME.match(k):
                raise UsageError(f"env: {k!r} is not a valid variable name (letters, digits, _; not first a digit)")
            if isinstance(v, bool) or not isinstance(v, str | int | float):
                raise UsageError(f"env: the value of {k} is {v!r}; give a string")
            env[k] = str(v)
            if "\x00" in env[k]:
                raise UsageError(f"env: the value of {k} holds a NUL byte")
        object.__setattr__(self, "env", env)

    def _check_strings(self) -> None:
        import os

        if isinstance(self.workdir, os.PathLike):
            object.__setattr__(self, "workdir", os.fspath(self.workdir))
        for key in ("name", "workdir", "cluster", "partition", "account", "qos", "constraint"):
            value = getattr(self, key)
            if value is not None and not isinstance(value, str):
                raise UsageError(f"{key}: {value!r} is not a string")
            if value is not None and "\x00" in value:
                raise UsageError(f"{key}: {value!r} holds a NUL byte")
        if self.account is not None and not _ACCOUNT.match(self.account):
            raise UsageError(f"account: {self.account!r} is not an account name (letters, digits, _ . -; at most "
                             "64, as Slurm accepts)")

    @property
    def display_name(self) -> str:
        if self.name:
            return self.name
        w = self.workload
        if isinstance(w, Command | MPI):
            return w.argv[0].rsplit("/", 1)[-1]
        if isinstance(w, Function | Map):
            return getattr(w.fn, "__name__", "function")
        if isinstance(w, Training):
            return (w.script or w.module or "training").rsplit("/", 1)[-1]
        return "job"

    @property
    def task_count(self) -> int:
        return len(self.array) if self.array else 1
