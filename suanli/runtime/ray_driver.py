"""The entrypoint of every suanli job on Ray: ``python -m suanli.runtime.ray_driver JOB_DIR [-- ARGV...]``.

It reads ``ray-job.json`` (written by the Ray backend's plan) from the job folder and runs one of:

* ``command``: ARGV as a child process (no shell) with its output in ``job.out``/``job.err``; the Ray entrypoint
  itself holds the job's resources. Does not import ray.
* ``tasks``: Function and Map jobs (and command arrays) as Ray tasks, at most ``max_concurrent`` at once; a
  function task runs in the Ray worker and writes ``result[-N].pkl`` like ``suanli.runtime.function``; per task
  states go to ``ray-tasks.json`` for the backend's status; ``cancel-N`` markers cancel single tasks.
* ``training``: one placement-group bundle per node, one Ray task per node that starts the script's ranks as
  child processes with torchrun's variables (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR...), so a script written
  for torchrun or Slurm runs unchanged.

Common to all: a ``cancel`` marker written before the job started makes it end at once (Ray runs a job that was
stopped while pending); the time limit writes a ``timed-out`` marker and ends the job; dependencies are waited
for through the Jobs API. The driver's own exit code is the job's.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from suanli.runtime.ray_tasks import (
    LIVE,
    STARTED,
    node_address,
    run_child,
    task_body,
    task_key,
    training_agent,
    with_setup,
    write_json,
)

CONFIG = "ray-job.json"
TASKS_FILE = "ray-tasks.json"
CANCEL = "cancel"
TIMED_OUT = "timed-out"
DEPENDENCY_FAILED = "dependency-failed"
WAITING = "waiting-dependency"  # present while the driver waits for a dependency: the job is still PENDING
NODE_LOST = "node-lost"  # written when a training node died under the job (its raylet gone)
EXIT_DRIVER = 70  # the driver itself failed (a missing job folder, a broken config): not the job's exit code
EXIT_TIMEOUT = 124
EXIT_CANCELLED = 143




# ---------------------------------------------------------------- the driver
class Driver:
    def __init__(self, job_dir: Path, argv: list[str]) -> None:
        self.job_dir = job_dir
        self.cfg: dict[str, Any] = json.loads((job_dir / CONFIG).read_text())
        self.argv = argv
        self.lock = threading.Lock()
        self.child: subprocess.Popen[bytes] | None = None

    def log(self, text: str) -> None:
        """Driver messages go to the Ray job log and to the job's stderr file."""
        sys.stderr.write(f"suanli: {text}\n")
        sys.stderr.flush()
        try:
            with open(self.job_dir / "job.err", "a") as fh:
                fh.write(f"suanli: {text}\n")
        except OSError:
            pass

    def start_watchdog(self) -> None:
        limit = self.cfg.get("time_limit_s")
        if not limit or self.cfg["mode"] == "tasks":
            return  # Function, Map and array tasks each count their limit from when they start on a worker

        def expire() -> None:
            (self.job_dir / TIMED_OUT).write_text(str(time.time()))
            self.log(f"time limit of {limit:g} s reached; stopping the job")
            for proc in list(LIVE):  # the child's whole process group: grandchildren too
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            os._exit(EXIT_TIMEOUT)  # Ray ends the job's workers (and their ranks) once the driver is gone

        timer = threading.Timer(float(limit), expire)
        timer.daemon = True
        timer.start()

    def wait_dependencies(self) -> bool:
        deps = self.cfg.get("dependencies") or []
        if not deps:
            return True
        from ray.job_submission import JobStatus, JobSubmissionClient

        client = JobSubmissionClient(self.cfg["address"])
        pending = list(deps)
        while pending:
            for d in list(pending):
                status = client.get_job_status(d["job_id"])
                if not status.is_terminal():
                    continue
                pending.remove(d)
                if d["kind"] == "afterok" and status != JobStatus.SUCCEEDED:
                    (self.job_dir / DEPENDENCY_FAILED).write_text(d["job_id"])
                    self.log(f"dependency {d['job_id']} ended {status.value}; this job will not run")
                    return False
            if pending:
                time.sleep(2.0)
        return True

    def run(self) -> int:
        if (self.job_dir / CANCEL).exists():
            self.log("cancelled before it started")
            return EXIT_CANCELLED
        os.environ.update(self.cfg.get("env") or {})
        if self.cfg.get("dependencies"):
            waiting = self.job_dir / WAITING
            waiting.touch()
            try:
                if not self.wait_dependencies():
                    return 1
            finally:
                waiting.unlink(missing_ok=True)
        self.start_watchdog()  # the limit counts the job's own run, not the wait for its dependencies
        mode = self.cfg["mode"]
        if mode != "tasks":
            (self.job_dir / STARTED).write_text(str(time.time()))
        if mode == "command":
            env = dict(os.environ)
            return run_child(with_setup(self.argv, self.cfg["setup"]), self.job_dir, "job", self.cfg["workdir"], env)
        import ray

        ray.init(log_to_driver=True, configure_logging=False)
        if mode == "tasks":
            return self.run_tasks()
        if mode == "training":
            return self.run_training()
        self.log(f"unknown mode {mode!r}")
        return 2

    # ------------------------------------------------------------ Function, Map, command arrays
    def run_tasks(self) -> int:
        import ray

        cfg = self.cfg
        opts = dict(cfg["task_options"])
        remote = ray.remote(task_body).options(max_retries=0, **opts)
        todo: list[int | None] = list(cfg["tasks"])
        limit = int(cfg.get("max_concurrent") or len(todo))
        per_task_limit = cfg.get("time_limit_s")
        env = dict(cfg.get("env") or {})
        states: dict[str, dict[str, Any]] = {task_key(t): {"state": "PENDING"} for t in todo}
        running: dict[Any, tuple[int | None, float]] = {}
        self._save(states)
        last_save = time.monotonic()
        dirty = False
        while todo or running:
            while todo and len(running) < limit:
                t = todo.pop(0)
                if (self.job_dir / f"cancel-{task_key(t)}").exists():
                    states[task_key(t)] = {"state": "CANCELLED", "ended_at": time.time()}
                    dirty = True
                    continue
                ref = remote.remote(str(self.job_dir), t, cfg["kind"], self.argv, cfg["workdir"], cfg["setup"], env)
                running[ref] = (t, 0.0)  # 0: queued in Ray, not started on a worker yet
                dirty = True
            done = ray.wait(list(running), num_returns=1, timeout=0.5)[0] if running else []
            for ref in done:
                t, _started = running.pop(ref)
                states[task_key(t)] = self._finished(ref, t)
                dirty = True
            now = time.time()
            for ref, (t, started) in list(running.items()):
                if not started:
                    marker = self.job_dir / f"{STARTED}-{task_key(t)}"
                    try:
                        started = float(marker.read_text() or now)
                    except (OSError, ValueError):
                        started = 0.0
                    if started:
                        running[ref] = (t, started)
                        states[task_key(t)] = {"state": "RUNNING", "started_at": started}
                        dirty = True
                timed_out = bool(started) and per_task_limit is not None and now - started > float(per_task_limit)
                if timed_out or (self.job_dir / f"cancel-{task_key(t)}").exists():
                    ray.cancel(ref, force=True)
                    running.pop(ref)
                    states[task_key(t)] = {"state": "TIMEOUT" if timed_out else "CANCELLED",
                                       "started_at": started or None, "ended_at": now,
                                       "reason": "TimeLimit" if timed_out else None}
                    dirty = True
            if dirty and (time.monotonic() - last_save > 0.3 or not (todo or running)):
                self._save(states)
                last_save, dirty = time.monotonic(), False
        self._save(states)
        codes = [s.get("exit_code") for s in states.values()]
        if all(s["state"] == "COMPLETED" for s in states.values()):
            return 0
        if len(states) == 1 and isinstance(codes[0], int) and codes[0]:
            return int(codes[0])
        return 1

    def _finished(self, ref: Any, task: int | None) -> dict[str, Any]:
        import ray

        try:
            code, started, ended = ray.get(ref)
            return {"state": "COMPLETED" if code == 0 else "FAILED", "exit_code": code, "started_at": started,
                    "ended_at": ended}
        except Exception as exc:  # the worker died (out of memory, killed): the task never reported back
            text = f"{type(exc).__name__}: {exc}".strip()
            self._lost(task, text)
            return {"state": "FAILED", "exit_code": None, "ended_at": time.time(),
                    "reason": type(exc).__name__}

    def _lost(self, task: int | None, text: str) -> None:
        """A task whose worker died: its log and (for functions) its outcome say why."""
        stem = "job" if task is None else f"task-{task}"
        with open(self.job_dir / f"{stem}.err", "a") as fh:
            fh.write(f"suanli: the Ray task failed: {text}\n")
        if self.cfg["kind"] == "function":
            import cloudpickle

            from suanli.runtime.function import _write, outcome_path

            path = outcome_path(self.job_dir, None if task is None else str(task))
            if not path.exists():
                _write(path, cloudpickle.dumps(("error", None, text + "\n", text.splitlines()[0])))

    def _save(self, states: dict[str, dict[str, Any]]) -> None:
        write_json(self.job_dir / TASKS_FILE, {"tasks": states, "updated_at": time.time()})

    # ------------------------------------------------------------ training
    def run_training(self) -> int:
        import ray
        from ray.util.placement_group import placement_group, remove_placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        cfg = self.cfg
        nodes = int(cfg["nodes"])
        bundle = {k: float(v) for k, v in cfg["bundle"].items() if v}
        pg = placement_group([dict(bundle) for _ in range(nodes)], strategy="STRICT_SPREAD" if nodes > 1 else "PACK")
        ray.get(pg.ready())
        try:
            def on(i: int) -> PlacementGroupSchedulingStrategy:
                return PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=i)

            master = ray.get(ray.remote(node_address).options(num_cpus=0, scheduling_strategy=on(0)).remote())
            opts: dict[str, Any] = {"num_cpus": bundle.get("CPU", 0), "num_gpus": bundle.get("GPU", 0),
                                    "max_retries": 0}
            extra = {k: v for k, v in bundle.items() if k not in ("CPU", "GPU", "memory")}
            if extra:
                opts["resources"] = extra
            if bundle.get("memory"):
                opts["memory"] = bundle["memory"]
            agent = ray.remote(training_agent)
            refs = [agent.options(scheduling_strategy=on(i), **opts).remote(str(self.job_dir), i, cfg, master)
                    for i in range(nodes)]
            pending = list(refs)
            code = 0
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                try:
                    codes = ray.get(done[0])
                except Exception as exc:
                    self.log(f"a training node failed: {type(exc).__name__}: {exc}")
                    if isinstance(exc, ray.exceptions.NodeDiedError):  # the backend reports reason NodeLost
                        (self.job_dir / NODE_LOST).write_text(f"{exc}\n")
                    codes = [1]
                bad = next((c for c in codes if c != 0), 0)
                if bad and not code:
                    code = bad
                    for r in pending:  # one node failed: the others cannot finish without it
                        ray.cancel(r, force=True)
            return code
        finally:
            remove_placement_group(pg)


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python -m suanli.runtime.ray_driver JOB_DIR [-- ARGV...]", file=sys.stderr)
        return 2
    job_dir = Path(argv[0])
    rest = argv[1:]
    if rest and rest[0] == "--":
        rest = rest[1:]
    try:
        return Driver(job_dir, rest).run()
    except Exception:
        tb = traceback.format_exc()
        sys.stderr.write("suanli: the Ray driver failed:\n" + tb)  # Ray's job log keeps it if the folder is gone
        try:
            with open(job_dir / "job.err", "a") as fh:
                fh.write("suanli: the Ray driver failed:\n" + tb)
        except OSError:
            pass
        return EXIT_DRIVER


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
