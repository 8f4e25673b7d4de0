"""sacct's usage lines read as a stream, one allocation at a time: apart from ``sacct.py`` only because a sync
reads years of history and this reader is built for that (flat memory, header-named columns, steps folded in).

Columns are found by the header's names, so captured outputs with other field sets parse too; a line that
does not fit, or a state this parser has not seen, is counted and logged but never stops a sync. Only
allocations whose attempt has ended are yielded: a running job is booked when it ends (the next sync sees
it again, because sacct -S/-E lists every job that was active inside the window). The accounting service turns
each allocation into a usage record (rates and record ids are accounting's business, not the backend's).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from suanli.adapters import accelerator_adapters
from suanli.compute.slurm.sacct import KNOWN_FINAL, OPEN_STATES, parse_clock, parse_time, parse_tres, state_word

log = logging.getLogger("suanli")

#: What `suanli accounting sync` asks sacct for.
FIELDS = ("JobID", "JobIDRaw", "User", "Account", "Partition", "State", "AllocCPUS", "AllocNodes", "AllocTRES",
          "ElapsedRaw", "CPUTimeRAW", "TotalCPU", "Submit", "Start", "End")


@dataclass
class ParseStats:
    lines: int = 0
    records: int = 0
    steps: int = 0
    open: int = 0
    bad: int = 0
    unknown_states: set[str] = field(default_factory=set)
    #: native ids of jobs with an allocation still open: their reservations stay.
    open_jobs: set[str] = field(default_factory=set)
    #: native ids (array base ids too) of jobs seen with a booked allocation.
    booked_jobs: set[str] = field(default_factory=set)
    #: Only these base ids go into the two sets above (None: all). A centre-wide sync passes the ids that hold
    #: reservations, so memory stays flat however many jobs stream past.
    track: set[str] | None = None

    def note(self, which: set[str], base: str) -> None:
        if self.track is None or base in self.track:
            which.add(base)


@dataclass(slots=True)
class Allocation:
    """One ended allocation (a job attempt, or an array task's attempt) as sacct reported it."""

    job: str  # the native id as sacct prints it (``123``, ``123_4``, ``123+1``: component 1 of a hetjob)
    array_task: int | None
    attempt: int
    user: str | None
    account: str | None
    partition: str | None
    accelerator_kind: str | None
    nodes: int
    cpus: int
    accelerators: int
    submit_time: float | None
    start_time: float | None
    end_time: float | None
    elapsed_s: float
    state: str
    cpu_seconds: float  # allocated CPUs x elapsed (CPUTimeRAW)
    accelerator_seconds: float
    total_cpu_s: float | None  # measured (TotalCPU), the steps' sum where the allocation line has none
    day: str  # YYYY-MM-DD of its End, as sacct printed it


def _gres_kinds() -> dict[str, str]:
    """``gres/<name>`` in AllocTRES -> accelerator kind, from the registered adapters (``npu`` -> ascend,
    ``gpu`` -> nvidia, and whatever other adapter is registered); the first adapter keeps a name."""
    out: dict[str, str] = {}
    for a in accelerator_adapters():
        if a.gres_name and a.accelerator_kind:
            out.setdefault(a.gres_name, a.accelerator_kind)
    return out


def _int(text: str, default: int = 0) -> int:
    try:
        return int(text)
    except ValueError:
        return default


def parse_allocations(lines: Iterable[str], *, delimiter: str = "|", header: list[str] | None = None,
                      stats: ParseStats | None = None) -> Iterator[Allocation]:
    """Ended allocations from sacct lines (the first line is the header unless ``header`` is given), one per
    allocation line. The allocation line carries AllocTRES, CPUTimeRAW and the elapsed time; the measured
    TotalCPU is on the step lines (``123.batch``, ``123.extern``, ``123.0``) that follow it when sacct runs
    without ``-X`` (Slurm 22.05 prints 00:00:00 on a -X allocation line), so an allocation is yielded once its
    steps are read."""
    for t in allocation_tuples(lines, delimiter=delimiter, header=header, stats=stats):
        yield Allocation(*t)


#: One allocation as a plain tuple, in ``Allocation``'s field order: what a sync's hot loop reads (a dataclass
#: per record, made and read again, costs more than parsing the line).
AllocationTuple = tuple[str, int | None, int, str | None, str | None, str | None, str | None, int, int, int,
                        float | None, float | None, float | None, float, str, float, float, float | None, str]


def allocation_tuples(lines: Iterable[str], *, delimiter: str = "|", header: list[str] | None = None,
                      stats: ParseStats | None = None) -> Iterator[AllocationTuple]:
    """``parse_allocations`` as plain tuples."""
    return _parse_lines(lines, delimiter, header, stats)


def _with_steps(alloc: AllocationTuple, steps_cpu: float) -> AllocationTuple:
    """sacct sums the steps into the allocation's TotalCPU itself where it can; where it printed none (Slurm
    22.05 under -X, or an allocation line without it) the steps' sum stands in. Never both: no double count."""
    if steps_cpu and not alloc[17]:
        return (*alloc[:17], steps_cpu, alloc[18])
    return alloc


def _tres_info(text: str, kinds: dict[str, str]) -> tuple[int | None, int, int, str | None]:
    """What a record needs from an AllocTRES cell: its cpu and node counts (None: absent) and the first
    registered accelerator kind with a non-zero count (typed entries, gres/gpu:a100=2, added up)."""
    tres = parse_tres(text)
    acc = 0
    kind: str | None = None
    if "gres/" in text:
        for gres, k in kinds.items():
            n = tres.get("gres/" + gres)
            if n is None:  # only typed entries (gres/gpu:a100=2): add them up
                typed = [_int(v) for key, v in tres.items() if key.startswith(f"gres/{gres}:")]
                n = str(sum(typed)) if typed else None
            if n is not None and _int(n):
                acc, kind = _int(n), k
                break
    return (_int(tres["cpu"]) if "cpu" in tres else None, _int(tres.get("node", "1"), 1), acc, kind)


def _clock(text: str) -> float | None:
    """``parse_clock`` with a fast path for the shapes sacct prints most (``MM:SS.mmm``, ``HH:MM:SS``); the
    same value to the bit (``secs = secs * 60 + part``, from 0.0)."""
    if "-" not in text:
        parts = text.split(":")
        try:
            if len(parts) == 2:
                return float(parts[0]) * 60 + float(parts[1])
            if len(parts) == 3:
                return (float(parts[0]) * 60 + float(parts[1])) * 60 + float(parts[2])
        except ValueError:
            pass
    return parse_clock(text)


class _Columns:
    """The header's column numbers (``width``: an empty cell appended to each row, for a column not there)."""

    def __init__(self, names: list[str]) -> None:
        idx = {n.strip().lower(): i for i, n in enumerate(names)}
        self.width = width = len(names)

        def at(*keys: str) -> int:
            return next((idx[k.lower()] for k in keys if k.lower() in idx), width)

        self.job, self.state, self.end, self.start = at("JobID"), at("State"), at("End"), at("Start")
        self.submit, self.eraw, self.elapsed = at("Submit"), at("ElapsedRaw"), at("Elapsed")
        self.cpus, self.tres, self.nodes = at("AllocCPUS", "NCPUS"), at("AllocTRES"), at("AllocNodes", "NNodes")
        self.cpuraw, self.cputime, self.total = at("CPUTimeRAW"), at("CPUTime"), at("TotalCPU")
        self.part, self.user, self.account = at("Partition"), at("User"), at("Account")


def _clock_reader() -> Callable[[str], float | None]:
    """Local time to epoch, with mktime's answer cached per hour (zones change offsets on whole hours)."""
    hour_epoch: dict[str, float] = {}
    minute_epoch: dict[str, float] = {}  # most ends, starts and submits fall in a minute seen just before

    def hour(text: str) -> float | None:
        base = hour_epoch.get(text[:13])
        if base is None:
            if text[0] not in "0123456789":
                return None
            t0 = parse_time(text[:13] + ":00:00")
            if t0 is None:
                return None
            base = hour_epoch[text[:13]] = t0
        return base

    def when(text: str) -> float | None:
        if len(text) < 19:
            return None
        base = minute_epoch.get(text[:16])
        if base is not None:
            try:
                return base + int(text[17:19])
            except ValueError:
                return parse_time(text)
        base = hour(text)
        if base is None:
            return None
        try:
            minute = base + int(text[14:16]) * 60
            out = minute + int(text[17:19])
        except ValueError:
            return parse_time(text)
        if len(minute_epoch) > 100_000:
            minute_epoch.clear()
        minute_epoch[text[:16]] = minute
        return out

    return when


def _parse_lines(lines: Iterable[str], delimiter: str, header: list[str] | None,
                 stats: ParseStats | None) -> Iterator[AllocationTuple]:
    """Allocation tuples, each yielded once the step lines after it (``123.batch``, ``123.0``: their TotalCPU)
    are read. One flat loop with the common shapes first: this is a sync's hot path (a year is 10M lines)."""
    st = stats if stats is not None else ParseStats()
    kinds = _gres_kinds()
    it = iter(lines)
    names = header
    if names is None:
        first = next(it, None)
        if first is None:
            return
        names = first.rstrip("\n").split(delimiter)
    c = _Columns(names)
    width, c_job, c_state, c_end, c_start, c_submit = c.width, c.job, c.state, c.end, c.start, c.submit
    c_eraw, c_elapsed, c_cpus, c_tres, c_nodes = c.eraw, c.elapsed, c.cpus, c.tres, c.nodes
    c_cpuraw, c_cputime, c_total, c_part, c_user, c_account = c.cpuraw, c.cputime, c.total, c.part, c.user, c.account
    when = _clock_reader()
    # One string object per distinct user, account, day...: the rows in flight take far less memory.
    intern = sys.intern
    tres_seen: dict[str, tuple[int | None, int, int, str | None]] = {}
    track, open_jobs, booked_jobs, unknown = st.track, st.open_jobs, st.booked_jobs, st.unknown_states
    attempt_job, attempt_n = "", -1
    pending: AllocationTuple | None = None  # the allocation whose steps may follow
    steps_cpu = 0.0
    n_lines = n_steps = n_open = n_bad = n_records = 0
    try:
        for line in it:
            n_lines += 1
            row = line.rstrip("\n").split(delimiter)
            if len(row) != width:
                if len(row) == width + 1 and row[-1] == "":  # --parsable ends each line with the delimiter
                    row.pop()
                else:
                    n_bad += 1
                    log.warning("sacct: skipped a line with %d fields (the header has %d): %.80s", len(row), width,
                                line)
                    continue
            row.append("")
            job = row[c_job]
            if not job or "." in job:
                n_steps += 1
                cpu = _clock(row[c_total]) or 0.0
                if pending is not None and job.partition(".")[0] == pending[0]:
                    steps_cpu += cpu  # a step of the allocation just read; never an allocation of its own
                continue
            state = row[c_state]
            if state not in KNOWN_FINAL:
                state = state_word(state)  # "CANCELLED by 123", "CANCELLED+"
            # a hetjob's components (123+0, 123+1) are job 123's
            base = job if job.isdigit() else job.split("_")[0].split("+")[0]
            end_text = row[c_end]
            end = when(end_text)
            if end is None or state in OPEN_STATES:
                n_open += 1
                if track is None or base in track:
                    open_jobs.add(base)
                if pending is not None:
                    yield _with_steps(pending, steps_cpu)
                pending = None
                continue
            if state not in KNOWN_FINAL and state not in unknown:
                unknown.add(state)
                log.warning("sacct: state %r is new to suanli; the record is kept as it is", state)
            start_text, submit_text = row[c_start], row[c_submit]
            start = when(start_text)
            submit = start if submit_text == start_text else when(submit_text)
            text = row[c_eraw]
            if text:
                try:
                    elapsed = float(int(text))
                except ValueError:
                    elapsed = 0.0
            else:
                elapsed = parse_clock(row[c_elapsed]) or 0.0
            tres_text = row[c_tres]
            info = tres_seen.get(tres_text)
            if info is None:
                if len(tres_seen) > 10_000:
                    tres_seen.clear()
                info = tres_seen[tres_text] = _tres_info(tres_text, kinds)
            try:
                cpus = int(row[c_cpus])
            except ValueError:
                cpus = 0
            if not cpus and info[0] is not None:
                cpus = info[0]
            try:
                nodes = int(row[c_nodes]) or info[1]
            except ValueError:
                nodes = 1
            text = row[c_cpuraw]
            if text:
                try:
                    cpu_s = float(int(text))
                except ValueError:
                    cpu_s = 0.0
            else:
                cpu_s = parse_clock(row[c_cputime]) or cpus * elapsed
            acc, kind = info[2], info[3]
            # sacct -D prints a job's attempts one after another: count them without remembering every job.
            if attempt_job == job:
                attempt_n += 1
            else:
                attempt_job, attempt_n = job, 0
            n_records += 1
            if track is None or base in track:
                booked_jobs.add(base)
            part, user, account = row[c_part], row[c_user], row[c_account]
            if pending is not None:
                yield _with_steps(pending, steps_cpu)
            steps_cpu = 0.0
            pending = (job, int(job.partition("_")[2]) if "_" in job and job.partition("_")[2].isdigit() else None,
                   attempt_n, intern(user) if user else None, intern(account) if account else None,
                   intern(part) if part else None, kind, nodes, cpus, acc, submit, start, end, elapsed,
                   intern(state), cpu_s, acc * elapsed, _clock(row[c_total]), intern(end_text[:10]))
        if pending is not None:
            yield _with_steps(pending, steps_cpu)
    finally:
        st.lines += n_lines
        st.steps += n_steps
        st.open += n_open
        st.bad += n_bad
        st.records += n_records
