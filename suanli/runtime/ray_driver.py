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
import socket
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

CONFIG = "ray-job.json"
TASKS_FILE = "ray-tasks.json"
CANCEL = "cancel"
TIMED_OUT = "timed-out"
DEPENDENCY_FAILED = "dependency-failed"
WAITING = "waiting-dependency"  # present while the driver waits for a dependency: the job is still PENDING
STARTED = "started"  # written when the job's own work starts (Ray's start_time counts the waiting too)
EXIT_DRIVER = 70  # the driver itself failed (a missing job folder, a broken config): not the job's exit code
KILL_GRACE_S = 5.0
EXIT_TIMEOUT = 124
EXIT_CANCELLED = 143


def write_json(path: Path, data: Any) -> None:
    """Atomically, so the backend's status never reads half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def _die_with_parent() -> None:
    """Children die with the process that started them (a Ray worker killed by a cancel leaves no ranks)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _with_setup(argv: list[str], setup: list[str]) -> list[str]:
    """Setup lines are shell by design; the argv still arrives verbatim through "$@"."""
    if not setup:
        return argv
    return ["bash", "-c", "\n".join(setup) + '\nexec "$@"', "suanli-setup", *argv]


def _open_logs(job_dir: Path, stem: str) -> tuple[int, int]:
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
    return os.open(job_dir / f"{stem}.out", flags, 0o644), os.open(job_dir / f"{stem}.err", flags, 0o644)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(KILL_GRACE_S)
    except (ProcessLookupError, PermissionError):
        return
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


#: Children running now, each in its own process group: the time limit stops them all, grandchildren too.
LIVE: set[subprocess.Popen[bytes]] = set()


def run_child(argv: list[str], job_dir: Path, stem: str, workdir: str, env: dict[str, str]) -> int:
    """Run one child in its own process group with its output appended to STEM.out/.err; SIGTERM to this
    process (Ray's stop) stops it."""
    out, err = _open_logs(job_dir, stem)
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, cwd=workdir, env=env,
                                start_new_session=True, preexec_fn=_die_with_parent)
    except OSError as exc:
        os.write(err, f"suanli: cannot start {argv[0]!r}: {exc.strerror}\n".encode())
        return 127
    finally:
        os.close(out)
        os.close(err)
    LIVE.add(proc)
    previous = signal.getsignal(signal.SIGTERM)

    def on_term(signum: int, frame: Any) -> None:
        _stop(proc)

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_term)
    try:
        code = proc.wait()
    finally:
        LIVE.discard(proc)
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, previous)
    return 128 - code if code < 0 else code


# ---------------------------------------------------------------- Ray tasks (run inside Ray workers)
def task_body(job_dir: str, task: int | None, kind: str, argv: list[str], workdir: str,
              setup: list[str], env: dict[str, str]) -> tuple[int, float, float]:
    """One Function call, Map item or command array task; returns (exit code, started_at, ended_at). The
    job's environment is applied here, not through Ray's runtime_env, which expands $NAME in values."""
    started = time.time()
    folder = Path(job_dir)
    stem = "job" if task is None else f"task-{task}"
    (folder / f"{STARTED}-{_key(task)}").write_text(str(started))  # the driver's time limit counts from here
    os.environ.update(env)
    if task is not None:
        os.environ["SUANLI_ARRAY_TASK_ID"] = str(task)
    else:
        os.environ.pop("SUANLI_ARRAY_TASK_ID", None)
    if kind == "command":
        code = run_child(_with_setup(argv, setup), folder, stem, workdir, dict(os.environ))
        return code, started, time.time()
    return _function_task(folder, task, stem, workdir), started, time.time()


def _function_task(job_dir: Path, task: int | None, stem: str, workdir: str) -> int:
    """Run the pickled callable here, with this worker's stdout/stderr sent to the task's log files."""
    import cloudpickle

    from suanli.runtime.function import _load, _write, failure, outcome_path

    key = None if task is None else str(task)
    outcome_path(job_dir, key).unlink(missing_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    out, err = _open_logs(job_dir, stem)
    os.dup2(out, 1)
    os.dup2(err, 2)
    os.close(out)
    os.close(err)
    here = os.getcwd()
    code = 0
    try:
        os.chdir(workdir)
        try:
            fn, args, kwargs = _load(job_dir, key)
            data = cloudpickle.dumps(("ok", fn(*args, **kwargs)))
        except BaseException as exc:  # the job's own failure, reported to the submitter
            data = failure(exc)
            code = 1
        _write(outcome_path(job_dir, key), data)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])
        try:
            os.chdir(here)
        except OSError:
            pass
    return code


