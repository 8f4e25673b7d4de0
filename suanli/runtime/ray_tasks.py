"""What the Ray driver runs away from itself: its child processes (a command, with its logs and the kill that
follows a stop), and the functions Ray ships to worker nodes (a task of a Function or Map job; one training
node's agent that starts its ranks with torchrun's variables). Split from ray_driver.py, which keeps the driver
and its bookkeeping; Ray finds these by their module path on every node."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

KILL_GRACE_S = 5.0
STARTED = "started"  # written when the job's own work starts (Ray's start_time counts the waiting too)


def task_key(task: int | None) -> str:
    """A task's name in marker files: ``main`` for a job that is no array."""
    return "main" if task is None else str(task)


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


def with_setup(argv: list[str], setup: list[str]) -> list[str]:
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
    (folder / f"{STARTED}-{task_key(task)}").write_text(str(started))  # the driver's time limit counts from here
    os.environ.update(env)
    if task is not None:
        os.environ["SUANLI_ARRAY_TASK_ID"] = str(task)
    else:
        os.environ.pop("SUANLI_ARRAY_TASK_ID", None)
    if kind == "command":
        code = run_child(with_setup(argv, setup), folder, stem, workdir, dict(os.environ))
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
    from suanli.runtime.launch import network_env

    nproc, nodes = int(cfg["nproc_per_node"]), int(cfg["nodes"])
    target = ["-m", cfg["module"]] if cfg.get("module") else [cfg["script"]]
    argv = with_setup([sys.executable, "-u", *target, *cfg["args"]], cfg["setup"])
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
            # gloo/NCCL on the interface that reaches MASTER_ADDR: left alone they bind what the host name
            # resolves to, often loopback, which the other nodes cannot reach.
            env.update(network_env(env))
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
