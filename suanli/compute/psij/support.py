"""Support for the psij backend: PSI/J objects built from the plan's plain request, the processes of PSI/J's
local executor (found again by pid and start time), and the small files a job leaves in its folder."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

from suanli.compute.base import JobRef

#: The job folder's record of what PSI/J was given and answered (native id, the launcher's pid and start time).
RECORD = "psij.json"
_MIB = 1024 * 1024


def resources(nodes: int, per_node: int, cpus: int, accelerators: int, memory_mb: int | None) -> dict[str, Any]:
    """ResourceSpecV1's fields: GPUs per process from the per-node count; memory in bytes per node (PSI/J's
    Slurm template writes it as ``--mem``, which is per node)."""
    return {
        "node_count": nodes, "processes_per_node": per_node, "cpu_cores_per_process": cpus,
        "gpu_cores_per_process": -(-accelerators // per_node) if accelerators else None,
        "memory": memory_mb * _MIB if memory_mb else None,
    }


def psij_job(psij: Any, req: Mapping[str, Any]) -> Any:
    """A psij.Job from the plan's request (plain JSON, so ``--dry-run`` shows exactly what PSI/J gets)."""
    a = req["attributes"]
    attrs = psij.JobAttributes(queue_name=a["queue_name"], account=a["account"],
                               custom_attributes=dict(a["custom_attributes"]) or None)
    # No limit given: none is asked for (PSI/J's default of 10 minutes would kill a suanli job that has none).
    attrs.duration = None if a["duration_s"] is None else timedelta(seconds=a["duration_s"])
    spec = psij.JobSpec(executable=req["executable"], arguments=list(req["arguments"]), directory=req["directory"],
                        name=req["name"], stdout_path=req["stdout_path"], stderr_path=req["stderr_path"],
                        resources=psij.ResourceSpecV1(**req["resources"]), attributes=attrs,
                        launcher=req["launcher"], inherit_environment=True)
    return psij.Job(spec)


def is_batch(ex: Any) -> bool:
    from psij.executors.batch.batch_scheduler_executor import BatchSchedulerExecutor

    return isinstance(ex, BatchSchedulerExecutor)


def forget(ex: Any, native: str) -> None:
    """Take a submitted job off the executor's poll thread (best effort: a private attribute of PSI/J)."""
    poller = getattr(ex, "_queue_poll_thread", None)
    jobs = getattr(poller, "_jobs", None)
    lock = getattr(poller, "_jobs_lock", None)
    if isinstance(jobs, dict) and lock is not None:
        with lock:
            jobs.pop(native, None)


def create_time(pid: int) -> float | None:
    import psutil

    try:
        return float(psutil.Process(pid).create_time())
    except psutil.Error:
        return None


def process(ref: JobRef) -> Any:
    """The local executor's launcher process of this job, if it still runs (pid and start time must match,
    so a reused pid is never taken for it; a zombie has ended)."""
    import psutil

    rec = read_json(Path(ref.job_dir) / RECORD)
    try:
        proc = psutil.Process(int(str(ref.native_id)))
        start = rec.get("pid_start")
        if start is not None and abs(proc.create_time() - float(start)) > 0.01:
            return None
        return None if proc.status() == psutil.STATUS_ZOMBIE else proc
    except (psutil.Error, ValueError):
        return None


def alive(ref: JobRef) -> bool:
    return process(ref) is not None


def kill_local(ref: JobRef) -> None:
    """What PSI/J's local executor does on cancel (kill the launcher and everything under it), from any process."""
    import psutil

    proc = process(ref)
    if proc is None:
        return
    try:
        victims = [*proc.children(recursive=True), proc]
    except psutil.Error:
        victims = [proc]
    for p in victims:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(victims, timeout=5)


def failure_reason(state: str, message: str | None) -> str | None:
    if state == "FAILED":
        return (message or "NonZeroExitCode").splitlines()[0][:200]
    return None


def exit_record(path: Path) -> tuple[int, float | None] | None:
    try:
        parts = path.read_text().split()
        return int(parts[0]), float(parts[1]) if len(parts) > 1 else None
    except (OSError, ValueError, IndexError):
        return None


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def first_line(exc: object) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]
