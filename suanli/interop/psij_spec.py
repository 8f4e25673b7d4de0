"""PSI/J's JobSpec / ResourceSpecV1 / JobAttributes -> a suanli JobSpec.

suanli's spec has no stdin/stdout/stderr paths, no environment-clearing switch and no post-launch hook, so those
go into a small fixed wrapper (``/bin/sh -c WRAPPER``) that receives every user value as a positional argument:
no user value is ever read as shell code. Values that reach the job script (the pre-launch path, the node file's
processes per node) travel as environment variables that fixed setup lines read.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from psij import InvalidJobException, ResourceSpecV1
from psij import JobSpec as PsijSpec

from suanli.errors import UsageError
from suanli.jobs.resources import Resources
from suanli.jobs.spec import MPI, Command, JobSpec

#: PSI/J launcher -> how suanli starts the processes (see ``_workload``).
LAUNCHERS = ("single", "multiple", "srun", "mpirun")

#: ``custom_attributes`` keys ``suanli.<key>`` -> what they set (other executors' prefixes are ignored, as
#: PSI/J's own executors ignore ``suanli.*``).
CUSTOM_ATTRIBUTES = ("cluster", "qos", "constraint", "memory", "accelerator_kind", "max_restarts", "name")

#: Runs each process: redirections, then N copies (local multi-process jobs), then the post-launch script.
#: Arguments: STDIN STDOUT STDERR POST_LAUNCH COPIES ARGV... (empty string: not given).
WRAPPER = r"""in=$1; out=$2; err=$3; post=$4; n=$5; shift 5
[ -z "$in" ] || exec <"$in"
[ -z "$out" ] || exec >>"$out"
[ -z "$err" ] || exec 2>>"$err"
if [ "$n" = 1 ] && [ -z "$post" ]; then exec "$@"; fi
rc=0
if [ "$n" = 1 ]; then
    "$@"; rc=$?
else
    pids=""; i=0
    while [ "$i" -lt "$n" ]; do "$@" <&0 & pids="$pids $!"; i=$((i + 1)); done
    for p in $pids; do wait "$p" || rc=$?; done
