"""Pure parsers of Slurm's outputs (sacct, squeue, sbatch), kept apart from the subprocess calls so they can
be tested on captured real outputs."""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from datetime import datetime
from typing import NamedTuple

from suanli.jobs.state import JobState, StateTable

STATES = StateTable(
    "slurm",
    {
        "PENDING": JobState.PENDING,
        "CONFIGURING": JobState.PENDING,
        "RUNNING": JobState.RUNNING,
        "RESIZING": JobState.RUNNING,
        "SIGNALING": JobState.RUNNING,
        "SUSPENDED": JobState.SUSPENDED,
        "STOPPED": JobState.SUSPENDED,
        "COMPLETING": JobState.COMPLETING,
        "STAGE_OUT": JobState.COMPLETING,
        "COMPLETED": JobState.COMPLETED,
        "CANCELLED": JobState.CANCELLED,
        "REVOKED": JobState.CANCELLED,
        "FAILED": JobState.FAILED,
        "BOOT_FAIL": JobState.FAILED,
        "SPECIAL_EXIT": JobState.FAILED,
        "TIMEOUT": JobState.TIMEOUT,
        "DEADLINE": JobState.TIMEOUT,
        "PREEMPTED": JobState.PREEMPTED,
        "NODE_FAIL": JobState.NODE_FAIL,
        "OUT_OF_MEMORY": JobState.OUT_OF_MEMORY,
        "REQUEUED": JobState.REQUEUED,
        "REQUEUE_HOLD": JobState.REQUEUED,
        "REQUEUE_FED": JobState.REQUEUED,
        "RESV_DEL_HOLD": JobState.PENDING,
    },
)

SACCT_FIELDS = ("JobID", "JobIDRaw", "State", "ExitCode", "Start", "End", "Reason")
SQUEUE_FORMAT = "%i|%T|%r"


class TaskState(NamedTuple):
    """One (job, array task) as a Slurm command reported it (a named tuple: a poll makes one per sacct row,
    and a frozen dataclass costs several times more to build)."""

    job: str  # the native id of the job (the array's id for array tasks)
    task: int | None
    raw_id: str | None
    state: JobState
    exit_code: int | None = None
    started_at: float | None = None
    ended_at: float | None = None
    reason: str | None = None
    restarts: int = 0


def parse_sbatch(stdout: str) -> str:
    """``sbatch --parsable`` prints ``JOBID`` or ``JOBID;CLUSTER``."""
    first = stdout.strip().splitlines()[-1] if stdout.strip() else ""
    job = first.split(";", 1)[0].strip()
    if not job.isdigit():
        raise ValueError(f"unexpected sbatch output {stdout.strip()!r}")
    return job


def parse_time(text: str) -> float | None:
    """sacct's ``2026-11-27T10:00:00`` (local time); ``Unknown``/``None``/empty are no time."""
    text = text.strip()
    if not text or text in ("Unknown", "None", "N/A"):
        return None
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


def parse_exit(text: str) -> int | None:
    """``CODE:SIGNAL`` -> the shell's view: the code, or 128 + the signal (sacct's ``0:15`` is 143, as bash
    reports a script killed by SIGTERM)."""
    code, _, sig = text.strip().partition(":")
    if not code.isdigit():
        return None
    if sig.isdigit() and int(sig):
        return 128 + int(sig)
    return int(code)


#: States in which Slurm stopped the script with a signal (SIGTERM, then SIGKILL after KillWait).
_STOPPED = (JobState.CANCELLED, JobState.TIMEOUT, JobState.PREEMPTED)


def _stopped_exit(text: str) -> int | None:
    """The batch step's ExitCode of a job Slurm stopped, as 128 + the signal: ``0:15`` and also ``15:0``, the
    form slurmstepd records when it signalled the script itself (the allocation row then says ``0:0``)."""
    code, _, sig = text.strip().partition(":")
    if sig.isdigit() and int(sig):
        return 128 + int(sig)
    if code.isdigit() and 0 < int(code) < 128:
        return 128 + int(code)
    return int(code) if code.isdigit() else None


