"""The Slurm side of the accounting service: sacct's allocations as usage records, `accounting sync` of a
Slurm cluster, the physical cluster behind a config, and `quota apply` (sacctmgr). Apart from ``accounts.py``
because it is the one place where the ledger meets the Slurm backend's commands and its sacct reader."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from suanli.accounting.bulk import Booking, BookingSession, Rate
from suanli.accounting.records import UsageRecord, charge_of
from suanli.accounting.tx import copy_line
from suanli.compute.config import ClusterConfig
from suanli.compute.slurm.sacct_usage import FIELDS, AllocationTuple, ParseStats, allocation_tuples
from suanli.errors import BackendError, UsageError

if TYPE_CHECKING:
    from suanli.accounting.ledger import Ledger
    from suanli.api import Client
    from suanli.compute.slurm.backend import SlurmBackend

__all__ = ["FIELDS", "SYNC_WINDOW_S", "Booking", "ParseStats", "Rates", "SlurmAccounting", "SyncResult", "book_lines",
           "no_rates", "parse_usage", "usage_copy_lines", "usage_rows"]

#: sacct is read in windows of this many seconds, so a centre's years of history stream in pieces.
SYNC_WINDOW_S = 86400.0

#: (cpu_hour rate, accelerator_hour rate, adapter name or None) for a partition name.
Rates = Callable[[str | None], tuple[float, float, str | None]]


def no_rates(partition: str | None) -> tuple[float, float, str | None]:
    return 0.0, 0.0, None


def parse_usage(lines: Iterable[str], cluster: str, rates: Rates = no_rates, *, delimiter: str = "|",
                header: list[str] | None = None, stats: ParseStats | None = None,
                key: str | None = None) -> Iterator[UsageRecord]:
    """Usage records from sacct lines (the first line is the header unless ``header`` is given), one per ended
    allocation, read by the Slurm backend's sacct reader (``parse_allocations``) and charged at ``rates``.

    ``cluster`` is the config name the records show; ``key`` (default: ``cluster``) starts their record ids:
    the physical Slurm cluster, so two configs over one slurm.conf book a job once."""
    for row in usage_rows(lines, cluster, rates, delimiter=delimiter, header=header, stats=stats, key=key):
        yield UsageRecord(*row[:26])  # type: ignore[arg-type]  # the day is its booked_day


def usage_rows(lines: Iterable[str], cluster: str, rates: Rates = no_rates, *, delimiter: str = "|",
               header: list[str] | None = None, stats: ParseStats | None = None,
               key: str | None = None) -> Iterator[tuple[object, ...]]:
    """``parse_usage`` as the ledger's rows (``UsageRecord.row()``, COLUMNS order): what a sync stores, made
    straight from the parser's tuples (a record object per allocation costs as much as parsing its line)."""
    key = key or cluster
    for alloc, rate, month in _priced(allocation_tuples(lines, delimiter=delimiter, header=header, stats=stats),
                                      rates):
        yield _row(alloc, key, cluster, rate, month)


def _priced(allocs: Iterator[AllocationTuple], rates: Rates) -> Iterator[tuple[AllocationTuple, Rate, str]]:
    """Each allocation with its partition's rate and its month, each looked up once per partition and day."""
    charged: dict[str | None, Rate] = {}
    months: dict[str, str] = {}
    for alloc in allocs:
        part, day = alloc[5], alloc[18]
        rate = charged.get(part)
        if rate is None:
            rate = charged[part] = rates(part)
        month = months.get(day)
        if month is None:
            month = months[day] = day[:7]
        yield alloc, rate, month


def _row(alloc: AllocationTuple, key: str, cluster: str, rate: Rate, month: str) -> tuple[object, ...]:
    """An allocation's ledger row (COLUMNS order) at ``rate``."""
    (job, task, attempt, user, account, part, kind, nodes, cpus, acc, submit, start, end, elapsed, state,
     cpu_s, acc_s, total_cpu, day) = alloc
    # A heterogeneous job's components are booked apart (record ids 123+0, 123+1: each its own
    # allocation and TRES) under the job's one native id, so they add up to the job.
    return (f"{key}|{job}|{int(submit or 0)}|{int(start or 0)}", cluster, "slurm",
            job.split("+")[0] if "+" in job else job, None, task, attempt, user, account, part, rate[2], kind,
            nodes, cpus, acc, submit, start, end, elapsed, state, cpu_s, acc_s,
            cpu_s / 3600.0 * rate[0] + acc_s / 3600.0 * rate[1], total_cpu, "sacct", day, month)


