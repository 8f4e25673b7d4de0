"""What the portal's pages show, read through the same ``api.Client`` (registry, backends) and ledger as the CLI.

Handlers run on Starlette's thread pool, so each thread keeps its own Client (its own registry and ledger
connections). Backends are asked for fresh states at most once per ``refresh_s`` for all requests together:
a page load is one status poll per cluster at most, and fifty browsers polling cost the scheduler nothing more.
"""

from __future__ import annotations

import ipaddress
import re
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from suanli.portal.tokens import Identity, TokenStore

if TYPE_CHECKING:
    from suanli.accounting.ledger import Check, Ledger
    from suanli.api import Client
    from suanli.compute.store import JobRow
    from suanli.jobs.record import JobInfo

MEMBERSHIP_S = 30.0
ROLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,62}")
IpNet = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass
class PortalConfig:
    """How `suanli serve` runs: where, who may set the user header, who is admin in proxy mode."""

    home: Path
    config: str | None = None
    proxy_header: str | None = None  # e.g. X-Remote-User, set by the centre's authenticating proxy
    trusted_proxies: tuple[IpNet, ...] = ()
    proxy_admins: frozenset[str] = frozenset()
    refresh_s: float = 5.0
    jobs_window_s: float = 7 * 86400
    max_jobs: int = 500
    secure_cookies: bool = False
    tokens: TokenStore = field(init=False)

    def __post_init__(self) -> None:
        self.tokens = TokenStore(self.home / "portal.db")

    def trusted(self, address: str | None) -> bool:
        if not address or not self.trusted_proxies:
            return False
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in net for net in self.trusted_proxies)


