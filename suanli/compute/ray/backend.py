"""The Ray backend: every job is one Ray job (Jobs API) whose entrypoint is ``suanli.runtime.ray_driver``.

Commands hold their resources as entrypoint resources; Function/Map jobs and command arrays run as Ray tasks
of a 0-CPU driver; Training starts its ranks from a placement group. The job folder (results, logs, markers) must
be on a file system the Ray nodes share, as with Slurm. ray is imported only when the Jobs API is used.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from suanli.compute.base import Backend, JobRef, NativeStatus, Plan, StartEstimate, Submission, TaskKey
from suanli.compute.config import ClusterConfig
from suanli.compute.jobdir import float_file, mtime
from suanli.compute.jobenv import job_env, setup_lines
from suanli.compute.payload import PAYLOAD, function_payload, suanli_pythonpath
from suanli.compute.ray import cluster as rc
from suanli.errors import BackendError, UsageError
from suanli.jobs.resources import Resources
from suanli.jobs.spec import MPI, Command, Function, Map, Training
from suanli.jobs.state import JobState, StateTable

if TYPE_CHECKING:
    from ray.job_submission import JobSubmissionClient

log = logging.getLogger("suanli")

STATES = StateTable("ray", {
    "PENDING": JobState.PENDING, "RUNNING": JobState.RUNNING, "STOPPED": JobState.CANCELLED,
    "SUCCEEDED": JobState.COMPLETED, "FAILED": JobState.FAILED,
})
#: Per-task states the driver writes (ray-tasks.json) for Function/Map jobs and command arrays.
TASK_STATES = StateTable("ray task", {s.value: s for s in (JobState.PENDING, JobState.RUNNING, JobState.COMPLETED,
                                                            JobState.FAILED, JobState.CANCELLED, JobState.TIMEOUT)})
CONFIG = "ray-job.json"  # the names suanli.runtime.ray_driver uses (the runtime is not imported here)
TASKS_FILE = "ray-tasks.json"
WAITING, STARTED, EXIT_DRIVER = "waiting-dependency", "started", 70
NODE_LOST = "node-lost"
NODE_CACHE_S = 10.0
#: Ray's error types in the words the other backends use.
_REASONS = {"JOB_ENTRYPOINT_COMMAND_ERROR": "NonZeroExitCode", "JOB_SUPERVISOR_ACTOR_START_TIMEOUT": "StartTimeout",
            "JOB_ENTRYPOINT_COMMAND_START_ERROR": "StartFailed"}
_MIB = 1024 * 1024


class RayBackend(Backend):
    name = "ray"
    poll_initial_s = 0.25
    poll_max_s = 10.0
    #: Ray keeps no accounting of its own: ended jobs are booked from the registry (status_many's times).
    usage_source = "registry"
    #: Ray restarts nothing on its own and suanli does not resubmit: --requeue is refused here, not ignored.
    capabilities = frozenset({"arrays", "dependencies", "functions"})

    def __init__(self, cluster: ClusterConfig) -> None:
        super().__init__(cluster)
        self.address = str(cluster.ray.get("address", "")).rstrip("/")
        if self.address and "://" not in self.address:
            self.address = "http://" + self.address
        root = cluster.ray.get("job_root")
        self.job_root = Path(os.path.expanduser(str(root))) if root else None
        self.python = str(cluster.ray.get("python") or sys.executable)
        self._client: JobSubmissionClient | None = None
        self._nodes: tuple[float, list[dict[str, float]]] | None = None

    # ------------------------------------------------------------ the Jobs API
    def client(self) -> JobSubmissionClient:
        """One JobSubmissionClient per backend (creating one asks the cluster for its version)."""
        if self._client is None:
            if not self.address:
                raise BackendError(f"ray cluster {self.cluster.name!r}: no ray.address in its config")
            try:
                from ray.job_submission import JobSubmissionClient
            except ImportError:
                raise BackendError("the ray backend needs ray: pip install 'suanli[ray]'") from None
            try:
                self._client = JobSubmissionClient(self.address)
            except Exception as exc:  # ConnectionError, or Ray's RuntimeError for a non-Ray address
                raise rc.unreachable(self.address, self.cluster.name, _first_line(exc)) from None
        return self._client

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except BackendError:
            raise
        except Exception as exc:
            text = _first_line(exc)
            if "Connection" in type(exc).__name__ or "onnection refused" in text:
                raise rc.unreachable(self.address, self.cluster.name, text) from None
            raise BackendError(f"ray cluster {self.cluster.name!r}: {what}: {text}") from None

    def nodes(self, fresh: bool = False) -> list[dict[str, float]]:
        """Alive nodes' resources, kept for a few seconds (a burst of submissions asks once)."""
        now = time.monotonic()
        if fresh or self._nodes is None or now - self._nodes[0] > NODE_CACHE_S:
            self._nodes = (now, rc.alive_nodes(self.address, self.cluster.name))
        return self._nodes[1]

    # ------------------------------------------------------------ folders
    def job_dir(self, job_id: str, default: str | Path) -> Path:
        """``ray.job_root``/ID when the config names a shared folder for job folders, else suanli's own. Used
        when planning; afterwards the folder recorded in the registry is the one (the config may change)."""
        return self.job_root / job_id if self.job_root else Path(default)

    def log_paths(self, ref: JobRef, task: int | None) -> tuple[Path, Path]:
        base = Path(ref.job_dir)
        stem = "job" if task is None else f"task-{task}"
        return base / f"{stem}.out", base / f"{stem}.err"

    def result_path(self, ref: JobRef, task: int | None) -> Path:
        return Path(ref.job_dir) / ("result.pkl" if task is None else f"result-{task}.pkl")

    # ------------------------------------------------------------ plan
    def plan(self, sub: Submission) -> Plan:
        spec = sub.spec
        res = spec.resources
        w = spec.workload
        job_dir = str(self.job_dir(sub.job_id, sub.job_dir))
        files: dict[str, bytes] = {}
        per_node = sub.adapter.ray_resources(_one_node(res))
        bundle = _bundle(per_node, res.memory_mb)
        entry: dict[str, Any] = {}
        argv_tail: list[str] = []
        cfg: dict[str, Any] = {
            "workdir": os.path.abspath(spec.workdir or os.getcwd()),
            "setup": setup_lines(sub),
            "time_limit_s": None if res.time_limit is None else res.time_limit.total_seconds(),
            "address": self.address,
            "dependencies": [{"kind": d.kind, "job_id": d.job_id} for d in sub.dependencies],
            "array": spec.array is not None,
            # The user's variables travel in this file: Ray's runtime_env expands $NAME inside env_vars values.
            "env": dict(spec.env),
        }
        count = 1
        if isinstance(w, MPI):
            raise UsageError("workload: the ray backend does not run MPI programs; use a slurm or local cluster")
        if isinstance(w, Command) and spec.array is None and not sub.dependencies:
            if res.nodes != 1:
                raise UsageError(f"resources.nodes: a command on Ray is one process on one node, not {res.nodes}; "
                                 "ask for one node, or use Training for several")
            cfg["mode"] = "command"
            argv_tail = ["--", *w.argv]
            entry = _entrypoint_resources(bundle)
        elif isinstance(w, Command | Function | Map):
            if res.nodes != 1:
                raise UsageError(f"resources.nodes: each task on Ray runs on one node, not {res.nodes}; ask for one")
            cfg.update(mode="tasks", kind="command" if isinstance(w, Command) else "function",
                       tasks=[None] if spec.array is None else list(spec.array.indices),
                       max_concurrent=spec.array.max_concurrent if spec.array else None,
                       task_options=_task_options(bundle))
            if isinstance(w, Command):
                argv_tail = ["--", *w.argv]
            else:
                files[PAYLOAD] = function_payload(w)
        elif isinstance(w, Training):
            if spec.array is not None:
                raise UsageError("array: a training job on Ray cannot be an array; submit one job per run")
            nproc = w.procs_per_node(res)
            per_rank = dataclasses_replace(res, tasks_per_node=nproc)
            bundle = _bundle(sub.adapter.ray_resources(_one_node(per_rank)), res.memory_mb)
            count = res.nodes
            cfg.update(mode="training", nodes=res.nodes, nproc_per_node=nproc, bundle=bundle, script=w.script,
                       module=w.module, args=list(w.args))
        else:
            raise UsageError(f"workload: the ray backend cannot run {type(w).__name__}")
        files[CONFIG] = json.dumps(cfg, indent=1).encode()

        env = job_env(sub, "ray", job_dir, pythonpath=suanli_pythonpath(), user=False)  # the driver sets spec.env
        argv = [self.python, "-m", "suanli.runtime.ray_driver", job_dir, *argv_tail]
        # Metadata is what Ray keeps of the request (it does not report requested resources later); strings only.
        metadata = {
            "suanli_job_id": sub.job_id, "suanli_name": spec.display_name, "suanli_cluster": sub.cluster.name,
            "suanli_partition": sub.partition.name, "suanli_kind": w.kind, "suanli_user": sub.user,
            "suanli_adapter": sub.adapter.name, "suanli_tasks": str(spec.task_count),
            "suanli_resources": json.dumps(res.to_dict(), sort_keys=True),
            "suanli_ray_request": json.dumps({"bundle": bundle, "count": count, "entrypoint": entry}, sort_keys=True),
        }
        if spec.account:
            metadata["suanli_account"] = spec.account
        submit = {"entrypoint": shlex.join(argv), "submission_id": sub.job_id,
                  "runtime_env": {"env_vars": env}, "metadata": metadata, **entry}
        return Plan(job_id=sub.job_id, cluster=sub.cluster.name, backend=self.name, job_dir=job_dir, argv=argv,
                    env=env, files=files,
                    details={"tasks": spec.task_count, "address": self.address, "mode": cfg["mode"],
                             "check": {"bundle": bundle, "count": count}, "submit_job": submit})

    # ------------------------------------------------------------ submit
    def submit(self, plan: Plan) -> str:
        check = plan.details["check"]
        bundle, count = check["bundle"], int(check["count"])
        try:
            rc.check_request(self.nodes(), bundle, count, self.cluster.name, self.address)
        except BackendError:
            # A cached node list may be stale (a node just joined): refuse only on a fresh one.
            rc.check_request(self.nodes(fresh=True), bundle, count, self.cluster.name, self.address)
        client = self.client()
        job_dir = plan.write_job_dir()
        try:
            self._call("submit_job", client.submit_job, **plan.details["submit_job"])
        except BaseException:
            shutil.rmtree(job_dir, ignore_errors=True)
            raise
        return plan.job_id

    def find_submitted(self, ref: JobRef, submitted_at: float) -> str | None:
        """The submission id is the suanli id, so a job whose submitter died after submit_job is found by it."""
        client = self.client()
        try:
            client.get_job_info(ref.job_id)
        except RuntimeError as exc:  # the Jobs API's answer for an unknown submission id
            if "does not exist" in str(exc) or "404" in str(exc):
                return None
            raise BackendError(f"cluster {self.cluster.name}: get_job_info: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - connection errors of several libraries
            raise BackendError(f"cluster {self.cluster.name}: unreachable ({type(exc).__name__})") from None
        return ref.job_id

    # ------------------------------------------------------------ status
    def status_many(self, refs: Sequence[JobRef]) -> dict[TaskKey, NativeStatus]:
        if not refs:
            return {}
        client = self.client()
        jobs = {j.submission_id: j for j in self._call("list_jobs", client.list_jobs)}
        out: dict[TaskKey, NativeStatus] = {}
        for ref in refs:
            folder = Path(ref.job_dir)
            d = jobs.get(ref.native_id or ref.job_id)
            if d is None:
                lost = NativeStatus(JobState.FAILED, reason="JobLost", ended_at=time.time(), native_id=ref.native_id)
                for t in ref.tasks:
                    out[(ref.job_id, t)] = lost  # a restarted Ray cluster forgets its jobs; they never ran on
                continue
            status = d.status.value if hasattr(d.status, "value") else str(d.status)
            state = STATES(status)
            started = d.start_time / 1000 if d.start_time else None
            ended = d.end_time / 1000 if d.end_time else None
            code = d.driver_exit_code
            reason: str | None = None
            cancel = folder / "cancel"
            if state is JobState.PENDING:
                reason = "WaitingForResources" if "waiting for resources" in (d.message or "") else None
                if cancel.exists():
                    # Ray runs a job that was stopped while pending; its driver then ends at once.
                    state, reason, ended = JobState.CANCELLED, "CancelledWhilePending", mtime(cancel)
            elif state is JobState.FAILED:
                if (folder / "timed-out").exists():
                    state, reason = JobState.TIMEOUT, "TimeLimit"
                elif (folder / "dependency-failed").exists():
                    state, reason = JobState.CANCELLED, "DependencyNeverSatisfied"
                elif cancel.exists():
                    state = JobState.CANCELLED
                elif (folder / NODE_LOST).exists():
                    reason = "NodeLost"  # a node of the placement group died; job.err names it
                else:
                    reason = _REASONS.get(d.error_type or "", d.error_type or None)
                if code == EXIT_DRIVER:
                    reason = "DriverFailed"  # the cause is in job.err, or in Ray's job log
            elif state is JobState.CANCELLED and (folder / "timed-out").exists():
                state, reason = JobState.TIMEOUT, "TimeLimit"
            if state is JobState.RUNNING and (folder / WAITING).exists():
                state, reason, started = JobState.PENDING, "Dependency", None  # the driver waits, nothing runs
            elif started is not None:
                started = float_file(folder / STARTED) or started  # Ray's start_time includes that wait
            whole = NativeStatus(state=state, reason=reason, exit_code=code, started_at=started, ended_at=ended,
                                 native_id=d.submission_id)
            per_task = _read_tasks(folder)
            if ref.tasks == (None,) or not ref.tasks:
                # A Function job is one Ray task: queued in Ray it is PENDING, whatever the driver's state.
                out[(ref.job_id, None)] = _task_status(whole, per_task["main"]) if "main" in per_task else whole
                continue
            for t in ref.tasks:
                out[(ref.job_id, t)] = _task_status(whole, per_task.get("main" if t is None else str(t)))
        return out

    # ------------------------------------------------------------ cancel
    def cancel(self, refs: Sequence[JobRef]) -> None:
        client = self.client()
        ended: set[str] | None = None  # asked once, with one list_jobs, only if a whole job is cancelled
        for ref in refs:
            folder = Path(ref.job_dir)
            if ref.tasks and any(t is not None for t in ref.tasks):
                for t in ref.tasks:  # the driver cancels these tasks (and skips them if not started)
                    if t is not None and folder.is_dir():
                        (folder / f"cancel-{t}").touch()
                continue
            if ended is None:
                ended = {j.submission_id for j in self._call("list_jobs", client.list_jobs) if j.status.is_terminal()}
            if (ref.native_id or ref.job_id) in ended:
                continue  # already ended: a cancel marker now would relabel a FAILED job CANCELLED
            if folder.is_dir():
                (folder / "cancel").touch()  # seen by a driver that has not started yet
            self._call("stop_job", client.stop_job, ref.native_id or ref.job_id)

    def expected_start(self, plan: Plan, sub: Submission, timeout_s: float) -> StartEstimate:
        """Now when the live cluster's free resources hold the whole request and nothing else waits; unknown
        otherwise (Ray has no queue forecast). A request no node can hold is refused, as submit would."""
        check = plan.details["check"]
        bundle, count = check["bundle"], int(check["count"])
        url = f"{self.address}/api/cluster_status"
        data = rc.get_json(url, self.address, self.cluster.name, timeout=min(timeout_s, rc.HTTP_TIMEOUT_S))
        try:
            rc.check_request(self.nodes(fresh=True), bundle, count, self.cluster.name, self.address)
        except BackendError as exc:
            return StartEstimate(None, "free resources", refused=str(exc))
        try:
            load = data["data"]["clusterStatus"]["loadMetricsReport"]
            usage: dict[str, list[float]] = load["usage"]
            waiting = load.get("resourceDemand") or load.get("pgDemand")
        except (KeyError, TypeError):
            return StartEstimate(None, "unknown")
        names = {"object_store_memory": "objectStoreMemory"}
        for key, amount in bundle.items():
            used, total = usage.get(names.get(key, key), [0.0, 0.0])
            if amount and total - used < amount * count:
                return StartEstimate(None, "free resources")
        return StartEstimate(None if waiting else time.time(), "free resources")


# ---------------------------------------------------------------- helpers
def dataclasses_replace(res: Resources, **changes: Any) -> Resources:
    import dataclasses

    return dataclasses.replace(res, **changes)


def _one_node(res: Resources) -> Resources:
    return dataclasses_replace(res, nodes=1)


def _bundle(ray_request: dict[str, float], memory_mb: int | None) -> dict[str, float]:
    """An adapter's Ray request (num_cpus, num_gpus, custom names) in Ray's resource names."""
    out: dict[str, float] = {}
    for k, v in ray_request.items():
        out[{"num_cpus": "CPU", "num_gpus": "GPU"}.get(k, k)] = float(v)
    if memory_mb:
        out["memory"] = float(memory_mb * _MIB)
    return out


def _entrypoint_resources(bundle: dict[str, float]) -> dict[str, Any]:
    out: dict[str, Any] = {"entrypoint_num_cpus": bundle.get("CPU", 0.0)}
    if bundle.get("GPU"):
        out["entrypoint_num_gpus"] = bundle["GPU"]
    if bundle.get("memory"):
        out["entrypoint_memory"] = int(bundle["memory"])
    custom = {k: v for k, v in bundle.items() if k not in ("CPU", "GPU", "memory") and v}
    if custom:
        out["entrypoint_resources"] = custom
    return out


def _task_options(bundle: dict[str, float]) -> dict[str, Any]:
    out: dict[str, Any] = {"num_cpus": bundle.get("CPU", 0.0), "num_gpus": bundle.get("GPU", 0.0)}
    if bundle.get("memory"):
        out["memory"] = int(bundle["memory"])
    custom = {k: v for k, v in bundle.items() if k not in ("CPU", "GPU", "memory") and v}
    if custom:
        out["resources"] = custom
    return out


def _read_tasks(folder: Path) -> dict[str, dict[str, Any]]:
    try:
        data = json.loads((folder / TASKS_FILE).read_text())
        tasks: dict[str, dict[str, Any]] = data["tasks"]
        return tasks
    except (OSError, ValueError, KeyError):
        return {}


def _task_status(whole: NativeStatus, t: dict[str, Any] | None) -> NativeStatus:
    """A task's state from the driver's record; the job's end decides for tasks the driver never finished."""
    if t is not None:
        state = TASK_STATES(str(t.get("state", "UNKNOWN")))
        if state.is_terminal or not whole.state.is_terminal:
            if not state.is_terminal and whole.state is JobState.PENDING:
                state = JobState.PENDING
            return NativeStatus(state=state, reason=t.get("reason"), exit_code=t.get("exit_code"),
                                started_at=t.get("started_at"), ended_at=t.get("ended_at"),
                                native_id=whole.native_id)
    if whole.state.is_terminal:
        state = JobState.FAILED if whole.state is JobState.COMPLETED else whole.state
        return NativeStatus(state=state, reason=whole.reason or "DriverEnded", ended_at=whole.ended_at,
                            started_at=(t or {}).get("started_at"), native_id=whole.native_id)
    return NativeStatus(state=JobState.PENDING, reason=whole.reason, native_id=whole.native_id)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]