def usage_copy_lines(lines: Iterable[str], booking: Booking, rates: Mapping[str, Rates],
                     stats: ParseStats | None = None) -> Iterator[tuple[str, str]]:
    """What ``usage_rows`` and ``_submitters`` book, as the ledger's COPY text lines (``Ledger.record_lines``,
    PostgreSQL) with their record ids: one f-string per record. Making a 27-value row and then turning each
    value into text cost half again as much, in the thread PostgreSQL's ingest waits on. The text is the row's
    (``str`` of each value, ``\\N`` for None); a record with a backslash or a character that is not printable
    (a tab, a line break) in its text values, or of a job this registry submitted, takes the row's escaped
    line instead."""
    cluster, key, natives = booking.cluster, booking.key, booking.natives
    own = rates.get(cluster, no_rates)
    plain = _plain(cluster + key)
    n = "\\N"
    for alloc, rate, month in _priced(allocation_tuples(lines, stats=stats), own):
        (job, task, attempt, user, account, part, kind, nodes, cpus, acc, submit, start, end, elapsed, state,
         cpu_s, acc_s, total_cpu, day) = alloc
        native = job.split("+")[0] if "+" in job else job
        rid = f"{key}|{job}|{int(submit or 0)}|{int(start or 0)}"
        adapter = rate[2]
        if not (plain and _plain(f"{job}{user}{account}{part}{kind}{adapter}{state}")) or (
                natives and native.split("_")[0] in natives):
            for row in _submitters(iter([_row(alloc, key, cluster, rate, month)]), natives, cluster, rates):
                yield rid, copy_line(row)
            continue
        yield rid, (f"{rid}\t{cluster}\tslurm\t{native}\t{n}\t{n if task is None else task}\t{attempt}\t"
                    f"{n if user is None else user}\t{n if account is None else account}\t"
                    f"{n if part is None else part}\t{n if adapter is None else adapter}\t"
                    f"{n if kind is None else kind}\t{nodes}\t{cpus}\t{acc}\t{n if submit is None else submit}\t"
                    f"{n if start is None else start}\t"
                    f"{n if end is None else end}\t{elapsed}\t{state}\t{cpu_s}\t{acc_s}\t"
                    f"{cpu_s / 3600.0 * rate[0] + acc_s / 3600.0 * rate[1]}\t{n if total_cpu is None else total_cpu}"
                    f"\tsacct\t{day}\t{month}")


def _plain(text: str) -> bool:
    """Whether values joined into ``text`` need no escaping in COPY's text format."""
    return text.isprintable() and "\\" not in text


