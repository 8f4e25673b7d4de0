"""Neutral resource requests: what a job needs, independent of any scheduler."""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Protocol, runtime_checkable

from suanli.errors import UsageError

_TIME_HELP = "use 90m, 2h, 30s, 1d, 1-00:00:00, HH:MM:SS, MM:SS or minutes"
_MAX_SECONDS = 100 * 365 * 86400.0
_COMPOUND = re.compile(r"^(?:(\d+(?:\.\d+)?)d)?(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?$")


def parse_time(value: str | float | timedelta | None, field: str = "time") -> timedelta | None:
    """Parse a time limit the way Slurm users write it.

    Accepts unit forms (``90m``, ``2h``, ``1h30m``, ``45s``, ``1d``), Slurm's forms (``MM``, ``MM:SS``,
    ``HH:MM:SS``, ``D-HH``, ``D-HH:MM``, ``D-HH:MM:SS``), a timedelta, or a number of minutes (as sbatch's
    ``--time=90``). ``None``, ``""`` and ``UNLIMITED`` mean no limit.
    """
    if value is None:
        return None
    if isinstance(value, timedelta):
        if value.total_seconds() <= 0:
            raise UsageError(f"{field}: {value} is not positive; {_TIME_HELP}")
        return value
    if isinstance(value, bool):
        raise UsageError(f"{field}: {value!r} is not a duration; {_TIME_HELP}")
    if isinstance(value, int | float):
        if not value > 0:  # also refuses NaN
            raise UsageError(f"{field}: {value!r} is not positive; {_TIME_HELP}")
        seconds = float(value) * 60
    else:
        text = str(value).strip().lower()
        if text in ("", "unlimited", "infinite", "none"):
            return None
        try:
            parsed = _parse_time_text(text)
        except (OverflowError, ValueError):
            parsed = None
        if parsed is None:
            raise UsageError(f"{field}: {value!r} is not a duration; {_TIME_HELP}")
        seconds = parsed
        if seconds <= 0:
            raise UsageError(f"{field}: {value!r} is not positive; {_TIME_HELP}")
    if seconds > _MAX_SECONDS:
        raise UsageError(f"{field}: {value!r} is longer than 100 years; give a real limit or UNLIMITED")
    return timedelta(seconds=seconds)


def _parse_time_text(text: str) -> float | None:
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text) * 60
    m = _COMPOUND.match(text)
    if m and any(m.groups()):
        return sum(float(g) * u for g, u in zip(m.groups(), (86400, 3600, 60, 1), strict=True) if g)
    days = 0
    if "-" in text:
        d, _, text = text.partition("-")
        if not d.isdigit() or not text:
            return None
        days = int(d)
        parts = text.split(":")
        if not all(p.isdigit() for p in parts) or len(parts) > 3:
            return None
        h, mi, s = (list(map(int, parts)) + [0, 0])[:3]
        return days * 86400 + h * 3600 + mi * 60 + s
    parts = text.split(":")
    if not all(p.isdigit() for p in parts) or not 1 <= len(parts) <= 3:
        return None
    nums = list(map(int, parts))
    if len(nums) == 2:
        return nums[0] * 60 + nums[1]
    if len(nums) == 3:
        return nums[0] * 3600 + nums[1] * 60 + nums[2]
    return None


