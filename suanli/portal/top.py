"""`suanli top`: jobs across clusters, refreshed in place, with the account's quota bar; q quits.

Each refresh is one ``Client.list_infos`` over the shown jobs: one status poll per cluster, as `suanli status`.
Standard library only (termios cbreak mode and select on stdin), so it runs wherever the CLI does.
"""

from __future__ import annotations

import os
import select
import sys
import time
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from suanli.accounting.ledger import Check
    from suanli.api import Client
    from suanli.compute.store import JobRow
    from suanli.jobs.record import JobInfo

CLEAR_LINE = "\x1b[K"


class Top:
    def __init__(self, client: Client, interval: float, cluster: str | None, account: str | None,
                 out: IO[str] | None = None, inp: IO[str] | None = None) -> None:
        self.client = client
        self.interval = interval
        self.cluster = cluster
        self.account = account
        self.out = out or sys.stdout
        self.inp = inp or sys.stdin
        self.refreshes = 0

    def run(self, iterations: int | None = None) -> int:
        fd = self.inp.fileno() if self.inp.isatty() else None
        saved: Any = None
        if fd is not None:
            import termios
            import tty

            saved = termios.tcgetattr(fd)
            tty.setcbreak(fd)
        self.out.write("\x1b[?1049h\x1b[?25l")  # the alternate screen, no cursor: the shell's screen comes back
        try:
            while iterations is None or self.refreshes < iterations:
                self.out.write("\x1b[H" + self.frame() + "\x1b[J")
                self.out.flush()
                if self._quit_within(self.interval, fd):
                    break
        except KeyboardInterrupt:
            pass
        finally:
            self.out.write("\x1b[?25h\x1b[?1049l")
            self.out.flush()
            if fd is not None:
                import termios

                termios.tcsetattr(fd, termios.TCSADRAIN, saved)
        return 0

    def _quit_within(self, seconds: float, fd: int | None) -> bool:
        """Wait for a key up to ``seconds``; True when it was q."""
        if fd is None:
            time.sleep(seconds)
            return False
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                key = os.read(fd, 1)
                if key in (b"q", b"Q", b"\x03"):
                    return True
        return False

    def frame(self) -> str:
        store = self.client.store
        rows = store.query(cluster=self.cluster, open_or_since=time.time() - 86400)
        infos = self.client.list_infos(rows)  # one status poll per cluster
        self.refreshes += 1
        by_id = {r.id: r for r in rows}
        account = self.account or next((r.account for r in reversed(rows) if r.account), None)
        cols, lines = _size(self.out)
        counts: dict[str, int] = {}
        for i in infos:
            counts[i.state.value] = counts.get(i.state.value, 0) + 1
        states = ", ".join(f"{k.lower()} {v}" for k, v in sorted(counts.items()))
        head = [f"suanli top  {time.strftime('%H:%M:%S')}  refresh {self.refreshes} every {self.interval:g}s  "
                f"jobs {len(infos)} ({states})  q quits"]
        head += self._quota_lines(account)
        head.append("")
        table = _job_lines(infos, by_id)
        body = (head + table)[: max(lines - 1, 5)]
        return "\n".join(line[:cols] + CLEAR_LINE for line in body) + "\n"

    def _quota_lines(self, account: str | None) -> list[str]:
        if not account:
            return ["quota: (no account)"]
        accounts = self.client.accounts
        if self.client.configs.settings.ledger is None and not accounts.ledger.db.exists:
            return [f"quota {account}: none (no ledger)"]
        checks = accounts.ledger.quota_status(account)
        if not checks:
            return [f"quota {account}: none"]
        return [_bar(c) for c in checks]


def _bar(c: Check, width: int = 30) -> str:
    limit = c.limit
    used = min(width, round(width * c.used / limit)) if limit > 0 else width
    res = min(width - used, round(width * c.reserved / limit)) if limit > 0 else 0
    pct = 100 * (c.used + c.reserved) / limit if limit > 0 else 100.0
    what = f"{c.kind} accelerator-hours" if c.kind else c.resource.replace("_", "-")
    return (f"quota {c.quota.account} {c.window} {what}: [" + "#" * used + "+" * res + "." * (width - used - res)
            + f"] {pct:.0f}%  {c.used:.1f}+{c.reserved:.1f} of {c.limit:g}")


def _job_lines(infos: list[JobInfo], rows: dict[str, JobRow]) -> list[str]:
    head = f"{'JOB':<12} {'NAME':<20} {'CLUSTER':<12} {'PARTITION':<10} {'STATE':<10} {'REASON':<16} " \
           f"{'ELAPSED':>9} {'ACCEL':<10}"
    out = [head]
    for i in reversed(infos):
        res = rows[i.id].meta.get("resources") or {} if i.id in rows else {}
        n = int(res.get("nodes") or 1) * int(res.get("accelerators_per_node") or 0)
        accel = f"{res.get('accelerator_kind') or ''}:{n}" if n else "-"
        el = i.elapsed
        elapsed = "" if el is None else f"{int(el) // 3600}:{int(el) % 3600 // 60:02d}:{int(el) % 60:02d}"
        name = "".join(ch if ch.isprintable() else "?" for ch in i.name)  # no terminal escapes from job names
        out.append(f"{i.task_id:<12} {name[:20]:<20} {i.cluster[:12]:<12} {(i.partition or '')[:10]:<10} "
                   f"{i.state.value:<10} {(i.reason or '')[:16]:<16} {elapsed:>9} {accel:<10}")
    if not infos:
        out.append("(no jobs in the last day)")
    return out


def _size(out: IO[str]) -> tuple[int, int]:
    try:
        size = os.get_terminal_size(out.fileno())
        return size.columns, size.lines
    except (OSError, ValueError, AttributeError):
        return 120, 40
