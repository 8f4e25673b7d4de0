"""Which process a pid names: the pid with the kernel's start time of the process, so a pid the kernel reused
never passes for the submitter or a runner that died. Shared by the local runner and the submitter's
registry (standard library only: the runner starts once per job and must start fast)."""

from __future__ import annotations


def process_start(pid: int) -> str:
    """The kernel's start time of a live process (see ``same_process``); "?" when it is gone."""
    return starttime(pid)


def starttime(pid: int) -> str:
    """The kernel's start time of a live process: with the pid it names one process even after pid reuse.
    A zombie (exited, not yet reaped) or a missing process gives "?"."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return "?"
    if len(fields) < 20 or fields[0] in ("Z", "X"):
        return "?"
    return fields[19]


def same_process(pid: int | None, start: str | None) -> bool:
    return bool(pid) and start not in (None, "?") and starttime(int(pid or 0)) == start
