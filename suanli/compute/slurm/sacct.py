"""The one reader of sacct's output for this backend: Slurm's state table, the cell parsers (times, durations,
exit codes, TRES) and the status reader; the streamed usage reader in ``sacct_usage.py`` uses the same ones."""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from datetime import datetime
from typing import NamedTuple

from suanli.jobs.state import JobState, StateTable, combine_states

#: Slurm's state names -> (suanli's state, whether an allocation in it is still going). The one table for both
#: readers: status polling maps through ``STATES``; accounting books only allocations that are not open.
_TABLE: dict[str, tuple[JobState, bool]] = {
    "PENDING": (JobState.PENDING, True),
    "CONFIGURING": (JobState.PENDING, True),
    "RESV_DEL_HOLD": (JobState.PENDING, True),
    "RUNNING": (JobState.RUNNING, True),
    "RESIZING": (JobState.RUNNING, True),
    "SIGNALING": (JobState.RUNNING, True),
    "SUSPENDED": (JobState.SUSPENDED, True),
    "STOPPED": (JobState.SUSPENDED, True),
    "COMPLETING": (JobState.COMPLETING, True),
    "STAGE_OUT": (JobState.COMPLETING, True),
    "REQUEUE_HOLD": (JobState.REQUEUED, True),
    "REQUEUE_FED": (JobState.REQUEUED, True),
    "REQUEUING": (JobState.REQUEUED, True),
    # An attempt that ended: booked (REQUEUED is the attempt before a requeue, the job itself runs again).
    "REQUEUED": (JobState.REQUEUED, False),
    "COMPLETED": (JobState.COMPLETED, False),
    "CANCELLED": (JobState.CANCELLED, False),
    "REVOKED": (JobState.CANCELLED, False),
    "FAILED": (JobState.FAILED, False),
    "BOOT_FAIL": (JobState.FAILED, False),
    "SPECIAL_EXIT": (JobState.FAILED, False),
    "TIMEOUT": (JobState.TIMEOUT, False),
    "DEADLINE": (JobState.TIMEOUT, False),
    "PREEMPTED": (JobState.PREEMPTED, False),
    "NODE_FAIL": (JobState.NODE_FAIL, False),
    "OUT_OF_MEMORY": (JobState.OUT_OF_MEMORY, False),
}
STATES = StateTable("slurm", {name: state for name, (state, _open) in _TABLE.items()})
#: Allocations in these states are still going: not booked yet.
OPEN_STATES = frozenset(name for name, (_state, still) in _TABLE.items() if still)
#: Allocations in these states have ended; any other state is booked too, with a warning that it is new.
KNOWN_FINAL = frozenset(name for name, (_state, still) in _TABLE.items() if not still)

#: What status polling asks ``sacct -X -D`` for.
SACCT_FIELDS = ("JobID", "JobIDRaw", "State", "ExitCode", "Start", "End", "Reason")


def state_word(text: str) -> str:
    """A state as sacct prints it, reduced to its name: ``CANCELLED by 123`` and ``CANCELLED+`` are CANCELLED."""
    if " " in text or text.endswith("+"):
        return text.split(" ")[0].rstrip("+")
    return text


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
    #: A heterogeneous job: how many of its components (``123+0``, ``123+1``) this state combines (0: not one).
    components: int = 0


def parse_time(text: str) -> float | None:
    """sacct's ``2026-11-27T10:00:00``, local time without a zone (as its -S/-E read it); ``Unknown``, ``None``,
    ``N/A`` and empty are no time."""
    text = text.strip()
    if not text or text[0] not in "0123456789":
        return None
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


def parse_clock(text: str) -> float | None:
    """sacct durations: ``[D-]HH:MM:SS``, ``MM:SS.mmm``, ``HH:MM:SS.mmm``; None for empty or INVALID."""
    text = text.strip()
    if not text or text in ("INVALID", "UNLIMITED", "Partition_Limit"):
        return None
    days = 0
    if "-" in text:
        d, _, text = text.partition("-")
        days = int(d)
    parts = text.split(":")
    try:
        secs = 0.0
        for p in parts:
            secs = secs * 60 + float(p)
    except ValueError:
        return None
    return days * 86400 + secs


def parse_tres(text: str) -> dict[str, str]:
    """``cpu=4,gres/gpu=2,node=1`` -> its items."""
    out: dict[str, str] = {}
    for item in text.split(","):
        k, sep, v = item.partition("=")
        if sep:
            out[k] = v
    return out


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