def format_slurm_time(limit: timedelta) -> str:
    """``D-HH:MM:SS`` (rounded up to whole seconds), the form every Slurm version accepts."""
    total = int(-(-limit.total_seconds() // 1))
    d, rest = divmod(total, 86400)
    h, rest = divmod(rest, 3600)
    m, s = divmod(rest, 60)
    return f"{d}-{h:02d}:{m:02d}:{s:02d}"


_MEM = re.compile(r"^(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?$")
_MEM_FACTOR = {"k": 1 / 1024, "": 1, "m": 1, "g": 1024, "t": 1024 * 1024}


def parse_memory(value: str | int | None, field: str = "memory") -> int | None:
    """Memory in MiB from ``4G``, ``500M``, ``1T``, ``2048K`` or a number of MiB (sbatch's default unit)."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise UsageError(f"{field}: {value!r} is not a memory size; use 4G, 500M or a number of MiB")
    if isinstance(value, int):
        mb = value
    else:
        m = _MEM.match(str(value).strip().lower())
        if not m:
            raise UsageError(f"{field}: {value!r} is not a memory size; use 4G, 500M or a number of MiB")
        mb = math.ceil(float(m.group(1)) * _MEM_FACTOR[m.group(2)])
    if mb <= 0:
        raise UsageError(f"{field}: {value!r} must be positive; use 4G, 500M or a number of MiB")
    return mb


def parse_accelerators(value: str | int | None, field: str = "accelerators") -> tuple[str | None, int]:
    """``ascend:8`` -> ("ascend", 8); ``nvidia`` -> ("nvidia", 1); 0 -> (None, 0)."""
    if value is None or value == 0 or value == "0":
        return None, 0
    if isinstance(value, bool):
        raise UsageError(f"{field}: {value!r} is not an accelerator request; use KIND:N such as ascend:8")
    if isinstance(value, int):
        if value < 0:
            raise UsageError(f"{field}: {value} must not be negative")
        return None, value
    kind_text, _, count_text = str(value).strip().partition(":")
    if kind_text.isdigit() and not count_text:
        return None, int(kind_text)
    kind = normalize_kind(kind_text, field)
    if not count_text:
        return kind, 1
    if not count_text.isdigit() or int(count_text) < 1:
        raise UsageError(f"{field}: {value!r} needs a positive count per node, such as {kind}:8")
    return kind, int(count_text)


def normalize_kind(kind: str, field: str = "accelerator kind") -> str:
    """A kind or one of its aliases (``npu`` -> ascend, ``gpu`` -> nvidia) -> the kind. The registered adapters
    are the list of kinds, looked up here and not at import (adapters import this module)."""
    from suanli.adapters import accelerator_aliases, accelerator_kinds

    k = accelerator_aliases().get(kind.strip().lower())
    if k is None:
        raise UsageError(f"{field}: unknown accelerator kind {kind!r}; valid kinds: {', '.join(accelerator_kinds())}")
    return k


def _positive_int(value: object, field: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value)
        else:
            raise UsageError(f"{field}: {value!r} is not a whole number")
    assert isinstance(value, int)
    if value < minimum:
        raise UsageError(f"{field}: {value} must be at least {minimum}")
    return value


@runtime_checkable
class RankedWorkload(Protocol):
    """A workload that starts several processes per node (Training, MPI), whatever tasks_per_node says."""

    def procs_per_node(self, resources: Resources) -> int: ...


@dataclass(frozen=True)
class Resources:
    """What a job asks for, per node, in scheduler-neutral terms.

    ``accelerators`` is per node (``"ascend:8"`` means eight NPUs on each node); ``memory`` is per node;
    ``time`` accepts every form :func:`parse_time` does. Values are normalised on construction so a
    Resources can be compared and serialised as is.
    """

    nodes: int = 1
    tasks_per_node: int = 1
    cpus_per_task: int = 1
    memory: str | int | None = None
    accelerators: str | int = 0
    accelerator_kind: str | None = None
    time: str | float | timedelta | None = None

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "nodes", _positive_int(self.nodes, "resources.nodes"))
        set_(self, "tasks_per_node", _positive_int(self.tasks_per_node, "resources.tasks_per_node"))
        set_(self, "cpus_per_task", _positive_int(self.cpus_per_task, "resources.cpus_per_task"))
        set_(self, "memory", parse_memory(self.memory, "resources.memory"))
        kind, count = parse_accelerators(self.accelerators, "resources.accelerators")
        if self.accelerator_kind is not None:
            explicit = normalize_kind(self.accelerator_kind, "resources.accelerator_kind")
            if kind is not None and kind != explicit:
                raise UsageError(f"resources.accelerators: kind {kind!r} contradicts accelerator_kind {explicit!r}")
            kind = explicit
        set_(self, "accelerators", count)
        set_(self, "accelerator_kind", kind if count else None)
        set_(self, "time", parse_time(self.time, "resources.time"))

    @property
    def memory_mb(self) -> int | None:
        return self.memory if isinstance(self.memory, int) else None

    @property
    def accelerators_per_node(self) -> int:
        return self.accelerators if isinstance(self.accelerators, int) else 0

    @property
    def time_limit(self) -> timedelta | None:
        return self.time if isinstance(self.time, timedelta) else None

    @property
    def total_tasks(self) -> int:
        return self.nodes * self.tasks_per_node

    @property
    def cpus_per_node(self) -> int:
        return self.tasks_per_node * self.cpus_per_task

    def for_workload(self, workload: object) -> Resources:
        """What the job will hold on each node: ``tasks_per_node`` raised to the ranks a Training
        (``nproc_per_node``) or MPI (``ranks``, ``ranks_per_node``) workload starts there, each rank a task of
        ``cpus_per_task`` CPUs. ``Client.prepare`` applies it once, so the fit check, the worst-case estimate,
        the reservation, the sbatch request and the registry's booking all count every process."""
        if not isinstance(workload, RankedWorkload):
            return self
        procs = workload.procs_per_node(self)
        return self if procs <= self.tasks_per_node else dataclasses.replace(self, tasks_per_node=procs)

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form (time in seconds) for the registry and plans."""
        limit = self.time_limit
        return {
            "nodes": self.nodes,
            "tasks_per_node": self.tasks_per_node,
            "cpus_per_task": self.cpus_per_task,
            "memory_mb": self.memory_mb,
            "accelerators": self.accelerators_per_node,
            "accelerator_kind": self.accelerator_kind,
            "time_s": None if limit is None else limit.total_seconds(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> Resources:
        t = data.get("time_s")
        return cls(
            nodes=int(data.get("nodes", 1)),  # type: ignore[call-overload]
            tasks_per_node=int(data.get("tasks_per_node", 1)),  # type: ignore[call-overload]
            cpus_per_task=int(data.get("cpus_per_task", 1)),  # type: ignore[call-overload]
            memory=data.get("memory_mb"),  # type: ignore[arg-type]
            accelerators=int(data.get("accelerators", 0) or 0),  # type: ignore[call-overload]
            accelerator_kind=data.get("accelerator_kind"),  # type: ignore[arg-type]
            time=None if t is None else timedelta(seconds=float(t)),  # type: ignore[arg-type]
        )