_ID = re.compile(r"^(\d+)(?:_(\d+|\[[^\]]*\]))?(?:\+\d+)?$")
_BATCH = re.compile(r"^(\d+)(?:_(\d+))?\.batch$")


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


def bracket_runs(spec: str) -> list[tuple[int, int]]:
    """``[5-7,9%2]`` -> [(5, 7), (9, 9)]: inclusive runs, so a pending range of 50,000 tasks stays one pair."""
    inner = spec.strip("[]").split("%", 1)[0]
    out: list[tuple[int, int]] = []
    for part in inner.split(","):
        if not part:
            continue
        rng, _, step = part.partition(":")
        lo, _, hi = rng.partition("-")
        if hi and step and int(step) != 1:
            out.extend((i, i) for i in range(int(lo), int(hi) + 1, int(step)))
        else:
            out.append((int(lo), int(hi or lo)))
    return out


class TaskRun(NamedTuple):
    """Tasks ``lo..hi`` (inclusive) of one native job in one state: a pending array range is one run however many
    tasks it holds, so a poll costs per sacct row instead of per task. ``lo`` is None for a job that is no array."""

    state: TaskState
    lo: int | None
    hi: int | None


def parse_sacct(text: str, fields: Iterable[str] = SACCT_FIELDS) -> list[TaskState]:
    """``sacct --parsable2 --noheader -X -D -o <fields>`` into task states. With ``-D`` a requeued job has one
    row per attempt: the last row is the current attempt and the count of earlier rows is its restarts.
    Rows whose state the table does not know become UNKNOWN (with one warning) instead of failing."""
    out: list[TaskState] = []
    for run in parse_sacct_runs(text, fields):
        if run.lo is None or run.hi is None or run.state.task is not None:
            out.append(run.state)
            continue
        ts = run.state
        out.extend(TaskState(ts.job, t, ts.raw_id, ts.state, ts.exit_code, ts.started_at, ts.ended_at, ts.reason,
                             ts.restarts) for t in range(run.lo, run.hi + 1))
    return out


def _row_fields(parts: list[str], col: dict[str, int]) -> dict[str, object]:
    """The state, times, exit code and reason of one sacct row (everything but its ids)."""
    def field(name: str) -> str:
        return parts[col[name]] if name in col else ""

    state = STATES(parts[col["State"]])
    reason_text = field("Reason").strip()
    reason = None if reason_text in ("", "None") else reason_text
    return {
        "state": state,
        "exit_code": parse_exit(field("ExitCode")) if state.is_terminal else None,
        "started_at": parse_time(field("Start")),
        "ended_at": parse_time(field("End")) if state.is_terminal else None,
        "reason": reason if not state.is_terminal or state is not JobState.COMPLETED else None,
    }


#: How long a stopped job whose batch step slurmdbd has not recorded yet stays "completing": its exit code (the
#: signal) is on that step, and a terminal state is cached for good once seen.
BATCH_STEP_GRACE_S = 60.0