@dataclasses.dataclass
class SyncResult:
    cluster: str
    backend: str
    since: float
    until: float
    records: int
    skipped_lines: int = 0
    open_jobs: int = 0
    unknown_states: tuple[str, ...] = ()
    released: int = 0
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class SlurmAccounting:
    """What ``Accounts`` does with Slurm clusters (a mixin: it uses the service's client, ledger and user)."""

    client: Client
    _physical: dict[str, str]

    @property
    def ledger(self) -> Ledger:
        raise NotImplementedError

    def user(self, fallback: str) -> str:
        raise NotImplementedError

    def _sync_slurm(self, cfg: ClusterConfig, since: float | None, all_users: bool,
                    until: float | None) -> SyncResult:
        """Book one physical Slurm cluster's jobs from sacct. Every config over the same cluster books the same
        records (keyed on the physical cluster, not the config) and moves the same sync mark, so a job is
        booked once whichever config submitted or synced it."""
        scope = "all" if all_users else self.user(_login())
        until = time.time() if until is None else until
        key = self.physical(cfg)
        siblings = self.siblings(cfg)
        names = [c.name for c in siblings]
        if self.ledger.db.may_rewrite:
            self.ledger.adopt_keys(names, key)  # records booked before ids named the physical cluster
        if since is None:
            since = self.ledger.mark(key, scope) or self.ledger.mark(cfg.name, scope)
        if since is None:  # first sync: the start of last month
            t = datetime.fromtimestamp(until)
            since = datetime(t.year - (t.month == 1), (t.month - 2) % 12 + 1, 1).timestamp()
        natives: dict[str, tuple[str, str]] = {}  # native id -> (suanli id, config that submitted it)
        for r in self.client.store.query():
            if r.cluster in names:
                for n in (r.native_id or "").split(","):
                    if n:
                        natives[n] = (r.id, r.cluster)
        reserved = set().union(*(self.ledger.reserved_natives(n) for n in names))
        stats = ParseStats(track=set(natives) | reserved)
        # A job no suanli of this registry submitted shows under one config of the cluster, always the same.
        owner = next((c for c in siblings if c.name == key.removeprefix("slurm:")), siblings[0])
        booking = Booking(key, owner.name, {c.name: _rate_table(c) for c in siblings}, natives)
        total = 0
        lo = since
        session = self.ledger.booking(booking)
        with session or contextlib.nullcontext():
            while lo < until:
                hi = min(lo + SYNC_WINDOW_S, until)
                argv = ["-S", _sacct_time(lo), "-E", _sacct_time(hi)] + (["--allusers"] if all_users else [])
                total += book_lines(self.ledger, session, self._sacct(cfg, argv), booking, stats)
                lo = hi
        done = stats.booked_jobs - stats.open_jobs
        release_jobs = sorted({natives[n][0] for n in done if n in natives}
                              - {natives[n][0] for n in stats.open_jobs if n in natives})
        self.ledger.release(release_jobs, (names, sorted(done)))
        # The mark moves only after every window is stored: a sync killed halfway redoes the same windows,
        # and the upsert on record_id makes that rewrite the same rows.
        self.ledger.set_mark(key, scope, until)
        return SyncResult(cfg.name, "slurm", since, until, total, stats.bad, len(stats.open_jobs),
                          tuple(sorted(stats.unknown_states)), len(release_jobs))

    # ------------------------------------------------------------ which Slurm cluster a config names
    def physical(self, cfg: ClusterConfig) -> str:
        """``slurm:CLUSTERNAME``, the key of the Slurm cluster behind a config: its slurm.conf's ClusterName
        (read from the file, else ``scontrol show config``), else the conf file's real path. Sacct's job ids
        are unique per Slurm cluster, so usage records and sync marks are keyed on this, not the config."""
        conf = str(cfg.slurm.get("conf") or os.environ.get("SLURM_CONF") or "/etc/slurm/slurm.conf")
        if conf not in self._physical:
            name = _conf_cluster_name(Path(conf))
            if name is None:
                try:
                    name = self._slurm(cfg).config().get("ClusterName") or None
                except BackendError:
                    name = None
            self._physical[conf] = "slurm:" + (name.lower() if name else "conf:" + os.path.realpath(conf))
        return self._physical[conf]

    def siblings(self, cfg: ClusterConfig) -> list[ClusterConfig]:
        """The Slurm configs over the same physical cluster as ``cfg`` (itself included), by name."""
        key = self.physical(cfg)
        out = [c for c in self.client.configs.clusters.values() if c.backend == "slurm" and self.physical(c) == key]
        return sorted(out or [cfg], key=lambda c: c.name)

    def _slurm(self, cfg: ClusterConfig) -> SlurmBackend:
        """The cluster's Slurm backend: it owns running Slurm's commands (SLURM_CONF, retries, streaming)."""
        from suanli.compute.slurm.backend import SlurmBackend

        backend = self.client.backend(cfg.name, "slurm")
        assert isinstance(backend, SlurmBackend)
        return backend

    def _sacct(self, cfg: ClusterConfig, extra: list[str]) -> Iterator[str]:
        """Stream sacct's usage lines (header first). Without -X: the step lines carry the measured CPU time
        (Slurm 22.05 prints TotalCPU 00:00:00 on a -X allocation line), and the parser folds them in."""
        argv = ["sacct", "--parsable2", "-D", "-o", ",".join(FIELDS), *extra]
        return self._slurm(cfg).stream(argv, f"cluster {cfg.name}: sacct")

    # ------------------------------------------------------------ Slurm association limits
    def apply_plan(self, cluster: str) -> tuple[list[list[str]], list[str]]:
        """The sacctmgr commands that mirror the quotas into Slurm's GrpTRESMins, and warnings."""
        from suanli.adapters import adapter_names, get_adapter

        cfg = self.client.configs.cluster(cluster)
        if cfg.backend != "slurm":
            raise UsageError(f"quota apply: cluster {cluster!r} runs {cfg.backend}, not slurm; only Slurm "
                             "enforces quotas itself (elsewhere suanli checks them at submission)")
        conf = self._slurm(cfg).config()
        slurm_name = conf.get("ClusterName", cfg.name)
        gres = {a.accelerator_kind: a.gres_name for a in map(get_adapter, adapter_names())
                if a.accelerator_kind and a.gres_name}
        warnings: list[str] = []
        cmds: list[list[str]] = []
        reset = conf.get("PriorityUsageResetPeriod", "NONE").upper()
        decay = conf.get("PriorityDecayHalfLife", "")
        for q in self.ledger.quotas():
            # Slurm holds one limit per association: the quota in force now (overlapping ones are refused).
            if q.cluster not in (None, cluster) or q.window() is None:
                continue
            tres = []
            if q.cpu_hours is not None:
                tres.append(f"cpu={round(q.cpu_hours * 60)}")
            for kind, hours in sorted(q.accelerator_hours.items()):
                tres.append(f"gres/{gres.get(kind, kind)}={round(hours * 60)}")
            if q.charge is not None:
                warnings.append(f"quota {q.id} ({q.scope()}): its charge limit is enforced by suanli only")
            if not tres:
                continue
            want = "MONTHLY" if q.period == "month" else "NONE"
            if reset != want:
                warnings.append(f"quota {q.id} ({q.scope()}) is per {q.period}, but Slurm resets usage "
                                f"{reset} (PriorityUsageResetPeriod); set it to {want} so both agree")
            where = ["where", f"name={q.user or q.account}", f"cluster={slurm_name}"]
            if q.user:
                where.append(f"account={q.account}")
            cmds.append(["sacctmgr", "-i", "modify", "user" if q.user else "account", *where, "set",
                         "GrpTRESMins=" + ",".join(tres)])
        if decay not in ("", "0", "00:00:00", "0-00:00:00"):
            warnings.append(f"PriorityDecayHalfLife is {decay}: Slurm decays recorded usage, so its limits drift "
                            "from the ledger; set it to 0")
        return cmds, warnings

    def apply(self, cluster: str) -> tuple[list[list[str]], list[str]]:
        cmds, warnings = self.apply_plan(cluster)
        slurm = self._slurm(self.client.configs.cluster(cluster))
        hint = "(does the association exist? sacctmgr show assoc)"
        for argv in cmds:
            what = f"quota apply: {' '.join(argv[3:5])}"
            try:
                out = slurm.run(argv, what).stdout
            except BackendError as exc:
                raise BackendError(f"{exc} {hint}") from None
            if "Nothing modified" in out:
                raise BackendError(f"{what}: sacctmgr modified nothing {hint}")
        return cmds, warnings


