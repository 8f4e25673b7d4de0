"""Scheduler options HPC users reach for (``--exclusive``, ``--reservation``, mail, ``--mem-per-cpu``, other GRES,
node lists, ``--export``) and a checked pass-through for any other sbatch option; plus the job's own stdin,
stdout and stderr paths. Pure data checked on construction: a bad value is a one-line error naming the field."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from suanli.errors import UsageError
from suanli.jobs.options import in_group
from suanli.jobs.resources import parse_memory

#: sbatch's long options and whether each takes a value ("value"), none ("flag") or an optional one
#: ("optional"). Source: the ``sbatch --help`` and ``sbatch --usage`` output of slurm-wlm 22.05.8 (the union of
#: the two; ``--network`` and ``--mem-bind`` appear only in --usage).
SBATCH_LONG_OPTIONS: Mapping[str, str] = {
    "array": "value", "account": "value", "bb": "value", "bbf": "value", "begin": "value", "comment": "value",
    "cpu-freq": "value", "cpus-per-task": "value", "dependency": "value", "deadline": "value",
    "delay-boot": "value", "chdir": "value", "error": "value", "export": "optional", "export-file": "value",
    "get-user-env": "optional", "gid": "value", "gres": "value", "gres-flags": "value", "hold": "flag",
    "ignore-pbs": "flag", "input": "value", "job-name": "value", "no-kill": "flag", "licenses": "value",
    "clusters": "value", "container": "value", "distribution": "value", "mail-type": "value",
    "mail-user": "value", "mcs-label": "value", "ntasks": "value", "nice": "optional", "no-requeue": "flag",
    "ntasks-per-node": "value", "nodes": "value", "output": "value", "overcommit": "flag", "partition": "value",
    "parsable": "flag", "power": "value", "priority": "value", "profile": "value", "propagate": "optional",
    "qos": "value", "quiet": "flag", "reboot": "flag", "requeue": "flag", "oversubscribe": "flag",
    "core-spec": "value", "signal": "value", "spread-job": "flag", "switches": "value", "thread-spec": "value",
    "time": "value", "time-min": "value", "uid": "value", "use-min-nodes": "flag", "verbose": "flag",
    "wait": "flag", "wckey": "value", "wrap": "optional", "cluster-constraint": "value", "contiguous": "flag",
    "constraint": "value", "nodefile": "value", "mem": "value", "mincpus": "value", "reservation": "value",
    "tmp": "value", "nodelist": "value", "exclude": "value", "exclusive": "optional", "mem-per-cpu": "value",
    "sockets-per-node": "value", "cores-per-socket": "value", "threads-per-core": "value",
    "extra-node-info": "value", "ntasks-per-core": "value", "ntasks-per-socket": "value",
    "cpus-per-gpu": "value", "gpus": "value", "gpu-bind": "value", "gpu-freq": "value", "gpus-per-node": "value",
    "gpus-per-socket": "value", "gpus-per-task": "value", "mem-per-gpu": "value", "network": "value",
    "mem-bind": "value", "help": "flag", "usage": "flag", "version": "flag",
}

#: sbatch options ``extra`` may not carry, and the fix: suanli sets them itself, a typed field says them, or
#: they would change how suanli submits and reads back the job.
_TYPED = {
    "array": "array", "account": "account", "chdir": "workdir", "error": "stderr", "output": "stdout",
    "input": "stdin", "export": "export", "export-file": "export", "job-name": "name", "partition": "partition",
    "nodes": "resources.nodes", "ntasks": "resources.nodes and resources.tasks_per_node",
    "ntasks-per-node": "resources.tasks_per_node", "cpus-per-task": "resources.cpus_per_task",
    "mem": "resources.memory", "time": "resources.time", "gres": "gres (accelerators: resources.accelerators)",
    "qos": "qos", "constraint": "constraint", "dependency": "after", "requeue": "requeue",
    "no-requeue": "requeue", "exclusive": "exclusive", "reservation": "reservation", "mail-type": "mail_type",
    "mail-user": "mail_user", "mem-per-cpu": "mem_per_cpu", "nodelist": "nodelist", "nodefile": "nodelist",
    "exclude": "exclude", "wrap": "the workload (command: [...])",
}
RESERVED_OPTIONS: Mapping[str, str] = {
    **{k: f"use {v} instead" for k, v in _TYPED.items()},
    "signal": "suanli sets it from slurm.signal_seconds in the cluster config",
    "parsable": "suanli sets it to read the job id", "quiet": "suanli reads sbatch's output; leave it out",
    "verbose": "suanli reads sbatch's output; leave it out", "wait": "use suanli submit --wait instead",
    "clusters": "give a cluster config (cluster: NAME) instead", "uid": "suanli submits as you; leave it out",
    "gid": "suanli submits as you; leave it out", "help": "not a job option; leave it out",
    "usage": "not a job option; leave it out", "version": "not a job option; leave it out",
}

#: ``--mail-type`` values of Slurm 22.05 (``man sbatch``).
MAIL_TYPES = ("NONE", "BEGIN", "END", "FAIL", "REQUEUE", "ALL", "INVALID_DEPEND", "STAGE_OUT", "TIME_LIMIT",
              "TIME_LIMIT_90", "TIME_LIMIT_80", "TIME_LIMIT_50", "ARRAY_TASKS")
EXCLUSIVE_MODES = ("user", "mcs")
#: Bounds: every value reaches a command line; nothing legitimate comes near them.
MAX_TEXT = 4096
MAX_ITEMS = 64

_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}$")
_MAIL_USER = re.compile(r"^[A-Za-z0-9._%+\-]+(@[A-Za-z0-9.\-]+)?$")
_GRES = re.compile(r"^([A-Za-z][A-Za-z0-9_]{0,63})(?::([A-Za-z0-9_.\-]{1,64}))?:([1-9][0-9]{0,5})$")
_HOST_ITEM = r"[A-Za-z0-9_.\-]*(?:\[[0-9]+(?:-[0-9]+)?(?:,[0-9]+(?:-[0-9]+)?)*\][A-Za-z0-9_.\-]*)*"
_HOSTLIST = re.compile(rf"^{_HOST_ITEM}(?:,{_HOST_ITEM})*$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_EXTRA_KEY = re.compile(r"^[a-z][a-z0-9\-]*$")
#: Filename patterns suanli expands the same way Slurm does (so ``suanli logs`` finds the file).
STDIO_PATTERNS = {"%": "a literal %", "A": "the array's job id", "a": "the array task index", "j": "the job id"}


def _text(value: object, name: str, what: str) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise UsageError(f"{name}: {value!r} is not {what}")
    text = str(value).strip()
    if not text:
        raise UsageError(f"{name}: the value is empty; give {what} or leave it out")
    if len(text) > MAX_TEXT:
        raise UsageError(f"{name}: the value is longer than {MAX_TEXT} characters")
    if any(c in text for c in "\x00\n\r"):
        raise UsageError(f"{name}: {text!r} holds a NUL or line break; give {what}")
    return text


def _items(value: object, name: str, what: str) -> list[str]:
    """A comma-separated string or a list of strings -> the items."""
    if isinstance(value, str):
        parts = [p.strip() for p in value.split(",")]
    elif isinstance(value, list | tuple):
        parts = [_text(v, name, what) for v in value]
    else:
        raise UsageError(f"{name}: {value!r} is not {what}")
    if len(parts) > MAX_ITEMS:
        raise UsageError(f"{name}: {len(parts)} items is more than {MAX_ITEMS}")
    if not parts or any(not p for p in parts):
        raise UsageError(f"{name}: {value!r} has an empty item; give {what}")
    return parts


def _hostlist(value: object, name: str) -> str:
    what = "a Slurm host list such as n1,n[3-5]"
    text = ",".join(_items(value, name, what)) if isinstance(value, list | tuple) else _text(value, name, what)
    if not _HOSTLIST.match(text) or ",," in text or text.startswith(",") or text.endswith(","):
        raise UsageError(f"{name}: {text!r} is not {what} (plain node names, digits in [a-b,c] ranges)")
    return text


def _export(value: object) -> str:
    what = "ALL, NONE or [ALL,]VAR[=value][,VAR...]"
    items = _items(value, "export", what)
    if len(items) == 1 and items[0].upper() in ("ALL", "NONE"):
        return items[0].upper()
    if any(i.upper() == "NONE" for i in items):
        raise UsageError("export: NONE stands alone in Slurm 22.05; give NONE, or list the variables to export")
    out: list[str] = []
    for i, item in enumerate(items):
        if i == 0 and item.upper() == "ALL":
            out.append("ALL")
            continue
        var, eq, val = item.partition("=")
        if not _ENV_NAME.match(var):
            raise UsageError(f"export: {var!r} is not a variable name (letters, digits, _); give {what}")
        if eq and ("," in val or "\x00" in val):
            raise UsageError(f"export: the value of {var} holds a comma; Slurm splits on commas, use env: instead")
        out.append(item)
    return ",".join(out)


def _extra(value: object) -> dict[str, str | bool]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise UsageError(f"extra: {value!r} is not a mapping of sbatch option: value")
    if len(value) > MAX_ITEMS:
        raise UsageError(f"extra: {len(value)} options is more than {MAX_ITEMS}")
    out: dict[str, str | bool] = {}
    for raw_key, val in value.items():
        key = str(raw_key).strip().lstrip("-").replace("_", "-")
        if not _EXTRA_KEY.match(key) or len(key) < 2:
            raise UsageError(f"extra.{raw_key}: give an sbatch long option name such as begin or licenses")
        kind = SBATCH_LONG_OPTIONS.get(key)
        if kind is None:
            raise UsageError(f"extra.{raw_key}: {key!r} is not an sbatch option (Slurm 22.05's sbatch --help); "
                             "check the spelling")
        if key in RESERVED_OPTIONS:
            raise UsageError(f"extra.{raw_key}: --{key} cannot go through extra; {RESERVED_OPTIONS[key]}")
        if val is True:
            if kind == "value":
                raise UsageError(f"extra.{raw_key}: --{key} needs a value, as in {key}: VALUE")
            out[key] = True
            continue
        if val is False or val is None:
            raise UsageError(f"extra.{raw_key}: {val!r}: leave the option out instead")
        if kind == "flag":
            raise UsageError(f"extra.{raw_key}: --{key} takes no value; write {key}: true")
        out[key] = _text(val, f"extra.{raw_key}", f"a value for --{key}")
    return out


@dataclass(frozen=True)
class SchedulerOptions:
    """sbatch options beyond the neutral resources. Only backends that declare ``sbatch_options`` run a job
    that sets any of them (the rest refuse it, exit 2); the Slurm backend puts each on sbatch's command line
    as ``--opt=value`` (never an ``#SBATCH`` line).

    ``exclusive``: True, "user" or "mcs"; ``mail_type``: Slurm's list (END,FAIL); ``mem_per_cpu`` like
    resources.memory; ``gres``: ``name:N`` or ``name:type:N`` items (accelerators stay in resources);
    ``nodelist``/``exclude``: Slurm host lists; ``export``: ALL, NONE or ``[ALL,]VAR[=value],...``;
    ``extra``: any other sbatch long option suanli does not set itself (``{begin: now+1hour}``).
    """

    # Inputs may be lists or comma-separated text; each is normalised on construction (tuples, plain text).
    exclusive: bool | str = False
    reservation: str | None = None
    mail_type: Sequence[str] | str = ()
    mail_user: str | None = None
    mem_per_cpu: str | int | None = None
    gres: Sequence[str] | str = ()
    nodelist: Sequence[str] | str | None = None
    exclude: Sequence[str] | str | None = None
    export: Sequence[str] | str | None = None
    extra: Mapping[str, str | int | bool] = field(default_factory=dict)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "exclusive", self._exclusive(self.exclusive))
        if self.reservation is not None:
            text = _text(self.reservation, "reservation", "a reservation name")
            if not _NAME.match(text):
                raise UsageError(f"reservation: {text!r} is not a reservation name (letters, digits, _ . -)")
            set_(self, "reservation", text)
        if self.mail_type:
            types = [t.upper() for t in _items(self.mail_type, "mail_type", "mail types such as END,FAIL")]
            bad = [t for t in types if t not in MAIL_TYPES]
            if bad:
                raise UsageError(f"mail_type: {bad[0]!r} is not a Slurm mail type; valid: {', '.join(MAIL_TYPES)}")
            set_(self, "mail_type", tuple(dict.fromkeys(types)))
        else:
            set_(self, "mail_type", ())
        if self.mail_user is not None:
            text = _text(self.mail_user, "mail_user", "a user name or e-mail address")
            if not _MAIL_USER.match(text):
                raise UsageError(f"mail_user: {text!r} is not a user name or e-mail address")
            set_(self, "mail_user", text)
        set_(self, "mem_per_cpu", parse_memory(self.mem_per_cpu, "mem_per_cpu"))
        set_(self, "gres", self._gres(self.gres))
        for name in ("nodelist", "exclude"):
            value = getattr(self, name)
            if value is not None:
                set_(self, name, _hostlist(value, name))
        if self.export is not None:
            set_(self, "export", _export(self.export))
        set_(self, "extra", _extra(self.extra))

    @staticmethod
    def _exclusive(value: object) -> bool | str:
        if isinstance(value, bool):
            return value
        if value is None:
            return False
        if isinstance(value, str) and value.strip().lower() in EXCLUSIVE_MODES:
            return value.strip().lower()
        raise UsageError(f"exclusive: {value!r} is not true, false, user or mcs")

    @staticmethod
    def _gres(value: object) -> tuple[str, ...]:
        if not value:
            return ()
        items = _items(value, "gres", "GRES such as mps:100 or gpu:a100:1")
        seen: set[str] = set()
        for item in items:
            m = _GRES.match(item)
            if not m:
                raise UsageError(f"gres: {item!r} is not name:N or name:type:N (such as mps:100 or gpu:a100:1)")
            if m.group(1) in seen:
                raise UsageError(f"gres: {m.group(1)!r} is asked for twice; give it once")
            seen.add(m.group(1))
        return tuple(items)

    @property
    def mem_per_cpu_mb(self) -> int | None:
        return self.mem_per_cpu if isinstance(self.mem_per_cpu, int) else None

    def set_fields(self) -> list[str]:
        """The names of the options that are set (empty: nothing beyond the neutral request)."""
        return [f.name for f in fields(self) if getattr(self, f.name) not in (False, None, (), {})]

    def __bool__(self) -> bool:
        return bool(self.set_fields())

    def to_dict(self) -> dict[str, Any]:
        """The options that are set, JSON-ready (for the registry and plans)."""
        out: dict[str, Any] = {}
        for name in self.set_fields():
            value = getattr(self, name)
            out[name] = list(value) if isinstance(value, tuple) else dict(value) if isinstance(value, Mapping) \
                else value
        return out

    @classmethod
    def build(cls, options: Mapping[str, Any], base: SchedulerOptions | None = None) -> SchedulerOptions:
        """``base`` with ``options`` over it (``extra`` merged key by key)."""
        names = {o.field for o in in_group("scheduler")}  # the option table; tests/test_options.py: == fields
        unknown = sorted(set(options) - names)
        if unknown:
            raise UsageError(f"{unknown[0]}: not a scheduler option; valid: {', '.join(sorted(names))}")
        current = {f.name: getattr(base, f.name) for f in fields(cls)} if base else {}
        merged = {**current, **options}
        if base is not None and "extra" in options and isinstance(options["extra"], Mapping):
            merged["extra"] = {**base.extra, **options["extra"]}
        return cls(**merged)


def check_stdio(name: str, value: object, is_array: bool) -> str | None:
    """A stdin/stdout/stderr path: a string or path, Slurm's %A %a %j %% patterns only (what suanli can also
    expand to read the file back), %a and %A only in arrays, %j not in arrays (each task has its own)."""
    if value is None:
        return None
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str):
        raise UsageError(f"{name}: {value!r} is not a file path")
    text = _text(value, name, "a file path")
    if "\\" in text:
        raise UsageError(f"{name}: {text!r} holds a backslash, which turns off Slurm's filename patterns; "
                         "use a plain path")
    for m in re.finditer(r"%(.?)", text.replace("%%", "")):
        code = m.group(1)
        if code not in STDIO_PATTERNS:
            allowed = ", ".join(f"%{k} ({v})" for k, v in STDIO_PATTERNS.items())
            raise UsageError(f"{name}: %{code} is not a pattern suanli can expand; use {allowed}")
        if code in "aA" and not is_array:
            raise UsageError(f"{name}: %{code} names an array task, and this job is not an array; use %j")
        if code == "j" and is_array:
            raise UsageError(f"{name}: %j differs per array task in Slurm; use %A_%a")
    return text


def scheduler_options(value: object) -> SchedulerOptions:
    """A SchedulerOptions from itself or a mapping of its fields."""
    if isinstance(value, SchedulerOptions):
        return value
    if isinstance(value, Mapping):
        return SchedulerOptions.build(value)
    raise UsageError(f"scheduler: {value!r} is not a SchedulerOptions or a mapping of its fields")
