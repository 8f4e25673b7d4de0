"""Running Slurm's client commands for the backend: bounded retries of a busy controller (never a second
sbatch unless the first provably did not arrive), streamed output for large answers, and the token bucket that
keeps a flood of submissions under slurmctld's RPC rate."""

from __future__ import annotations

import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator

from suanli.compute.slurm import parse
from suanli.errors import BackendError

#: Messages of a busy or restarting slurmctld: worth a bounded retry, unlike a refusal.
TRANSIENT = ("Socket timed out", "Unable to contact slurm controller", "Connection refused", "Zero Bytes were",
             "Resource temporarily unavailable", "slurm_receive_msg", "Transport endpoint")
#: Of those, the ones that prove the request never reached slurmctld: the only ones after which a
#: submission may be sent again (after a time-out the job may have been queued already).
NEVER_ARRIVED = ("Unable to contact slurm controller", "Connection refused")
RETRY_DELAYS = (1.0, 2.0, 4.0)
COMMAND_TIMEOUT_S = 60.0
#: Retries stop once this much time has gone: sbatch alone spends ~30 s before it gives up on a dead controller.
RETRY_BUDGET_S = 45.0
#: sbatch calls per second one process sends to a cluster by default (``slurm.submit_rate`` in its config); raw
#: sbatch manages ~100/s on a small test controller; 60/s leaves it room for everyone else.
DEFAULT_SUBMIT_RATE = 60.0
#: Submissions that pass at once before the rate applies.
SUBMIT_BURST = 20.0


class TokenBucket:
    """Lets bursts of submissions through at once and throttles only sustained floods to ``rate`` per second,
    instead of sleeping on every call; protects slurmctld's RPC rate limit. A call past the burst books its
    token in advance (the bucket goes into debt) and sleeps until it is earned, so the sustained rate is
    ``rate`` exactly: time slept is never counted again as refill, and an oversleep is credited to the next
    call. ``clock``/``sleep`` are injectable so the spacing can be tested without waiting."""

    def __init__(self, rate: float = DEFAULT_SUBMIT_RATE, capacity: float = SUBMIT_BURST,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> None:
        if rate <= 0 or capacity < 1:
            raise ValueError("a token bucket needs rate > 0 and capacity >= 1")
        self.capacity, self.rate = capacity, rate
        self.clock, self.sleep = clock, sleep
        self.tokens = capacity
        self.stamp = clock()
        self.lock = threading.Lock()

    def reserve(self) -> float:
        """Take one token; the seconds to wait before using it (0 within the burst)."""
        with self.lock:
            now = self.clock()
            self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
            self.tokens -= 1
            return -self.tokens / self.rate if self.tokens < 0 else 0.0

    def take(self) -> None:
        delay = self.reserve()
        if delay > 0:  # outside the lock: other threads book their own later slots meanwhile
            self.sleep(delay)


_BUCKETS: dict[tuple[str, float], TokenBucket] = {}
_BUCKETS_LOCK = threading.Lock()


def bucket_for(cluster: str, rate: float) -> TokenBucket:
    """One bucket per cluster (and rate) per process: every Client and thread of a process shares it."""
    with _BUCKETS_LOCK:
        bucket = _BUCKETS.get((cluster, rate))
        if bucket is None:
            bucket = _BUCKETS[(cluster, rate)] = TokenBucket(rate)
        return bucket


class SlurmCommands:
    """The backend's way of running Slurm commands (a mixin: ``self.env`` names the cluster's SLURM_CONF)."""

    env: dict[str, str]

    def config(self) -> dict[str, str]:
        """The controller's configuration (``scontrol show config``), with the usual retries."""
        return parse.parse_config(self.run(["scontrol", "show", "config"], "scontrol show config").stdout)

    def stream(self, argv: list[str], what: str) -> Iterator[str]:
        """A Slurm command's stdout line by line, never all of it in memory (a centre's sacct history runs to
        gigabytes); a failure after the last line raises BackendError."""
        with tempfile.TemporaryFile("w+") as errfile:  # a file, so a chatty stderr can never block stdout
            try:
                proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=errfile, text=True, env=self.env,
                                        errors="replace")
            except FileNotFoundError:
                raise BackendError(f"{what}: {argv[0]} not found; install the Slurm client tools "
                                   "(apt-get install slurm-client) or run this on a login node") from None
            assert proc.stdout is not None
            try:
                yield from proc.stdout
                rc = proc.wait(timeout=COMMAND_TIMEOUT_S)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            errfile.seek(0)
            err = errfile.read()
        if rc != 0:
            raise BackendError(f"{what}: {(err.strip().splitlines() or [f'exit code {rc}'])[0]}")

    # ------------------------------------------------------------ running Slurm commands
    def run(self, argv: list[str], what: str, input_text: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run a Slurm client command; retry only transient controller errors, within a bounded time. sbatch
        is retried only when the request provably never arrived, so a job is never queued twice."""
        safe = NEVER_ARRIVED if argv[0] == "sbatch" else TRANSIENT
        delays = list(RETRY_DELAYS)
        start = time.monotonic()
        while True:
            try:
                proc = subprocess.run(argv, capture_output=True, text=True, env=self.env, timeout=COMMAND_TIMEOUT_S,
                                      input=input_text)
            except FileNotFoundError:
                raise BackendError(f"{what}: {argv[0]} not found; install the Slurm client tools "
                                   "(apt-get install slurm-client) or use another cluster") from None
            except subprocess.TimeoutExpired:
                proc = subprocess.CompletedProcess(argv, 124, "", f"timed out after {COMMAND_TIMEOUT_S} s")
            if proc.returncode == 0:
                return proc
            message = (proc.stderr or proc.stdout).strip()
            transient = (proc.returncode == 124 and safe is TRANSIENT) or any(t in message for t in safe)
            if transient and delays and time.monotonic() - start + delays[0] < RETRY_BUDGET_S:
                time.sleep(delays.pop(0))
                continue
            first = " ".join(message.splitlines()[:3]) or f"exit code {proc.returncode}"
            raise BackendError(f"{what}: {first}")
