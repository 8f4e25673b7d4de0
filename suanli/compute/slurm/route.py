"""``sbatch --test-only`` for routing: the exact options suanli would submit, the script on stdin, nothing
queued. Slurm answers with the start its backfill scheduler expects (``Job N to start at T using ...``)."""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Mapping

from suanli.compute.base import Plan, StartEstimate
from suanli.errors import BackendError

_START = re.compile(r"to start at (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)")
#: What sbatch prints when no controller answered (as opposed to a controller that refused the request).
_UNREACHABLE = ("Unable to contact slurm controller", "Socket timed out", "Connection refused",
                "Zero Bytes were transmitted", "cannot stat file", "Unable to establish controller")


def test_only_argv(plan: Plan) -> list[str]:
    """The plan's sbatch argv with ``--test-only`` and without the script path (the script goes on stdin, so
    the job folder need not exist); ``--parsable`` is dropped, it only changes what a real submission prints."""
    argv = [a for a in plan.argv[:-1] if a != "--parsable"]
    return [argv[0], "--test-only", *argv[1:]]


def parse_test_only(text: str) -> float | None:
    """The expected start (epoch seconds, the controller's local time read as this machine's) or None."""
    m = _START.search(text)
    if not m:
        return None
    return time.mktime(time.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S"))


def expected_start(plan: Plan, env: Mapping[str, str], cluster: str, timeout_s: float) -> StartEstimate:
    """Ask the controller once (no retries: routing must answer within ``timeout_s``)."""
    argv = test_only_argv(plan)
    try:
        proc = subprocess.run(argv, input=plan.script or "#!/bin/sh\n", capture_output=True, text=True,
                              env=dict(env), timeout=timeout_s)
    except FileNotFoundError:
        raise BackendError(f"cluster {cluster!r}: sbatch not found; install the Slurm client tools") from None
    except subprocess.TimeoutExpired:
        raise BackendError(f"cluster {cluster!r}: the Slurm controller did not answer sbatch --test-only "
                           f"within {timeout_s:g} s") from None
    text = (proc.stderr + "\n" + proc.stdout).strip()
    if proc.returncode == 0:
        at = parse_test_only(text)
        if at is None:
            return StartEstimate(None, "sbatch --test-only", None)
        return StartEstimate(at, "sbatch --test-only")
    first = " ".join(line.strip() for line in text.splitlines()[:2]) or f"exit code {proc.returncode}"
    if any(t in text for t in _UNREACHABLE):
        raise BackendError(f"cluster {cluster!r}: Slurm controller unreachable: {first}")
    return StartEstimate(None, "sbatch --test-only", refused=f"sbatch --test-only: {first}")
