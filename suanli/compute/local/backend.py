"""The embedded local backend: every job is a detached supervisor process on this machine."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from suanli.compute import script as sh
from suanli.compute.base import Backend, JobRef, NativeStatus, Plan, StartEstimate, Submission, TaskKey
from suanli.compute.config import DEFAULT_MAX_ARRAY_SIZE
from suanli.compute.jobenv import job_env, setup_lines
from suanli.compute.local import runner as rn
from suanli.compute.logs import resolve_stdio
from suanli.compute.payload import PAYLOAD, function_argv, function_payload, suanli_pythonpath
from suanli.compute.procs import same_process
from suanli.errors import BackendError, UsageError
from suanli.jobs.spec import MPI, Command, Function, Map, Training
from suanli.jobs.state import JobState, StateTable

STATES = StateTable(
    "local",
    {s.value: s for s in (JobState.PENDING, JobState.RUNNING, JobState.COMPLETED, JobState.FAILED,
                          JobState.CANCELLED, JobState.TIMEOUT)},
)
KILL_GRACE_S = 5.0


class LocalBackend(Backend):
    name = "local"
    poll_initial_s = 0.005
    poll_max_s = 0.5
    #: Custom stdio paths: the runner opens them for each task.
    capabilities = Backend.capabilities | {"stdio_paths"}

    # ------------------------------------------------------------ plan
    def plan(self, sub: Submission) -> Plan:
        spec = sub.spec
        res = spec.resources
        if res.nodes != 1:
            raise UsageError(f"resources.nodes: the local backend runs on one node, not {res.nodes}; "
                             "use a slurm or ray cluster for more")
        job_dir = str(sub.job_dir)
        env = job_env(sub, "local", job_dir)
        files: dict[str, bytes] = {}
        launch, requires = self._launch(sub, files)
        setup = setup_lines(sub)
        workdir = os.path.abspath(spec.workdir or os.getcwd())
        text = sh.render(
            sh.load_template("suanli.compute.local", "templates/job.sh.tmpl"),
            {
                "EXPORTS": sh.export_lines(env),
                "SETUP": "\n".join(setup) if setup else ":",
                "WORKDIR": sh.quote(workdir),
                "LAUNCH": "exec " + sh.join_argv(launch),
            },
        )
        tasks = sub.tasks
        per_task_cpus = max(1, res.cpus_per_node)
        cores = os.cpu_count() or 1
        concurrency = max(1, cores // per_task_cpus)
        if spec.array and spec.array.max_concurrent:
            concurrency = min(concurrency, spec.array.max_concurrent)
        limit = res.time_limit
        launch_json = {
            "script": "job.sh",
            "tasks": [rn.task_key(t) for t in tasks],
            "max_concurrent": concurrency,
            "time_limit_s": None if limit is None else limit.total_seconds(),
            "kill_grace_s": KILL_GRACE_S,
            "max_restarts": spec.max_restarts,
            "dependencies": [{"kind": d.kind, "job_id": d.job_id, "job_dir": d.job_dir} for d in sub.dependencies],
            "env": {},
        }
        stdio = _stdio(spec)
        if stdio:
            launch_json["stdio"] = {**stdio, "job_id": sub.job_id}
        files["launch.json"] = json.dumps(launch_json, indent=1).encode()
        return Plan(
            job_id=sub.job_id,
            native_id=sub.job_id,  # what submit returns
            cluster=sub.cluster.name,
            backend=self.name,
            job_dir=job_dir,
            argv=[sys.executable, "-m", "suanli.compute.local.runner", job_dir],
            script=text,
            script_name="job.sh",
            env=env,
            files=files,
            details={"tasks": len(tasks), "max_concurrent": concurrency, "requires": requires,
                     "time_limit_s": launch_json["time_limit_s"],
                     "layout": {"stdio": {k: v for k, v in stdio.items() if k != "stdin"}} if stdio else {}},
        )

    def _launch(self, sub: Submission, files: dict[str, bytes]) -> tuple[list[str | sh.EnvRef], list[str]]:
        w = sub.spec.workload
        res = sub.spec.resources
        if isinstance(w, Command):
            return list(w.argv), []
        if isinstance(w, Function | Map):
            files[PAYLOAD] = function_payload(w)
            return list(function_argv(sub.job_dir)), []
        if isinstance(w, Training):
            n = w.procs_per_node(res)
            target = ["-m", w.module] if w.module else [w.script or ""]
            return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1",
                    f"--nproc-per-node={n}", *target, *w.args], ["torch"]
        if isinstance(w, MPI):
            n = w.total_ranks(res)
            argv = ["mpirun", "-np", str(n)]
            if os.geteuid() == 0:
                argv.append("--allow-run-as-root")
            if n > (os.cpu_count() or 1):
                argv.append("--oversubscribe")
            return [*argv, *w.argv], ["mpirun"]
        raise UsageError(f"workload: the local backend cannot run {type(w).__name__}")

    # ------------------------------------------------------------ submit
    def submit(self, plan: Plan) -> str:
        for need in plan.details.get("requires", []):
            if need == "torch" and importlib.util.find_spec("torch") is None:
                raise BackendError("training needs torch in this Python environment: pip install 'suanli[torch]'")
            if need == "mpirun" and shutil.which("mpirun") is None:
                raise BackendError("MPI jobs need mpirun on PATH: install Open MPI (apt-get install openmpi-bin)")
        job_dir = plan.write_job_dir()
        try:
            launch = json.loads(plan.files["launch.json"])
            rn.write_json(job_dir / rn.STATE_FILE, {
                "tasks": {k: {"state": "PENDING", "restarts": 0} for k in launch["tasks"]},
                "updated_at": time.time(),
            })
            with open(job_dir / "runner.log", "ab") as log:
                subprocess.Popen(plan.argv, cwd=job_dir, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                 start_new_session=True, close_fds=True, env=_runner_env())
        except OSError as exc:
            shutil.rmtree(job_dir, ignore_errors=True)
            raise BackendError(f"local backend: cannot start the job in {job_dir}: {exc}") from None
        return plan.job_id

    # ------------------------------------------------------------ status
    def status_many(self, refs: Sequence[JobRef]) -> dict[TaskKey, NativeStatus]:
        out: dict[TaskKey, NativeStatus] = {}
        for ref in refs:
            job_dir = Path(ref.job_dir)
            st = rn.read_state(job_dir)
            lost: str | None = None
            if st is not None and any(t["state"] not in rn.TERMINAL for t in st["tasks"].values()):
                running = rn.alive(job_dir)
                if running is False:
                    st = rn.read_state(job_dir)  # it may have written its last state just before exiting
                    if st is not None and any(t["state"] not in rn.TERMINAL for t in st["tasks"].values()):
                        lost = "RunnerLost"
                elif running is None and _runner_failed_to_start(job_dir, st):
                    lost = "RunnerFailed"
                if lost:
                    # Nobody supervises its tasks any more: stop them and record the end, so cancel,
                    # dependants and later status calls all see a finished job.
                    st = self._stop_unsupervised(job_dir, None, "FAILED", lost) or st
            if st is None and not job_dir.exists():
                # Its folder was deleted (the runner stops its tasks when it notices): nothing can finish it.
                gone = NativeStatus(JobState.FAILED, reason="JobDirLost", ended_at=time.time())
                out.update(((ref.job_id, task), gone) for task in ref.tasks)
                continue
            tasks = (st or {}).get("tasks", {})
            for task in ref.tasks:
                t = tasks.get(rn.task_key(task))
                if t is None:
                    out[(ref.job_id, task)] = NativeStatus(JobState.UNKNOWN, reason="no state file")
                    continue
                state = STATES(t["state"])
                reason = t.get("reason")
                ended = t.get("ended_at")
                if lost and not state.is_terminal:
                    state, reason, ended = JobState.FAILED, lost, time.time()
                out[(ref.job_id, task)] = NativeStatus(
                    state=state, reason=reason, exit_code=t.get("exit_code"), started_at=t.get("started_at"),
                    ended_at=ended, restarts=int(t.get("restarts", 0)), attempts=tuple(t.get("attempts") or ()),
                )
        return out

    def find_submitted(self, ref: JobRef, submitted_at: float) -> str | None:
        """The native id of a job whose submitter died before recording it: its runner was being started
        (``submit`` writes the state file, then opens runner.log and starts the runner; one that never came
        up is caught by the RunnerFailed check), else None: it never got that far."""
        job_dir = Path(ref.job_dir)
        if rn.read_state(job_dir) is None or not (job_dir / "runner.log").exists():
            return None
        return ref.job_id

    def array_cap(self) -> int:
        """Most array tasks per job when the cluster config sets none."""
        return DEFAULT_MAX_ARRAY_SIZE

    # ------------------------------------------------------------ cancel
    def cancel(self, refs: Sequence[JobRef]) -> None:
        for ref in refs:
            job_dir = Path(ref.job_dir)
            if not job_dir.is_dir():
                continue  # its folder was removed: nothing is left to stop
            whole = len(ref.tasks) == 0
            markers = ["cancel"] if whole else [f"cancel-{rn.task_key(t)}" for t in ref.tasks]
            for m in markers:
                (job_dir / m).touch()
            if rn.alive(job_dir):
                pid = int((job_dir / rn.PID_FILE).read_text().split()[0])
                try:
                    os.kill(pid, signal.SIGUSR1)
                except ProcessLookupError:
                    pass
                continue
            if rn.alive(job_dir) is None and not _runner_failed_to_start(job_dir, rn.read_state(job_dir) or {}):
                continue  # a runner about to start sees the cancel marker itself
            self._stop_unsupervised(job_dir, None if whole else {rn.task_key(t) for t in ref.tasks}, "CANCELLED",
                                    None)

    def _stop_unsupervised(self, job_dir: Path, keys: set[str] | None, state: str,
                           reason: str | None) -> dict[str, Any] | None:
        """The runner is gone: kill what it left (only processes that are provably the task's own, by pid and
        start time) and record the given end state in state.json."""
        st = rn.read_state(job_dir)
        if st is None:
            return None
        now = time.time()
        for key, t in st["tasks"].items():
            if (keys is None or key in keys) and t["state"] not in rn.TERMINAL:
                if same_process(t.get("pid"), t.get("pid_start")):
                    try:
                        os.killpg(int(t["pid"]), signal.SIGKILL)
                    except (ProcessLookupError, PermissionError):
                        pass
                t.update(state=state, reason=reason, ended_at=now)
        rn.write_json(job_dir / rn.STATE_FILE, st)
        return st

    def expected_start(self, plan: Plan, sub: Submission, timeout_s: float) -> StartEstimate:
        """Now when the cores not busy (all cores less the one-minute load average) hold the request; unknown
        otherwise. This machine keeps no queue, so the load is the only forecast there is."""
        res = sub.spec.resources
        need = res.nodes * res.cpus_per_node
        try:
            busy = os.getloadavg()[0]
        except OSError:
            return StartEstimate(None, "unknown")
        free = (os.cpu_count() or 1) - round(busy)
        return StartEstimate(time.time() if need <= free else None, "free cores")


def _stdio(spec: Any) -> dict[str, str]:
    """The spec's stdio paths, absolute; refused now (exit 2), not at run time, when a plain stdin file or the
    folder of an output file is missing (patterned ones are checked when each task starts)."""
    stdio = resolve_stdio(spec)
    for key, path in stdio.items():
        if "%" in path:
            continue
        if key == "stdin" and not os.path.isfile(path):
            raise UsageError(f"stdin: no file {path}; create it or fix the path")
        if key != "stdin" and not os.path.isdir(os.path.dirname(path)):
            raise UsageError(f"{key}: the folder {os.path.dirname(path)} does not exist; create it first")
    return stdio


RUNNER_START_GRACE_S = 60.0


def _runner_failed_to_start(job_dir: Path, st: dict[str, Any]) -> bool:
    """No pid file yet: the runner crashed if it wrote to its log, or never started within the grace time."""
    try:
        if (job_dir / "runner.log").stat().st_size > 0:
            return not (job_dir / rn.PID_FILE).exists()
    except OSError:
        return True
    return time.time() - float(st.get("updated_at", time.time())) > RUNNER_START_GRACE_S


def _runner_env() -> dict[str, str]:
    """The submitter's environment, plus the folder suanli was imported from when it is not installed."""
    env = dict(os.environ)
    env.update(suanli_pythonpath(env))
    return env