class PortalData:
    """The portal's reads and the few writes it allows (cancel, quotas), each checked against the identity."""

    def __init__(self, cfg: PortalConfig) -> None:
        self.cfg = cfg
        self._local = threading.local()
        self._poll_lock = threading.Lock()
        self._last_poll = 0.0
        self.polls = 0  # backend status rounds so far (tests and the bench read it)
        self._members: dict[str, tuple[float, frozenset[str]]] = {}

    # ------------------------------------------------------------ per-thread client
    def client(self) -> Client:
        c: Client | None = getattr(self._local, "client", None)
        if c is None:
            from suanli.api import Client

            c = Client(self.cfg.config)
            self._local.client = c
        return c

    @property
    def ledger(self) -> Ledger:
        return self.client().accounts.ledger

    def as_user(self, who: Identity) -> None:
        """With a PostgreSQL ledger, run this thread's ledger session as the user's own database role (``SET
        ROLE``), so row-level security and the grants decide what it may read and change, as for the CLI; the
        portal's connection role must be a member of each user's role (GRANT alice TO portal_role)."""
        client = self.client()
        if client.configs.settings.ledger is None:
            return  # SQLite: one file, no roles; the handlers decide
        db = client.accounts.ledger.db
        if db.dialect != "postgresql" or getattr(self._local, "role", None) == who.user:
            return
        from suanli.accounting.db import LedgerError, LedgerPermissionError

        if not ROLE_NAME.fullmatch(who.user):
            raise LedgerPermissionError(f"ledger: {who.user!r} is not a database role name")
        self._local.role = None
        try:
            with db.transaction() as tx:
                tx.execute(f'SET ROLE "{who.user}"')
        except LedgerError as exc:
            raise LedgerPermissionError(f"ledger: the portal may not act as database role {who.user} ({exc}); "
                                        f"an admin grants it: GRANT {who.user} TO <the portal's role>") from None
        db._user = None  # the role changed: what Database caches about it must be read again
        db._may_rewrite = None
        if db.user != who.user:  # read now: the ledger's messages name the role from it
            raise LedgerPermissionError(f"ledger: the session runs as {db.user}, not as {who.user}")
        self._local.role = who.user

    def ledger_ready(self) -> bool:
        """Whether there is a ledger to read (a SQLite one appears with the first record or quota)."""
        c = self.client()
        return c.configs.settings.ledger is not None or c.accounts.ledger.db.exists

    # ------------------------------------------------------------ jobs
    def visible_rows(self, who: Identity, everything: bool = False) -> list[JobRow]:
        since = None if everything else time.time() - self.cfg.jobs_window_s
        rows = self.client().store.query(open_or_since=since) if since else self.client().store.query()
        if not who.admin:
            rows = [r for r in rows if r.user == who.user]
        return rows[-self.cfg.max_jobs:]

    def infos(self, rows: Sequence[JobRow]) -> list[JobInfo]:
        """States of these jobs: fresh from the backends when the last poll is older than ``refresh_s``."""
        client = self.client()
        if any(not r.done for r in rows) and self._poll_due():
            return client.list_infos(rows, refresh=True)
        return client.store.infos(rows)

    def _poll_due(self) -> bool:
        with self._poll_lock:
            now = time.monotonic()
            if now - self._last_poll < self.cfg.refresh_s:
                return False
            self._last_poll = now
            self.polls += 1
            return True

    def job(self, who: Identity, job_id: str) -> JobRow | None:
        """The job if this identity may see it; None both when it does not exist and when it is another's."""
        row = self.client().store.get(job_id)
        if row is None or (not who.admin and row.user != who.user):
            return None
        return row

    def job_detail(self, row: JobRow) -> dict[str, Any]:
        client = self.client()
        infos = self.infos([row])
        attempts = client.store.attempts([row.id])
        script = ""
        name = row.meta.get("script") or "job.sh"  # what every built-in backend's plan writes
        if isinstance(name, str) and "/" not in name:
            path = Path(row.job_dir) / name
            try:
                script = path.read_text(errors="replace")[:200_000]
            except OSError:
                script = ""
        usage: list[dict[str, Any]] = []
        if self.ledger_ready():
            # Through the (account, day, end_time) index: the account's records from the day before the job
            # was submitted (a record's day is the local day it ended), not a scan of the whole ledger.
            day = time.strftime("%Y-%m-%d", time.localtime(row.submitted_at - 86400))
            who_clause, params = ("account = ?", [row.account]) if row.account else ("account IS NULL", [])
            with self.ledger.db.transaction() as tx:
                for r in tx.all("SELECT record_id, attempt, state, elapsed_s, cpu_seconds, accelerator_seconds, "
                                f"charge FROM usage_records WHERE {who_clause} AND day >= ? AND job_id = ? "
                                "ORDER BY record_id", [*params, day, row.id]):
                    usage.append({"record_id": r[0], "attempt": r[1], "state": r[2], "elapsed_s": float(r[3] or 0),
                                  "cpu_hours": float(r[4] or 0) / 3600,
                                  "accelerator_hours": float(r[5] or 0) / 3600, "charge": float(r[6] or 0)})
        meta = {k: row.meta.get(k) for k in ("resources", "array", "dependencies", "max_restarts", "qos", "constraint",
                                             "adapter", "routing") if row.meta.get(k) is not None}
        return {"job": {"id": row.id, "name": row.name, "cluster": row.cluster, "backend": row.backend,
                        "native_id": row.native_id, "kind": row.kind, "partition": row.partition,
                        "account": row.account, "user": row.user, "submitted_at": row.submitted_at,
                        "job_dir": row.job_dir, "done": row.done},
                "tasks": [i.to_json() for i in infos], "spec": meta, "script": script,
                "attempts": [{"task": t, "attempts": a} for (_, t), a in sorted(attempts.items())],
                "usage": usage}

    def cancel(self, row: JobRow) -> None:
        self.client().cancel_many([(row, None)])
        self.client().refresh([row])

    def log_chunk(self, row: JobRow, stream: str, offset: int, limit: int = 65536) -> dict[str, Any]:
        """Bytes of a job's log from ``offset`` (the live tail polls this), and whether the job has ended."""
        out, err = self.client().log_paths(row.id, None)
        path = out if stream == "stdout" else err
        text, end = "", offset
        try:
            with open(path, "rb") as f:
                f.seek(max(0, offset))
                data = f.read(limit)
            text, end = data.decode(errors="replace"), max(0, offset) + len(data)
        except OSError:
            pass
        fresh = self.client().store.get(row.id)
        return {"text": text, "offset": end, "done": bool(fresh and fresh.done)}

    # ------------------------------------------------------------ accounts, usage, quotas
    def accounts_of(self, who: Identity) -> set[str]:
        """The accounts a user belongs to: those their token names, those of their jobs in the registry and
        those the ledger booked their usage to. Kept for ``MEMBERSHIP_S`` (membership changes rarely, and
        finding it reads the registry's jobs and the ledger's roll-ups)."""
        now = time.monotonic()
        with self._poll_lock:
            hit = self._members.get(who.user)
        if hit is not None and now - hit[0] < MEMBERSHIP_S:
            return set(who.accounts) | hit[1]
        found: set[str] = set()
        path = self.client().store.path
        if path.exists():
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
            try:
                found.update(str(a) for (a,) in conn.execute(
                    "SELECT DISTINCT account FROM jobs WHERE user = ? AND account IS NOT NULL", (who.user,)))
            finally:
                conn.close()
        if self.ledger_ready():
            found.update(r["account"] for r in self.ledger.report(["account", "user"])
                         if r["user"] == who.user and r["account"])
        with self._poll_lock:
            self._members[who.user] = (now, frozenset(found))
        return set(who.accounts) | found

    def usage(self, who: Identity, by: list[str], since: float | None, until: float | None,
              cluster: str | None = None, account: str | None = None) -> list[dict[str, Any]]:
        if not self.ledger_ready():
            return []
        if who.admin:
            return self.ledger.report(by, since=since, until=until, cluster=cluster, account=account)
        mine = self.accounts_of(who)
        keys = by if "account" in by else ["account", *by]
        rows = self.ledger.report(keys, since=since, until=until, cluster=cluster, account=account)
        return [r for r in rows if r["account"] in mine]

    def quota_checks(self, who: Identity) -> list[Check]:
        if not self.ledger_ready():
            return []
        if who.admin:
            return self.ledger.quota_status()
        return [c for account in sorted(self.accounts_of(who)) for c in self.ledger.quota_status(account)]

    def sync_marks(self) -> list[dict[str, Any]]:
        if not self.ledger_ready():
            return []
        with self.ledger.db.transaction() as tx:
            rows = tx.all("SELECT cluster, scope, mark FROM sync_marks ORDER BY cluster, scope")
        now = time.time()
        return [{"cluster": r[0], "scope": r[1], "mark": float(r[2]), "lag_s": max(0.0, now - float(r[2]))}
                for r in rows]

    def job_states(self, window_s: float = 86400) -> list[tuple[str, str, int]]:
        """(cluster, state, tasks) of unfinished jobs and of tasks that ended in the last ``window_s``, as last
        refreshed: two index searches (open jobs; tasks by end time), not a pass over the whole registry."""
        path = self.client().store.path
        if not path.exists():
            return []
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            rows = conn.execute(
                "SELECT cluster, state, COUNT(*) FROM ("
                "SELECT j.cluster, t.state FROM jobs j JOIN tasks t ON t.job_id = j.id WHERE j.done = 0 "
                # CROSS JOIN keeps this order (tasks by end time, then their jobs): SQLite would otherwise start
                # from every finished job.
                "UNION ALL SELECT j.cluster, t.state FROM tasks t CROSS JOIN jobs j ON j.id = t.job_id "
                "WHERE t.ended_at >= ? AND j.done = 1) GROUP BY cluster, state ORDER BY 1, 2",
                (time.time() - window_s,)).fetchall()
        finally:
            conn.close()
        return [(str(c), str(s), int(n)) for c, s, n in rows]


def forecast(check: Check, now: float | None = None) -> float | None:
    """Use at the window's end if the rate so far goes on (None for a window with no end)."""
    window = check.quota.window(now)
    if window is None:
        return None
    _, lo, hi = window
    now = time.time() if now is None else now
    if hi == float("inf") or lo == float("-inf") or now <= lo:
        return None
    return check.used * (hi - lo) / max(now - lo, 1.0)