fi
if [ -n "$post" ]; then . "$post"; fi
exit "$rc"
"""

#: Setup lines (fixed code) of every PSI/J job: PSIJ_NODEFILE as PSI/J's executors provide it (one line per
#: process slot), then the pre-launch script, sourced so that what it exports reaches the job.
SETUP = (
    'export PSIJ_NODEFILE="${SUANLI_JOB_DIR:-${TMPDIR:-/tmp}}/psij-nodefile.${SUANLI_JOB_ID:-$$}"',
    '{ if [ -n "${SLURM_JOB_NODELIST:-}" ]; then scontrol show hostnames "$SLURM_JOB_NODELIST"; else hostname; fi; }'
    ' | while read -r node; do i=0; while [ "$i" -lt "${SUANLI_PSIJ_PPN:-1}" ]; do echo "$node"; i=$((i + 1));'
    ' done; done >"$PSIJ_NODEFILE"',
    'if [ -n "${SUANLI_PSIJ_PRE_LAUNCH:-}" ]; then . "$SUANLI_PSIJ_PRE_LAUNCH"; fi',
)


@dataclass(frozen=True)
class Translated:
    """The suanli spec, the cluster it goes to, and the files to truncate before it starts (PSI/J truncates
    stdout/stderr once per job; the wrapper appends, so that every process of a job keeps its lines)."""

    spec: JobSpec
    cluster: str | None
    truncate: tuple[Path, ...]


def _abs(path: Path | None, directory: Path | None) -> Path | None:
    if path is None:
        return None
    if not path.is_absolute() and directory is not None:
        path = directory / path
    return Path(os.path.abspath(path))


def custom_options(attributes: Mapping[str, object] | None) -> dict[str, object]:
    """``suanli.<key>`` custom attributes; an unknown ``suanli.`` key is refused with the valid ones."""
    out: dict[str, object] = {}
    for key, value in (attributes or {}).items():
        prefix, dot, name = str(key).partition(".")
        if not dot or prefix.lower() != "suanli":
            continue
        if name not in CUSTOM_ATTRIBUTES:
            raise InvalidJobException(f"custom_attributes: unknown key {key!r}; valid keys: "
                                      + ", ".join(f"suanli.{k}" for k in CUSTOM_ATTRIBUTES))
        out[name] = value
    return out


def translate(ps: PsijSpec, backend: str, default_cluster: str | None) -> Translated:
    """The suanli spec of one PSI/J job for a cluster of ``backend``. Raises InvalidJobException naming the
    field for anything suanli cannot honour (it never silently drops a request)."""
    if not ps.executable:
        raise InvalidJobException("executable: missing; give the program to run, such as /bin/date")
    res = ps.resources or ResourceSpecV1()
    if not isinstance(res, ResourceSpecV1):
        raise InvalidJobException(f"resources: {type(res).__name__} is not supported; use ResourceSpecV1")
    attrs = ps.attributes
    custom = custom_options(attrs.custom_attributes if attrs else None)
    if attrs is not None and attrs.reservation_id:
        raise InvalidJobException("attributes.reservation_id: suanli's JobSpec has no reservation field; "
                                  "submit without one, or use a partition that maps to the reservation")
    if res.exclusive_node_use:
        raise InvalidJobException("resources.exclusive_node_use: suanli's Resources has no exclusive-node "
                                  "request; ask for all of a node's cores (cpu_cores_per_process) instead")
    directory = _abs(ps.directory, None)
    stdin, stdout, stderr = (_abs(p, directory) for p in (ps.stdin_path, ps.stdout_path, ps.stderr_path))
    post = _abs(ps.post_launch, directory)
    pre = _abs(ps.pre_launch, directory)
    argv = [str(ps.executable), *(str(a) for a in ps.arguments or [])]
    env = {k: str(v) for k, v in (ps.environment or {}).items()}
    if not ps.inherit_environment:
        argv = ["env", "-i", *(f"{k}={v}" for k, v in env.items()), *argv]
    launcher = ps.launcher or "single"
    nodes, procs = res.computed_node_count, res.computed_process_count
    ppn = res.computed_processes_per_node
    copies = procs if launcher == "multiple" and backend == "local" else 1
    if post is not None and launcher != "single":
        raise InvalidJobException(f"post_launch: suanli runs it after the process ends, so only with the single "
                                  f"launcher (this job uses {launcher!r})")
    if any(p is not None for p in (stdin, stdout, stderr, post)) or copies > 1:
        argv = ["/bin/sh", "-c", WRAPPER, "suanli-psij", *(str(p or "") for p in (stdin, stdout, stderr, post)),
                str(copies), *argv]
    try:
        workload, tasks_per_node = _workload(launcher, argv, backend, nodes, procs, ppn, res)
        resources = _resources(res, attrs.duration if attrs else None, nodes, tasks_per_node,
                               custom.get("memory"), custom.get("accelerator_kind"))
        job_env = dict(env) if ps.inherit_environment else {}
        job_env["SUANLI_PSIJ_PPN"] = str(ppn if launcher != "single" else 1)
        if pre is not None:
            job_env["SUANLI_PSIJ_PRE_LAUNCH"] = str(pre)
        account = (attrs.account or attrs.project_name) if attrs else None
        spec = JobSpec(
            workload=workload, name=str(custom.get("name") or ps.name or Path(ps.executable).name),
            resources=resources, env=job_env, setup=SETUP, workdir=str(directory) if directory else None,
            partition=attrs.queue_name if attrs else None, account=account,
            qos=_opt_str(custom.get("qos")), constraint=_opt_str(custom.get("constraint")),
            max_restarts=int(custom.get("max_restarts", 0)),  # type: ignore[call-overload]
        )
    except UsageError as exc:
        raise InvalidJobException(str(exc)) from None
    except (TypeError, ValueError) as exc:
        raise InvalidJobException(f"custom_attributes: {exc}") from None
    cluster = _opt_str(custom.get("cluster")) or default_cluster
    return Translated(spec, cluster, tuple(p for p in (stdout, stderr) if p is not None))


def _opt_str(value: object) -> str | None:
    return None if value is None else str(value)


def _workload(launcher: str, argv: list[str], backend: str, nodes: int, procs: int, ppn: int,
              res: ResourceSpecV1) -> tuple[Command | MPI, int]:
    """PSI/J launcher -> suanli workload and tasks per node. single: one process (the allocation still holds
    every requested core); multiple and srun: a Command with one task per process (suanli's Slurm backend
    starts a multi-task Command with srun; the local backend gets N copies from the wrapper); mpirun: suanli's
    MPI workload, launched by the partition's ``mpi_launcher`` (mpirun or srun --mpi=pmix)."""
    if launcher not in LAUNCHERS:
        raise InvalidJobException(f"launcher: {launcher!r} is not available with suanli; valid launchers: "
                                  + ", ".join(LAUNCHERS))
    if launcher == "single":
        if nodes > 1:
            raise InvalidJobException("launcher: 'single' starts one process, so node_count must be 1; use the "
                                      "srun or mpirun launcher for more nodes")
        return Command(argv), 1
    if launcher in ("srun", "multiple") and backend == "local" and nodes > 1:
        raise InvalidJobException(f"resources.node_count: the local cluster has one node, not {nodes}")
    if launcher == "srun" and backend != "slurm":
        raise InvalidJobException(f"launcher: 'srun' needs a Slurm cluster; this cluster's backend is {backend!r}")
    if launcher == "mpirun":
        per_node = res.processes_per_node or (ppn if res.node_count else None)
        return MPI(argv, ranks=procs, ranks_per_node=per_node), ppn
    return Command(argv), (1 if backend == "local" else ppn)


def _resources(res: ResourceSpecV1, duration: timedelta | None, nodes: int, tasks_per_node: int,
               memory: Any, accelerator_kind: Any) -> Resources:
    cpus = res.cpu_cores_per_process or 1
    gpus = (res.gpu_cores_per_process or 0) * res.computed_processes_per_node
    if tasks_per_node == 1 and res.computed_processes_per_node > 1:
        cpus *= res.computed_processes_per_node  # one process, but the allocation holds every requested slot
    mem: Any = memory
    if mem is None and res.memory:
        mem = max(1, math.ceil(res.memory / nodes / 2**20))  # PSI/J: bytes for the job; suanli: MiB per node
    return Resources(nodes=nodes, tasks_per_node=tasks_per_node, cpus_per_task=cpus, memory=mem,
                     accelerators=gpus, accelerator_kind=None if accelerator_kind is None else str(accelerator_kind),
                     time=duration)
