"""Who submits, and how a submission is identified: job ids, the submitter's pid and kernel start time kept with
the registry row (so a submitter that died mid-submit is noticed), and the test hook that pauses a submission."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from suanli.compute.procs import process_start, same_process

if TYPE_CHECKING:
    from suanli.compute.store import JobRow

_ID_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"
#: A row still "Submitting" whose submitter ran on another machine (its pid cannot be checked from here) is
#: taken as abandoned after this long.
SUBMIT_STALE_S = 3600.0


def new_id() -> str:
    """Eight characters, starting with a letter so an id never looks like a Slurm job number. Drawn from
    os.urandom as `secrets` does, without importing it (that costs a CLI start-up more than the id is worth):
    bytes at or above the largest multiple of the alphabet's size are skipped, so every character is equally
    likely."""
    out: list[str] = []
    while len(out) < 8:
        for b in os.urandom(16):
            n = 23 if not out else len(_ID_ALPHABET)  # the first one from the letters only
            if b < 256 - 256 % n:
                out.append(_ID_ALPHABET[b % n])
                if len(out) == 8:
                    break
    return "".join(out)


def _hostname() -> str:
    """The host name, as socket.gethostname() gives it (both read the kernel's node name) but without
    importing socket."""
    return os.uname().nodename


def submitter() -> dict[str, Any]:
    """Who is submitting (kept with the registry row): if this process dies before the backend's id is
    recorded, a later status call sees it gone (pid and kernel start time, so a reused pid does not count)."""
    pid = os.getpid()
    return {"pid": pid, "start": process_start(pid), "host": _hostname()}


def submitter_gone(row: JobRow) -> bool:
    sub = row.meta.get("submitter") or {}
    if sub.get("pid") and sub.get("host") == _hostname():
        return not same_process(int(sub["pid"]), sub.get("start"))
    # Submitted on another machine, or by a suanli that did not record its submitters: only age can tell.
    return time.time() - row.submitted_at > SUBMIT_STALE_S


def test_pause(point: str) -> None:
    """Test-only hook: with SUANLI_TEST_PAUSE_AT=point the submitter creates SUANLI_TEST_PAUSE_FILE there and
    waits (at most 2 minutes) until it is removed, so a test can kill it at a known step of a submission."""
    if os.environ.get("SUANLI_TEST_PAUSE_AT") != point:
        return
    path = Path(os.environ["SUANLI_TEST_PAUSE_FILE"])
    path.write_text(str(os.getpid()))
    deadline = time.monotonic() + 120
    while path.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
