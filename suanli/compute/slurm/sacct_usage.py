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
from collections.abc import Iterable, Iterator
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
    current: Allocation | None = None
    steps_cpu = 0.0
    for item in _parse_lines(lines, delimiter, header, stats):
        if item is None or isinstance(item, Allocation):  # an allocation line (None: one still open)
            if current is not None:
                yield _with_steps(current, steps_cpu)
            current, steps_cpu = item, 0.0
        elif current is not None and item[0] == current.job:
            steps_cpu += item[1]  # a step of the allocation just read; never an allocation of its own
    if current is not None:
        yield _with_steps(current, steps_cpu)


def _with_steps(alloc: Allocation, steps_cpu: float) -> Allocation:
    """sacct sums the steps into the allocation's TotalCPU itself where it can; where it printed none (Slurm
    22.05 under -X, or an allocation line without it) the steps' sum stands in. Never both: no double count."""
    if not alloc.total_cpu_s and steps_cpu:
        alloc.total_cpu_s = steps_cpu
    return alloc

def _parse_lines(lines: Iterable[str], delimiter: str, header: list[str] | None,
                 stats: ParseStats | None) -> Iterator[Allocation | tuple[str, float] | None]:
    """Allocation records (None for one still open), and ``(allocation id, TotalCPU seconds)`` per step line."""
    st = stats if stats is not None else ParseStats()
    kinds = _gres_kinds()
    it = iter(lines)
    names = header
    if names is None:
        first = next(it, None)
        if first is None:
            return
        names = first.rstrip("\n").split(delimiter)
    idx = {n.strip().lower(): i for i, n in enumerate(names)}
    width = len(names)
    attempt_of: tuple[str, int] = ("", -1)
    seen: dict[str, str] = {}

    def same(text: str) -> str:
        """One string object per distinct user, account, day...: the rows in flight take far less memory."""
        if len(seen) > 100_000:
            seen.clear()
        return seen.setdefault(text, text)

    def at(*keys: str) -> int:
        """The column of the first key present; ``width`` (an empty cell appended to each row) if none is."""
        return next((idx[k.lower()] for k in keys if k.lower() in idx), width)

    c_job, c_state, c_end, c_start, c_submit = at("JobID"), at("State"), at("End"), at("Start"), at("Submit")
    c_eraw, c_elapsed, c_cpus, c_tres = at("ElapsedRaw"), at("Elapsed"), at("AllocCPUS", "NCPUS"), at("AllocTRES")
    c_nodes, c_cpuraw, c_cputime, c_total = at("AllocNodes", "NNodes"), at("CPUTimeRAW"), at("CPUTime"), at("TotalCPU")
    c_part, c_user, c_account = at("Partition"), at("User"), at("Account")
    hour_epoch: dict[str, float] = {}

    def when(text: str) -> float | None:
        """Local time to epoch, with mktime's answer cached per hour (zones change offsets on whole hours)."""
        if len(text) < 19 or text[0] not in "0123456789":
            return None
        base = hour_epoch.get(text[:13])
        if base is None:
            t0 = parse_time(text[:13] + ":00:00")
            if t0 is None:
                return None
            base = hour_epoch[text[:13]] = t0
        try:
            return base + int(text[14:16]) * 60 + int(text[17:19])
        except ValueError:
            return parse_time(text)

    for line in it:
        st.lines += 1
        row = line.rstrip("\n").split(delimiter)
        if len(row) == width + 1 and row[-1] == "":  # --parsable ends each line with the delimiter
            row.pop()
        if len(row) != width:
            st.bad += 1
            log.warning("sacct: skipped a line with %d fields (the header has %d): %.80s", len(row), width, line)
            continue
        row.append("")
        job = row[c_job]
        if not job or "." in job:
            st.steps += 1
            yield job.partition(".")[0], parse_clock(row[c_total]) or 0.0
            continue
        state = state_word(row[c_state])  # "CANCELLED by 123", "CANCELLED+"
        base = job.split("_")[0].split("+")[0]  # a hetjob's components (123+0, 123+1) are job 123's
        end_text = row[c_end]
        end = when(end_text)
        if state in OPEN_STATES or end is None:
            st.open += 1
            st.note(st.open_jobs, base)
            yield None
            continue
        if state not in KNOWN_FINAL and state not in st.unknown_states:
            st.unknown_states.add(state)
            log.warning("sacct: state %r is new to suanli; the record is kept as it is", state)
        start = when(row[c_start])
        submit = when(row[c_submit])
        elapsed_text = row[c_eraw]
        elapsed = float(_int(elapsed_text)) if elapsed_text else (parse_clock(row[c_elapsed]) or 0.0)
        cpus = _int(row[c_cpus])
        tres_text = row[c_tres]
        tres = parse_tres(tres_text)
        if not cpus and "cpu" in tres:
            cpus = _int(tres["cpu"])
        nodes = _int(row[c_nodes], 1) or _int(tres.get("node", "1"), 1)
        cpu_text = row[c_cpuraw]
        cpu_s = float(_int(cpu_text)) if cpu_text else (parse_clock(row[c_cputime]) or cpus * elapsed)
        acc = 0
        kind: str | None = None
        if "gres/" in tres_text:
            for gres, k in kinds.items():
                n = tres.get("gres/" + gres)
                if n is None:  # only typed entries (gres/gpu:a100=2): add them up
                    typed = [_int(v) for key, v in tres.items() if key.startswith(f"gres/{gres}:")]
                    n = str(sum(typed)) if typed else None
                if n is not None and _int(n):
                    acc, kind = _int(n), k
                    break
        acc_s = acc * elapsed
        part = same(row[c_part]) or None
        total_cpu = parse_clock(row[c_total])
        # sacct -D prints a job's attempts one after another: count them without remembering every job.
        n_attempt = attempt_of[1] + 1 if attempt_of[0] == job else 0
        attempt_of = (job, n_attempt)
        task_text = job.partition("_")[2]
        st.records += 1
        st.note(st.booked_jobs, base)
        yield Allocation(
            job=job, array_task=int(task_text) if task_text.isdigit() else None, attempt=n_attempt,
            user=same(row[c_user]) or None, account=same(row[c_account]) or None, partition=part,
            accelerator_kind=kind, nodes=nodes, cpus=cpus, accelerators=acc, submit_time=submit, start_time=start,
            end_time=end, elapsed_s=elapsed, state=same(state), cpu_seconds=cpu_s, accelerator_seconds=acc_s,
            total_cpu_s=total_cpu, day=same(end_text[:10]),
        )