def parse_sacct_runs(text: str, fields: Iterable[str] = SACCT_FIELDS, with_steps: bool = False,
                     now: float | None = None) -> list[TaskRun]:
    """Like ``parse_sacct``, but a pending array range stays one run (minus the tasks that have rows of their
    own): the work is per sacct row, never per task. Identical rows but for their ids (thousands of pending
    jobs) are decoded once."""
    names = list(fields)
    col = {n: i for i, n in enumerate(names)}
    ids_first = names[:2] == ["JobID", "JobIDRaw"]
    decoded: dict[str, dict[str, object]] = {}
    latest: dict[tuple[str, int | None], TaskState] = {}
    ranges: list[tuple[str, list[tuple[int, int]], dict[str, object]]] = []
    attempts: dict[tuple[str, int | None], int] = {}
    # A job killed by its time limit or scancel shows ExitCode 0:0 on its allocation row; the signal that
    # ended the script is on the batch step (0:15). Without -X each attempt's steps follow its own row.
    batch_exit: dict[tuple[str, int | None], int | None] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        parts = line.split("|")
        if len(parts) < len(names):
            continue
        job_id = parts[col["JobID"]].strip()
        m = _ID.match(job_id)
        if not m:
            b = _BATCH.match(job_id)
            if b and "ExitCode" in col:
                batch_exit[(b.group(1), int(b.group(2)) if b.group(2) else None)] = _stopped_exit(
                    parts[col["ExitCode"]])
            continue  # another step (extern, srun steps) or a heterogeneous component
        job, task_text = m.group(1), m.group(2)
        if ids_first:
            rest = line.split("|", 2)[2]
            common = decoded.get(rest)
            if common is None:
                common = decoded[rest] = _row_fields(parts, col)
        else:
            common = _row_fields(parts, col)
        raw = parts[col["JobIDRaw"]].strip() if "JobIDRaw" in col else None
        if task_text and task_text.startswith("["):
            # The database's pending range lags behind: a task with a row of its own is not pending.
            ranges.append((job, bracket_runs(task_text), common))
            continue
        task = int(task_text) if task_text else None
        key = (job, task)
        attempts[key] = attempts.get(key, 0) + 1
        batch_exit.pop(key, None)  # steps seen so far belong to an earlier attempt
        latest[key] = TaskState(job, task, raw, **common)  # type: ignore[arg-type]
    out: list[TaskRun] = []
    for key, ts in latest.items():
        restarts = attempts[key] - 1
        code = ts.exit_code
        if ts.state in _STOPPED and not code and batch_exit.get(key):
            code = batch_exit[key]
        elif (with_steps and ts.state in _STOPPED and not code and not batch_exit.get(key) and ts.started_at
              and ts.ended_at and (time.time() if now is None else now) - ts.ended_at < BATCH_STEP_GRACE_S):
            # It ran, so its batch step ends with the signal that stopped it; slurmdbd writes the step (first
            # as 0:0, then 0:15) after the job's row. Not final until the signal is there: a state cached as
            # final would keep exit code 0 for good.
            out.append(TaskRun(TaskState(ts.job, ts.task, ts.raw_id, JobState.RUNNING, None, ts.started_at, None,
                                         "Completing", restarts), ts.task, ts.task))
            continue
        if restarts or code != ts.exit_code:
            ts = TaskState(ts.job, ts.task, ts.raw_id, ts.state, code, ts.started_at, ts.ended_at, ts.reason,
                           restarts)
        out.append(TaskRun(ts, ts.task, ts.task))
    own: dict[str, list[int]] = {}
    for job, task in latest:
        if task is not None:
            own.setdefault(job, []).append(task)
    covered: dict[str, list[tuple[int, int]]] = {}
    for job, runs, common in ranges:
        ts = TaskState(job, None, None, **common)  # type: ignore[arg-type]
        taken = sorted([(t, t) for t in own.get(job, [])] + covered.get(job, []))
        for lo, hi in runs:
            for first, last in _subtract(lo, hi, taken):
                out.append(TaskRun(ts, first, last))
        covered.setdefault(job, []).extend(runs)
    return out


def _subtract(lo: int, hi: int, taken: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The parts of ``lo..hi`` outside the sorted runs ``taken``."""
    out: list[tuple[int, int]] = []
    start = lo
    for a, b in taken:
        if b < start or a > hi:
            continue
        if a > start:
            out.append((start, a - 1))
        start = max(start, b + 1)
        if start > hi:
            break
    if start <= hi:
        out.append((start, hi))
    return out


def parse_squeue(text: str) -> list[TaskState]:
    """``squeue -h -o '%i|%T|%r'``: what the controller still holds (no exit codes, no history)."""
    out: list[TaskState] = []
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
        tasks = expand_brackets(task_text) if task_text and task_text.startswith("[") else \
            [int(task_text) if task_text else None]
        for t in tasks:
            out.append(TaskState(job, t, None, state, reason=reason))
    return out


def parse_config(text: str) -> dict[str, str]:
    """``scontrol show config``: ``Name = value`` lines into a dict (values as printed)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() and " " not in key.strip():
            out[key.strip()] = value.strip()
    return out