def book_lines(ledger: Ledger, session: BookingSession | None, lines: Iterable[str], booking: Booking,
               stats: ParseStats) -> int:
    """Book one sacct window's lines: on SQLite through the sync's bulk session (the allocations as the sacct
    reader yields them; SQL makes the records), on PostgreSQL as COPY text lines made here, else (SQLite without
    a session: the reference the tests compare with) as ledger rows. What a sync and the
    ingest bench run."""
    if session is not None:
        return session.store(allocation_tuples(lines, stats=stats))
    rates = {name: _lookup(table) for name, table in booking.rates.items()}
    if ledger.db.dialect == "postgresql":
        return ledger.record_lines(usage_copy_lines(lines, booking, rates, stats))
    parsed = usage_rows(lines, booking.cluster, rates.get(booking.cluster, no_rates), stats=stats, key=booking.key)
    return ledger.record_rows(_submitters(parsed, booking.natives, booking.cluster, rates))


def _submitters(rows: Iterator[tuple[object, ...]], natives: Mapping[str, tuple[str, str]], owner: str,
                rates: Mapping[str, Rates]) -> Iterator[tuple[object, ...]]:
    """Records (ledger rows) of jobs this registry submitted carry their suanli id and the config (and its
    rates) that submitted them."""
    if not natives:
        yield from rows
        return
    for row in rows:
        known = natives.get(str(row[3] or "").split("_")[0])
        if known is None:
            yield row
            continue
        job_id, name = known
        if name == owner:
            yield (*row[:4], job_id, *row[5:])
            continue
        cpu_rate, acc_rate, adapter = rates[name](row[9] if isinstance(row[9], str) else None)
        charge = charge_of(float(row[20]), float(row[21]), cpu_rate, acc_rate)  # type: ignore[arg-type]
        yield (row[0], name, *row[2:4], job_id, *row[5:10], adapter, *row[11:22], charge, *row[23:])


# ---------------------------------------------------------------- helpers
def _login() -> str:
    from suanli.compute.base import current_user

    return current_user()


_CLUSTER_NAME = re.compile(r"^\s*ClusterName\s*=\s*([^\s#]+)", re.IGNORECASE | re.MULTILINE)


def _conf_cluster_name(conf: Path) -> str | None:
    """ClusterName from a slurm.conf (None when unreadable or absent: configless sites ask scontrol)."""
    try:
        m = _CLUSTER_NAME.search(conf.read_text(errors="replace"))
    except OSError:
        return None
    return m.group(1) if m else None


def _sacct_time(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(t))


def _rate_table(cfg: ClusterConfig) -> dict[str, Rate]:
    """Partition name -> (cpu_hour, accelerator_hour, adapter) of a config (a partition it does not name is
    charged nothing)."""
    return {p.name: (p.charge.cpu_hour, p.charge.accelerator_hour, p.adapter) for p in cfg.partitions}


def _lookup(table: Mapping[str, Rate]) -> Rates:
    def rates(partition: str | None) -> Rate:
        return table.get(partition or "", (0.0, 0.0, None))

    return rates


def _rates(cfg: ClusterConfig) -> Rates:
    return _lookup(_rate_table(cfg))
