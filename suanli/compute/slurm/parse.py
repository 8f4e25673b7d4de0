"""Pure parsers of Slurm's other outputs (sbatch, squeue, scontrol), kept apart from the subprocess calls so they
can be tested on captured real outputs. The sacct reader and the state table live in ``sacct.py``; their names
are re-exported here for the callers that know them from this module."""

from __future__ import annotations

from suanli.compute.slurm.sacct import (
    _ID,
    BATCH_STEP_GRACE_S,
    SACCT_FIELDS,
    STATES,
    TaskRun,
    TaskState,
    bracket_runs,
    combine_components,
    parse_exit,
    parse_sacct,
    parse_sacct_runs,
    parse_time,
)

__all__ = ["BATCH_STEP_GRACE_S", "SACCT_FIELDS", "SQUEUE_FORMAT", "STATES", "TaskRun", "TaskState", "bracket_runs",
           "expand_brackets", "parse_config", "parse_exit", "parse_sacct", "parse_sacct_runs", "parse_sbatch",
           "parse_squeue", "parse_time"]

SQUEUE_FORMAT = "%i|%T|%r"


def parse_sbatch(stdout: str) -> str:
    """``sbatch --parsable`` prints ``JOBID`` or ``JOBID;CLUSTER``."""
    first = stdout.strip().splitlines()[-1] if stdout.strip() else ""
    job = first.split(";", 1)[0].strip()
    if not job.isdigit():
        raise ValueError(f"unexpected sbatch output {stdout.strip()!r}")
    return job


def expand_brackets(spec: str) -> list[int]:
    """``[5-7,9%2]`` -> [5, 6, 7, 9] (the ``%`` limit and ``:step`` are understood)."""
    inner = spec.strip("[]").split("%", 1)[0]
    out: list[int] = []
    for part in inner.split(","):
        if not part:
            continue
        rng, _, step = part.partition(":")
        lo, _, hi = rng.partition("-")
        if hi:
            out.extend(range(int(lo), int(hi) + 1, int(step or 1)))
        else:
            out.append(int(lo))
    return out


def parse_squeue(text: str) -> list[TaskState]:
    """``squeue -h -o '%i|%T|%r'``: what the controller still holds (no exit codes, no history). A
    heterogeneous job's ``123+N`` rows combine into one state as sacct's do (``components`` says how many
    were listed), so a failed component 1 is seen and the job ends only when every listed one has."""
    out: list[TaskState] = []
    het: dict[str, list[tuple[int, TaskState]]] = {}
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) < 3:
            continue
        m = _ID.match(parts[0])
        if not m:
            continue
        job, task_text = m.group(1), m.group(2)
        state = STATES(parts[1])
        reason = None if parts[2] in ("None", "") else parts[2]
        if m.group(3) is not None:
            het.setdefault(job, []).append((int(m.group(3)), TaskState(job, None, None, state, reason=reason)))
            continue
        tasks = expand_brackets(task_text) if task_text and task_text.startswith("[") else \
            [int(task_text) if task_text else None]
        for t in tasks:
            out.append(TaskState(job, t, None, state, reason=reason))
    for found in het.values():
        out.append(combine_components([ts for _, ts in sorted(found, key=lambda p: p[0])]))
    return out


def parse_config(text: str) -> dict[str, str]:
    """``scontrol show config``: ``Name = value`` lines into a dict (values as printed)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() and " " not in key.strip():
            out[key.strip()] = value.strip()
    return out