_ID = re.compile(r"^(\d+)(?:_(\d+|\[[^\]]*\]))?(?:\+(\d+))?$")
_BATCH = re.compile(r"^(\d+)(?:_(\d+))?(?:\+0)?\.batch$")  # a hetjob's script runs in its component 0


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
    # Keyed (job, task, component): a heterogeneous job's components are read apart, then combined.
    latest: dict[tuple[str, int | None, int | None], TaskState] = {}
    ranges: list[tuple[str, list[tuple[int, int]], dict[str, object]]] = []
    attempts: dict[tuple[str, int | None, int | None], int] = {}
    # A job killed by its time limit or scancel shows ExitCode 0:0 on its allocation row; the signal that
    # ended the script is on the batch step (0:15). Without -X each attempt's steps follow its own row.
    batch_exit: dict[tuple[str, int | None, int | None], int | None] = {}
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
                het0 = 0 if "+0." in job_id else None
                batch_exit[(b.group(1), int(b.group(2)) if b.group(2) else None, het0)] = _stopped_exit(
                    parts[col["ExitCode"]])
            continue  # another step (extern, srun steps)
        job, task_text = m.group(1), m.group(2)
        het = int(m.group(3)) if m.group(3) else None
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
        key = (job, task, het)
        attempts[key] = attempts.get(key, 0) + 1
        batch_exit.pop(key, None)  # steps seen so far belong to an earlier attempt
        latest[key] = TaskState(job, task, raw, **common)  # type: ignore[arg-type]
    out: list[TaskRun] = []
    het_parts: dict[str, list[tuple[int, TaskState]]] = {}
    for key, ts in latest.items():
        restarts = attempts[key] - 1
        code = ts.exit_code
        completing = False
        if ts.state in _STOPPED and not code and batch_exit.get(key):
            code = batch_exit[key]
        elif (with_steps and ts.state in _STOPPED and not code and not batch_exit.get(key) and ts.started_at
              and not key[2]  # a hetjob's script (its batch step) runs in component 0 only
              and ts.ended_at and (time.time() if now is None else now) - ts.ended_at < BATCH_STEP_GRACE_S):
            # It ran, so its batch step ends with the signal that stopped it; slurmdbd writes the step (first
            # as 0:0, then 0:15) after the job's row. Not final until the signal is there: a state cached as
            # final would keep exit code 0 for good.
            completing = True
            ts = TaskState(ts.job, ts.task, ts.raw_id, JobState.RUNNING, None, ts.started_at, None, "Completing",
                           restarts)
        if not completing and (restarts or code != ts.exit_code):
            ts = TaskState(ts.job, ts.task, ts.raw_id, ts.state, code, ts.started_at, ts.ended_at, ts.reason,
                           restarts)
        if key[2] is not None:
            het_parts.setdefault(ts.job, []).append((key[2], ts))
            continue
        out.append(TaskRun(ts, ts.task, ts.task))
    for found in het_parts.values():
        combined = combine_components([ts for _, ts in sorted(found, key=lambda p: p[0])])
        out.append(TaskRun(combined, None, None))
    own: dict[str, list[int]] = {}
    for job, task, _het in latest:
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


def combine_components(parts: list[TaskState]) -> TaskState:
    """One state for a heterogeneous job from its components' (component 0 first): the worst once every
    component has ended (any FAILED is FAILED, all COMPLETED is COMPLETED), else still going; the first
    start, the last end, the script's exit code (component 0) unless only another component's says why."""
    leader = parts[0]
    state = combine_states(p.state for p in parts)
    ended = state.is_terminal
    worst = next((p for p in parts if p.state is state), leader)
    code = None
    if ended:
        code = next((c for c in (leader.exit_code, worst.exit_code, *(p.exit_code for p in parts)) if c), None)
        code = 0 if code is None and all(p.exit_code == 0 for p in parts) else code
    starts = [p.started_at for p in parts if p.started_at is not None]
    ends = [p.ended_at for p in parts if p.ended_at is not None]
    # The hetjob's own id (component 0's raw id is the job's), also while only a later component is listed.
    raw = None if leader.raw_id is None else leader.job
    return TaskState(leader.job, None, raw, state, code, min(starts) if starts else None,
                     max(ends) if ends and ended else None, worst.reason if worst.reason else leader.reason,
                     leader.restarts, len(parts))


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


