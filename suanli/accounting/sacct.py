"""Usage records from ``sacct --parsable2`` text, read as a stream.

Columns are found by the header's names, so captured outputs with other field sets parse too; a line that
does not fit, or a state this parser has not seen, is counted and logged but never stops a sync. Only
allocations whose attempt has ended are records: a running job is booked when it ends (the next sync sees
it again, because sacct -S/-E lists every job that was active inside the window).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime

from suanli.accounting.records import UsageRecord, charge_of
from suanli.adapters import accelerator_adapters

log = logging.getLogger("suanli")

#: What `suanli accounting sync` asks sacct for.
FIELDS = ("JobID", "JobIDRaw", "User", "Account", "Partition", "State", "AllocCPUS", "AllocNodes", "AllocTRES",
          "ElapsedRaw", "CPUTimeRAW", "TotalCPU", "Submit", "Start", "End")
#: Allocations in these states are still going: not booked yet.
OPEN_STATES = frozenset({"PENDING", "RUNNING", "SUSPENDED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING",
                         "REQUEUING", "SIGNALING", "STAGE_OUT", "CONFIGURING", "COMPLETING"})
KNOWN_FINAL = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "OUT_OF_MEMORY",
                         "DEADLINE", "BOOT_FAIL", "REQUEUED", "REVOKED", "SPECIAL_EXIT"})

#: (cpu_hour rate, accelerator_hour rate, adapter name or None) for a partition name.
Rates = Callable[[str | None], tuple[float, float, str | None]]


def no_rates(partition: str | None) -> tuple[float, float, str | None]:
    return 0.0, 0.0, None


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


def _gres_kinds() -> dict[str, str]:
    """``gres/<name>`` in AllocTRES -> accelerator kind, from the registered adapters (``npu`` -> ascend,
    ``gpu`` -> nvidia, and whatever other adapter is registered); the first adapter keeps a name."""
    out: dict[str, str] = {}
    for a in accelerator_adapters():
        if a.gres_name and a.accelerator_kind:
            out.setdefault(a.gres_name, a.accelerator_kind)
    return out


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


def parse_time(text: str) -> float | None:
    """sacct prints local time without a zone (as its -S/-E read it); Unknown/None mean not yet."""
    if not text or text[0] not in "0123456789":
        return None
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


def parse_tres(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in text.split(","):
        k, sep, v = item.partition("=")
        if sep:
            out[k] = v
    return out


def _int(text: str, default: int = 0) -> int:
    try:
        return int(text)
    except ValueError:
        return default


def parse_usage(lines: Iterable[str], cluster: str, rates: Rates = no_rates, *, delimiter: str = "|",
                header: list[str] | None = None, stats: ParseStats | None = None,
                key: str | None = None) -> Iterator[UsageRecord]:
    """Records from sacct lines (the first line is the header unless ``header`` is given), one per allocation
    line. The allocation line carries AllocTRES, CPUTimeRAW and the elapsed time; the measured TotalCPU is on the
    step lines (``123.batch``, ``123.extern``, ``123.0``) that follow it when sacct runs without ``-X`` (Slurm
    22.05 prints 00:00:00 on a -X allocation line), so a record is yielded once its steps are read.

    ``cluster`` is the config name the records show; ``key`` (default: ``cluster``) starts their record ids:
    the physical Slurm cluster, so two configs over one slurm.conf book a job once."""
    current: UsageRecord | None = None
    steps_cpu = 0.0
    for item in _parse_lines(lines, cluster, key or cluster, rates, delimiter, header, stats):
        if item is None or isinstance(item, UsageRecord):  # an allocation line (None: one still open)
            if current is not None:
                yield _with_steps(current, steps_cpu)
            current, steps_cpu = item, 0.0
        elif current is not None and item[0] == current.native_id:
            steps_cpu += item[1]  # a step of the allocation just read; never a record of its own
    if current is not None:
        yield _with_steps(current, steps_cpu)


def _with_steps(rec: UsageRecord, steps_cpu: float) -> UsageRecord:
    """sacct sums the steps into the allocation's TotalCPU itself where it can; where it printed none (Slurm
    22.05 under -X, or an allocation line without it) the steps' sum stands in. Never both: no double count."""
    if not rec.total_cpu_s and steps_cpu:
        rec.total_cpu_s = steps_cpu
    return rec


def _parse_lines(lines: Iterable[str], cluster: str, key: str, rates: Rates, delimiter: str, header: list[str] | None,
                 stats: ParseStats | None) -> Iterator[UsageRecord | tuple[str, float] | None]:
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
        state = row[c_state]
        if " " in state or state.endswith("+"):
            state = state.split(" ")[0].rstrip("+")  # "CANCELLED by 123", "CANCELLED+"
        base = job.split("_")[0]
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
        cpu_rate, acc_rate, adapter = rates(part)
        total_cpu = parse_clock(row[c_total])
        # sacct -D prints a job's attempts one after another: count them without remembering every job.
        n_attempt = attempt_of[1] + 1 if attempt_of[0] == job else 0
        attempt_of = (job, n_attempt)
        task_text = job.partition("_")[2]
        st.records += 1
        st.note(st.booked_jobs, base)
        yield UsageRecord(
            record_id=f"{key}|{job}|{int(submit or 0)}|{int(start or 0)}",
            cluster=cluster, backend="slurm", native_id=job, job_id=None,
            array_task=int(task_text) if task_text.isdigit() else None, attempt=n_attempt,
            user=same(row[c_user]) or None, account=same(row[c_account]) or None, partition=part, adapter=adapter,
            accelerator_kind=kind, nodes=nodes, cpus=cpus, accelerators=acc, submit_time=submit, start_time=start,
            end_time=end, elapsed_s=elapsed, state=same(state), cpu_seconds=cpu_s, accelerator_seconds=acc_s,
            charge=charge_of(cpu_s, acc_s, cpu_rate, acc_rate), total_cpu_s=total_cpu, source="sacct",
            booked_day=same(end_text[:10]),
        )
