"""Runs a pickled Function (or one item of a Map) inside a job and writes its outcome next to the payload.

``python -m suanli.runtime.function JOB_DIR``; the array task comes from ``SUANLI_ARRAY_TASK_ID``. The outcome
file holds ``("ok", value)`` or ``("error", exception or None, formatted traceback, repr)``; the submitting side
re-raises the exception with the remote traceback as its cause.

Checkpointing (submitit's convention): when the scheduler warns of the time limit or preemption with SIGUSR2
and the callable has a ``checkpoint(*args, **kwargs)`` method, its return value — ``(fn, args, kwargs)``, a
submitit ``DelayedSubmission``, or None — becomes this task's payload and the job is requeued, so the next
attempt resumes from it (so ``submitit.helpers.Checkpointable`` subclasses work as they are).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import traceback
from pathlib import Path
from types import FrameType
from typing import Any


class _Checkpoint(BaseException):
    """Raised inside the running function when SIGUSR2 arrives, so the call stops where it is."""


def outcome_path(job_dir: Path, task: str | None) -> Path:
    return job_dir / ("result.pkl" if task is None else f"result-{task}.pkl")


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _load(job_dir: Path, task: str | None) -> tuple[Any, tuple[Any, ...], dict[str, Any]]:
    import cloudpickle

    override = job_dir / f"checkpoint-{task or 'main'}.pkl"
    with open(override if override.exists() else job_dir / "payload.pkl", "rb") as fh:
        outer: dict[str, Any] = cloudpickle.load(fh)
    # Modules the submitter could import by path (its script folder, a test folder) become importable here.
    sys.path.extend(p for p in outer["sys_path"] if p not in sys.path)
    payload: dict[str, Any] = cloudpickle.loads(outer["data"])
    if payload["kind"] == "map":
        if task is None:
            raise RuntimeError("a map payload needs SUANLI_ARRAY_TASK_ID")
        return payload["fn"], (payload["items"][int(task)],), {}
    return payload["fn"], tuple(payload["args"]), dict(payload["kwargs"])


def _checkpoint(job_dir: Path, task: str | None, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """Save the callable's checkpoint and requeue this job; False when it cannot be done."""
    import cloudpickle

    job = os.environ.get("SLURM_JOB_ID")
    if not job or not callable(getattr(fn, "checkpoint", None)):
        return False
    state = fn.checkpoint(*args, **kwargs)
    if state is None:
        return False
    if hasattr(state, "function") and hasattr(state, "args"):
        # submitit.helpers.DelayedSubmission, so callables written for submitit work unchanged.
        new_fn, new_args, new_kwargs = state.function, state.args, getattr(state, "kwargs", {})
    else:
        new_fn, new_args, new_kwargs = state
    inner = cloudpickle.dumps({"kind": "function", "fn": new_fn, "args": tuple(new_args), "kwargs": dict(new_kwargs)})
    _write(job_dir / f"checkpoint-{task or 'main'}.pkl",
           cloudpickle.dumps({"sys_path": list(sys.path), "data": inner}))
    proc = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(f"suanli: requeue after checkpoint failed: {proc.stderr.strip()}\n")
        return False
    sys.stderr.write(f"suanli: checkpointed and requeued job {job}\n")
    return True


def failure(exc: BaseException) -> bytes:
    """The outcome of a call that raised: the exception (when it pickles) and its traceback, also on stderr.
    SystemExit and KeyboardInterrupt are kept as text only: re-raised in the submitter they would end it, where
    they are one task's failure (the submitter raises JobFailedError naming the task)."""
    import cloudpickle

    tb = traceback.format_exc()
    sys.stderr.write(tb)
    if not isinstance(exc, Exception):
        return bytes(cloudpickle.dumps(("error", None, tb, repr(exc))))
    try:
        return bytes(cloudpickle.dumps(("error", exc, tb, repr(exc))))
    except Exception:
        return bytes(cloudpickle.dumps(("error", None, tb, repr(exc))))


def main(argv: list[str]) -> int:
    import cloudpickle

    if len(argv) != 2:
        print("usage: python -m suanli.runtime.function JOB_DIR", file=sys.stderr)
        return 2
    job_dir = Path(argv[1])
    task = os.environ.get("SUANLI_ARRAY_TASK_ID") or None
    # An earlier attempt's outcome must not pass for this one's (a requeued task that then times out).
    outcome_path(job_dir, task).unlink(missing_ok=True)
    fn: Any = None
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = {}

    def on_usr2(signum: int, frame: FrameType | None) -> None:
        if callable(getattr(fn, "checkpoint", None)):
            raise _Checkpoint()
        sys.stderr.write("suanli: SIGUSR2 (time limit near); the function is not checkpointable\n")

    signal.signal(signal.SIGUSR2, on_usr2)
    try:
        fn, args, kwargs = _load(job_dir, task)
        value = fn(*args, **kwargs)
        data = cloudpickle.dumps(("ok", value))
    except _Checkpoint:
        if _checkpoint(job_dir, task, fn, args, kwargs):
            return 0
        tb = "the job was stopped before its time limit and could not checkpoint\n"
        _write(outcome_path(job_dir, task), cloudpickle.dumps(("error", None, tb, "TimeoutError()")))
        return 1
    except BaseException as exc:  # the job's own failure, reported to the submitter
        _write(outcome_path(job_dir, task), failure(exc))
        sys.stderr.flush()
        return 1
    _write(outcome_path(job_dir, task), data)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