def node_address() -> tuple[str, int]:
    """This node's address and a free port, for MASTER_ADDR/MASTER_PORT of rank 0's node."""
    import ray

    with socket.socket() as s:
        s.bind(("", 0))
        port = int(s.getsockname()[1])
    return ray.util.get_node_ip_address(), port  # type: ignore[no-untyped-call]


def training_agent(job_dir: str, node_rank: int, cfg: dict[str, Any], master: tuple[str, int]) -> list[int]:
    """One node of a training job: start its ranks with torchrun's variables; if one fails, stop the rest
    (torchrun's rule). Returns the ranks' exit codes."""
    nproc, nodes = int(cfg["nproc_per_node"]), int(cfg["nodes"])
    target = ["-m", cfg["module"]] if cfg.get("module") else [cfg["script"]]
    argv = _with_setup([sys.executable, "-u", *target, *cfg["args"]], cfg["setup"])
    folder = Path(job_dir)
    procs: list[subprocess.Popen[bytes]] = []
    out, err = _open_logs(folder, "job")
    try:
        for local in range(nproc):
            env = dict(os.environ)
            env.update(cfg.get("env") or {})
            env.update({
                "RANK": str(node_rank * nproc + local), "LOCAL_RANK": str(local),
                "WORLD_SIZE": str(nodes * nproc), "LOCAL_WORLD_SIZE": str(nproc),
                "GROUP_RANK": str(node_rank), "NODE_RANK": str(node_rank), "NNODES": str(nodes),
                "MASTER_ADDR": master[0], "MASTER_PORT": str(master[1]), "SUANLI_LAUNCHER": "ray",
            })
            procs.append(subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                          cwd=cfg["workdir"], env=env, start_new_session=True,
                                          preexec_fn=_die_with_parent))
    finally:
        os.close(out)
        os.close(err)
    codes: list[int | None] = [None] * nproc
    while any(c is None for c in codes):
        for i, p in enumerate(procs):
            if codes[i] is None and p.poll() is not None:
                codes[i] = p.returncode
                if p.returncode != 0:
                    for q in procs:
                        _stop(q)
        time.sleep(0.1)
    return [128 - c if c < 0 else c for c in codes if c is not None]


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
            return run_child(_with_setup(self.argv, self.cfg["setup"]), self.job_dir, "job", self.cfg["workdir"], env)
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
        states: dict[str, dict[str, Any]] = {_key(t): {"state": "PENDING"} for t in todo}
        running: dict[Any, tuple[int | None, float]] = {}
        self._save(states)
        last_save = time.monotonic()
        dirty = False
        while todo or running:
            while todo and len(running) < limit:
                t = todo.pop(0)
                if (self.job_dir / f"cancel-{_key(t)}").exists():
                    states[_key(t)] = {"state": "CANCELLED", "ended_at": time.time()}
                    dirty = True
                    continue
                ref = remote.remote(str(self.job_dir), t, cfg["kind"], self.argv, cfg["workdir"], cfg["setup"], env)
                running[ref] = (t, 0.0)  # 0: queued in Ray, not started on a worker yet
                dirty = True
            done = ray.wait(list(running), num_returns=1, timeout=0.5)[0] if running else []
            for ref in done:
                t, _started = running.pop(ref)
                states[_key(t)] = self._finished(ref, t)
                dirty = True
            now = time.time()
            for ref, (t, started) in list(running.items()):
                if not started:
                    marker = self.job_dir / f"{STARTED}-{_key(t)}"
                    try:
                        started = float(marker.read_text() or now)
                    except (OSError, ValueError):
                        started = 0.0
                    if started:
                        running[ref] = (t, started)
                        states[_key(t)] = {"state": "RUNNING", "started_at": started}
                        dirty = True
                timed_out = bool(started) and per_task_limit is not None and now - started > float(per_task_limit)
                if timed_out or (self.job_dir / f"cancel-{_key(t)}").exists():
                    ray.cancel(ref, force=True)
                    running.pop(ref)
                    states[_key(t)] = {"state": "TIMEOUT" if timed_out else "CANCELLED",
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
                    codes = [1]
                bad = next((c for c in codes if c != 0), 0)
                if bad and not code:
                    code = bad
                    for r in pending:  # one node failed: the others cannot finish without it
                        ray.cancel(r, force=True)
            return code
        finally:
            remove_placement_group(pg)


def _key(task: int | None) -> str:
    return "main" if task is None else str(task)


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
