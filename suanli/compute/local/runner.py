"""The detached supervisor of one local job: ``python -m suanli.compute.local.runner JOB_DIR``.

It runs in its own session so it outlives the submitting process. It waits for dependencies, runs the tasks
(each in its own process group, at most ``max_concurrent`` at once), enforces the time limit, requeues failed
tasks up to the restart limit, honours cancel requests, and records every change in ``state.json``
(written atomically) which the backend reads for status. Only the standard library is imported: this process
starts once per job and must start fast.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any, BinaryIO

from suanli.compute.logs import expand_stdio
from suanli.compute.procs import starttime

TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "PREEMPTED", "OUT_OF_MEMORY", "NODE_FAIL"}
STATE_FILE = "state.json"
PID_FILE = "runner.pid"
#: state.json is rewritten whole, so with many tasks a write costs O(tasks): the runner waits at least this
#: many times the last write's duration before the next one, which keeps writing under ~1/WRITE_SPACING of its
#: time and the total linear in the number of state changes (a small job still writes within 50 ms).
WRITE_SPACING = 10.0
MIN_WRITE_INTERVAL_S = 0.05


def task_key(task: int | None) -> str:
    return "main" if task is None else str(task)


def write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as fh:
        json.dump(data, fh)
    os.replace(tmp, path)


def read_state(job_dir: Path) -> dict[str, Any] | None:
    try:
        with open(job_dir / STATE_FILE) as fh:
            data: dict[str, Any] = json.load(fh)
            return data
    except (OSError, ValueError):
        return None


def combined(state: dict[str, Any]) -> str:
    """Whole-job state as a dependency sees it: COMPLETED only when every task completed."""
    states = [t["state"] for t in state["tasks"].values()]
    if not all(s in TERMINAL for s in states):
        return "ACTIVE"
    return "COMPLETED" if all(s == "COMPLETED" for s in states) else "FAILED"


class Runner:
    def __init__(self, job_dir: Path) -> None:
        self.dir = job_dir
        with open(job_dir / "launch.json") as fh:
            self.launch: dict[str, Any] = json.load(fh)
        st = read_state(job_dir)
        if st is None:
            raise SystemExit(f"{job_dir}: state.json missing or unreadable")
        self.state = st
        self.tasks: dict[str, dict[str, Any]] = st["tasks"]
        self.cancel_all = False
        self.cancelled: set[str] = set()  # per-task cancel markers already acted on
        self.dirty = False
        self.last_flush = 0.0
        self.write_interval = MIN_WRITE_INTERVAL_S
        self.running: dict[str, tuple[subprocess.Popen[bytes], float | None]] = {}
        self.fds: dict[str, int] = {}
        self.killing: dict[str, tuple[str, float]] = {}  # key -> (final state, SIGKILL deadline)
        self.pidfd_ok = True
        self.sel = selectors.DefaultSelector()
        self.wake_r, wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w)
        self.sel.register(self.wake_r, selectors.EVENT_READ, None)
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, self._on_term)
        signal.signal(signal.SIGUSR1, lambda *_: None)  # a wake-up: look at cancel markers
        signal.signal(signal.SIGHUP, signal.SIG_IGN)

    def _on_term(self, *_: Any) -> None:
        self.cancel_all = True

    # ------------------------------------------------------------ state
    def update(self, key: str, **fields: Any) -> None:
        self.tasks[key].update(fields)
        self.dirty = True

    def flush(self, force: bool = False) -> None:
        now = time.monotonic()
        if self.dirty and (force or now - self.last_flush >= self.write_interval):
            self.state["updated_at"] = time.time()
            try:
                write_json(self.dir / STATE_FILE, self.state)
            except FileNotFoundError:
                if not self.dir.exists():
                    self.orphaned()
                raise
            self.dirty = False
            self.last_flush = time.monotonic()
            self.write_interval = max(MIN_WRITE_INTERVAL_S, WRITE_SPACING * (self.last_flush - now))

    def next_flush_in(self) -> float:
        """Seconds until unwritten changes may be written."""
        return max(0.0, self.last_flush + self.write_interval - time.monotonic())

    def orphaned(self) -> None:
        """The job folder was deleted: nobody can see or cancel these tasks any more, so they stop now."""
        for proc, _ in self.running.values():
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        raise SystemExit(f"{self.dir}: the job folder was deleted; its tasks were stopped")

    def wait_events(self, timeout: float) -> None:
        for key, _ in self.sel.select(timeout=max(0.0, timeout)):
            if key.fileobj == self.wake_r:
                try:
                    while os.read(self.wake_r, 512):
                        pass
                except BlockingIOError:
                    pass

    # ------------------------------------------------------------ phases
    def cancel_markers(self) -> set[str]:
        """Tasks with a cancel marker (a whole-job cancel sets ``cancel_all`` and gives no per-task set)."""
        if self.cancel_all or (self.dir / "cancel").exists():
            self.cancel_all = True
            return set()
        return {p.name[len("cancel-"):] for p in self.dir.glob("cancel-*")}

    def is_cancelled(self, key: str) -> bool:
        return self.cancel_all or key in self.cancelled or (self.dir / f"cancel-{key}").exists()

    def wait_dependencies(self) -> bool:
        deps = self.launch.get("dependencies") or []
        if not deps:
            return True
        for key in self.tasks:
            self.update(key, reason="Dependency")
        self.flush(force=True)
        delay = 0.05
        while True:
            markers = self.cancel_markers()
            if self.cancel_all or markers.issuperset(self.tasks):
                return self._never(None, "CANCELLED")
            waiting = False
            for dep in deps:
                st = read_state(Path(dep["job_dir"]))
                if st is None:
                    if not Path(dep["job_dir"]).exists():
                        return self._never("DependencyMissing")
                    waiting = True
                    continue
                c = combined(st)
                if c == "ACTIVE" and alive(Path(dep["job_dir"])) is False:
                    c = "FAILED"  # its runner died: it will never finish
                if c == "ACTIVE":
                    waiting = True
                elif dep["kind"] == "afterok" and c != "COMPLETED":
                    return self._never("DependencyNeverSatisfied")
            if not waiting:
                for key in self.tasks:
                    self.update(key, reason=None)
                return True
            self.wait_events(delay)
            delay = min(delay * 1.5, 1.0)

    def _never(self, reason: str | None, state: str = "CANCELLED") -> bool:
        now = time.time()
        for key in self.tasks:
            self.update(key, state=state, reason=reason, ended_at=now)
        return False

    def start(self, key: str) -> None:
        t = self.tasks[key]
        env = dict(os.environ)
        env.update(self.launch.get("env") or {})
        if key != "main":
            env["SUANLI_ARRAY_TASK_ID"] = key
        env["SUANLI_RESTART_COUNT"] = str(t.get("restarts", 0))
        try:
            out, err, stdin = self.open_stdio(key)
        except OSError as exc:
            self.launch_failed(key, f"suanli: cannot open the job's stdio file: {exc}\n")
            return
        try:
            proc = subprocess.Popen(
                ["/bin/bash", str(self.dir / self.launch["script"])],
                cwd=self.dir, env=env, stdin=stdin, stdout=out, stderr=err,
                start_new_session=True, close_fds=True,
            )
        except OSError as exc:
            err.write(f"suanli: cannot start the job: {exc}\n".encode())
            self.update(key, state="FAILED", reason="LaunchFailed", exit_code=127, ended_at=time.time())
            return
        finally:
            for fh in (out, err, stdin):
                if not isinstance(fh, int):
                    fh.close()
        limit = self.launch.get("time_limit_s")
        deadline = time.monotonic() + float(limit) if limit else None
        self.running[key] = (proc, deadline)
        try:
            fd = os.pidfd_open(proc.pid)
            self.sel.register(fd, selectors.EVENT_READ, key)
            self.fds[key] = fd
        except (OSError, AttributeError):
            self.pidfd_ok = False  # no pidfds: poll instead
        self.update(key, state="RUNNING", reason=None, pid=proc.pid, pid_start=starttime(proc.pid),
                    started_at=time.time(), ended_at=None, exit_code=None)

    def open_stdio(self, key: str) -> tuple[BinaryIO, BinaryIO, BinaryIO | int]:
        """A task's stdout and stderr (appended, as Slurm's --open-mode=append: a restart adds to them) and
        stdin: the spec's own files (Slurm's %A %a %j %% expanded), else the job folder's and /dev/null."""
        stdio = self.launch.get("stdio") or {}
        task = None if key == "main" else int(key)
        stem = "job" if key == "main" else f"task-{key}"

        def path(name: str, default: Path) -> Path:
            given = stdio.get(name)
            return default if given is None else Path(expand_stdio(given, stdio["job_id"], task))

        out = open(path("stdout", self.dir / f"{stem}.out"), "ab")  # noqa: SIM115 - closed once the child has them
        try:
            err = open(path("stderr", self.dir / f"{stem}.err"), "ab")  # noqa: SIM115
        except OSError:
            out.close()
            raise
        if stdio.get("stdin") is None:
            return out, err, subprocess.DEVNULL
        try:
            return out, err, open(path("stdin", Path(os.devnull)), "rb")  # noqa: SIM115
        except OSError:
            out.close()
            err.close()
            raise

    def launch_failed(self, key: str, message: str) -> None:
        """A task that could not start: the reason goes to the job folder's stderr file."""
        stem = "job" if key == "main" else f"task-{key}"
        try:
            with open(self.dir / f"{stem}.err", "ab") as fh:
                fh.write(message.encode())
        except OSError:
            pass
        self.update(key, state="FAILED", reason="LaunchFailed", exit_code=127, ended_at=time.time())

    def cancel_queued(self, queue: deque[str]) -> None:
        """Act on new cancel markers: queued tasks end CANCELLED at once (O(1) each, the queue skips them
        later), running ones are stopped."""
        fresh = self.cancel_markers() - self.cancelled
        self.cancelled |= fresh
        if not self.cancel_all and not fresh:
            return
        now = time.time()
        if self.cancel_all:
            for key in queue:
                if self.tasks[key]["state"] not in TERMINAL:
                    self.update(key, state="CANCELLED", reason=None, ended_at=now)
            queue.clear()
            fresh = set(self.running)
        for key in fresh:
            if key in self.running:
                self.kill(key, "CANCELLED")
            elif key in self.tasks and self.tasks[key]["state"] not in TERMINAL:
                self.update(key, state="CANCELLED", reason=None, ended_at=now)

    def kill(self, key: str, final: str) -> None:
        proc, _ = self.running[key]
        if key in self.killing:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        self.killing[key] = (final, time.monotonic() + float(self.launch.get("kill_grace_s", 5)))

    def reap(self, queue: deque[str]) -> None:
        for key, (proc, _) in list(self.running.items()):
            code = proc.poll()
            if code is None:
                continue
            fd = self.fds.pop(key, None)
            if fd is not None:
                self.sel.unregister(fd)
                os.close(fd)
            del self.running[key]
            exit_code = 128 - code if code < 0 else code
            forced = self.killing.pop(key, None)
            try:
                # Whatever the task left behind in its process group ends with it (as Slurm ends a job's
                # processes): background children of a finished task do not live on.
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            if forced:
                final, reason = forced[0], None
            else:
                final, reason = ("COMPLETED" if code == 0 else "FAILED"), None
            t = self.tasks[key]
            restarts = int(t.get("restarts", 0))
            if final in ("FAILED", "TIMEOUT") and restarts < int(self.launch.get("max_restarts", 0)) \
                    and not self.is_cancelled(key):
                # Each attempt is kept (it is booked as its own usage record); the task's own fields are the
                # latest attempt's.
                attempt = {"started_at": t.get("started_at"), "ended_at": time.time(), "state": final,
                           "exit_code": exit_code}
                self.update(key, state="PENDING", reason="Requeued", restarts=restarts + 1, exit_code=exit_code,
                            ended_at=None, attempts=[*t.get("attempts", []), attempt])
                queue.appendleft(key)
                continue
            self.update(key, state=final, reason=reason, exit_code=exit_code, ended_at=time.time())

    def run(self) -> None:
        (self.dir / PID_FILE).write_text(f"{os.getpid()} {starttime(os.getpid())}\n")
        if not self.wait_dependencies():
            self.flush(force=True)
            return
        queue = deque(k for k, t in self.tasks.items() if t["state"] not in TERMINAL)
        limit = max(1, int(self.launch.get("max_concurrent") or 1))
        while queue or self.running:
            self.cancel_queued(queue)
            while queue and len(self.running) < limit and not self.cancel_all:
                key = queue.popleft()
                if self.tasks[key]["state"] not in TERMINAL:  # a task cancelled while queued is skipped
                    self.start(key)
            self.flush()
            now = time.monotonic()
            for key, (_, deadline) in list(self.running.items()):
                if deadline is not None and now >= deadline and key not in self.killing:
                    self.kill(key, "TIMEOUT")
            for key, (_, kill_at) in list(self.killing.items()):
                if now >= kill_at and key in self.running:
                    try:
                        os.killpg(self.running[key][0].pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            next_times = [d for _, d in self.running.values() if d is not None]
            next_times += [k for _, k in self.killing.values()]
            timeout = min(min(next_times) - now, 5.0) if next_times else 5.0
            if not self.pidfd_ok:
                timeout = min(timeout, 0.05)
            if self.dirty:
                timeout = min(timeout, self.next_flush_in())  # unwritten changes go out when the spacing allows
            self.wait_events(timeout)
            if not self.dir.exists():
                self.orphaned()
            self.reap(queue)
        self.flush(force=True)


def alive(job_dir: Path) -> bool | None:
    """Whether the job's runner still runs; None when it has not written its pid yet."""
    try:
        pid_text, start = (job_dir / PID_FILE).read_text().split()
    except (OSError, ValueError):
        return None
    pid = int(pid_text)
    return start != "?" and starttime(pid) == start


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m suanli.compute.local.runner JOB_DIR", file=sys.stderr)
        return 2
    Runner(Path(argv[1])).run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
