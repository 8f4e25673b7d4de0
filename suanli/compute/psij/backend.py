"""The PSI/J backend: jobs go to whatever PSI/J executor the cluster config names (``psij: {executor: pbs}``),
so a centre with a PBS Pro, LSF, Cobalt or Flux partition gets suanli's API, registry, accounting and quotas
without a hand-written backend. Tested here through PSI/J's ``local`` and ``slurm`` executors only.

Every job runs ``job.sh`` (this folder's template) under PSI/J's launcher; the script writes its start time and
exit code into the job folder, so status needs nothing a process kept in memory. Status asks the scheduler
once per ``status_many`` through the batch executor's own status command and parser (``squeue`` for Slurm,
``qstat`` for PBS, ...) instead of PSI/J's polling thread, which would poll every 30 s and delete its exit-code
files once read. psij is imported only here, and only when a job is planned, submitted or asked about.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, ClassVar

from suanli.compute import script as sh
from suanli.compute.base import Backend, ConfigFail, JobRef, NativeStatus, Plan, Submission, TaskKey
from suanli.compute.config import ClusterConfig
from suanli.compute.jobdir import float_file, mtime
from suanli.compute.jobenv import job_env, setup_lines
from suanli.compute.payload import PAYLOAD, function_argv, function_payload, suanli_pythonpath
from suanli.compute.psij.support import (
    RECORD,
    alive,
    create_time,
    exit_record,
    failure_reason,
    first_line,
    forget,
    is_batch,
    kill_local,
    psij_job,
    read_json,
    resources,
    write_json,
)
from suanli.errors import BackendError, UsageError
from suanli.jobs.spec import MPI, Command, Function, Map, Training
from suanli.jobs.state import JobState, StateTable

#: PSI/J's job states, one to one (NEW and QUEUED are both "not started yet").
STATES = StateTable("psij", {
    "NEW": JobState.PENDING, "QUEUED": JobState.PENDING, "ACTIVE": JobState.RUNNING,
    "COMPLETED": JobState.COMPLETED, "FAILED": JobState.FAILED, "CANCELED": JobState.CANCELLED,
})
FINAL = ("COMPLETED", "FAILED", "CANCELED")
#: Files in the job folder: written by job.sh (start time; exit code and end time), by ``cancel``, by ``submit``.
STARTED, EXIT, CANCEL = "started", "exit", "cancel"
COMMAND_TIMEOUT_S = 60.0
#: How long a status of an executor without a bulk query (Flux, RADICAL-Pilot, plug-ins) waits for attach().
ATTACH_WAIT_S = 5.0
_NAME_OK = re.compile(r"[^A-Za-z0-9._+-]")
#: One submission at a time per process: a batch executor's work directory is pointed at each job's folder.
_SUBMIT_LOCK = threading.Lock()


def _psij() -> Any:
    """The psij module, imported on first use (it costs ~0.3 s and installs a SIGCHLD handler)."""
    try:
        import psij
    except ImportError:
        raise BackendError("the psij backend needs PSI/J: pip install 'suanli[psij]'") from None
    return psij


def _names(kind: str) -> set[str] | None:
    """PSI/J's registered executor or launcher names, read from its descriptor files (``psij-descriptors/*.py``
    on ``sys.path``) without importing psij: loading a cluster config must stay cheap and must not install
    PSI/J's SIGCHLD handler in every suanli process. None when no descriptor is found (psij not installed: the
    config stays loadable, and using the cluster says what to install). Kept between commands
    (``suanli.discovery``), keyed by every descriptor folder and file's stamp."""
    import sys

    from suanli.discovery import memo, stamps

    files: list[str] = []
    for entry in sys.path:
        folder = os.path.join(entry or ".", "psij-descriptors")
        try:
            files += sorted(os.path.join(folder, n) for n in os.listdir(folder) if n.endswith(".py"))
        except OSError:
            continue
    key = stamps(files)
    found: dict[str, list[str]] = memo("psij-descriptors", None if key is None else (tuple(files), key),
                                       lambda: _read_descriptors(files))
    names = found["executor" if kind == "executor" else "launcher"]
    return set(names) or None


def _read_descriptors(files: Sequence[str]) -> dict[str, list[str]]:
    """The ``name=`` of every descriptor in ``__PSI_J_EXECUTORS__`` and ``__PSI_J_LAUNCHERS__`` of ``files``."""
    import ast

    out: dict[str, set[str]] = {"executor": set(), "launcher": set()}
    for f in files:
        try:
            tree = ast.parse(Path(f).read_text())
        except (OSError, SyntaxError, ValueError):
            continue
        for node in tree.body:
            if not isinstance(node, ast.Assign):
                continue
            for kind, var in (("executor", "__PSI_J_EXECUTORS__"), ("launcher", "__PSI_J_LAUNCHERS__")):
                if not any(isinstance(t, ast.Name) and t.id == var for t in node.targets):
                    continue
                for call in ast.walk(node.value):
                    if isinstance(call, ast.Call):
                        for kw in call.keywords:
                            if kw.arg == "name" and isinstance(kw.value, ast.Constant):
                                out[kind].add(str(kw.value.value))
    return {kind: sorted(names) for kind, names in out.items()}


def psij_name(name: str) -> str:
    """The scheduler-side job name: PSI/J writes it into a directive, so only plain characters pass."""
    return (_NAME_OK.sub("_", name) or "job")[:64]


class PsijBackend(Backend):
    name = "psij"
    poll_initial_s = 0.25
    poll_max_s = 10.0
    #: Ended jobs are booked from the registry: the start and end times job.sh wrote (status_many reports
    #: them) times what suanli allocated; PSI/J has no accounting query of its own.
    usage_source = "registry"
    #: Python functions run; arrays, requeue and dependencies have no portable PSI/J form, so they are refused
    #: before submission (``compute/fit.check_capabilities``), never half-run.
    capabilities: ClassVar[frozenset[str]] = frozenset({"functions"})
    options: ClassVar[Mapping[str, type | tuple[type, ...]]] = {
        "executor": str, "launcher": str, "url": str, "config": dict, "custom_attributes": dict,
    }

    @classmethod
    def config_section(cls, values: Mapping[str, Any], fail: ConfigFail) -> Mapping[str, Any]:
        """``executor`` is required and must be one PSI/J knows; ``launcher`` likewise; ``config`` (settings of
        the executor's config object) and ``custom_attributes`` (``pbs.place: scatter``) hold plain values."""
        out = dict(super().config_section(values, fail))
        if "executor" not in out:
            fail((), "missing required key 'executor' (the PSI/J executor: slurm, pbs, lsf, flux, local, ...)")
        for key, kind in (("executor", "executor"), ("launcher", "launcher")):
            if key not in out:
                continue
            if key == "executor" and out[key] == "suanli":
                fail((key,), "'suanli' is PSI/J's executor that submits through suanli itself; name the "
                     "scheduler's own executor (slurm, pbs, lsf, flux, local, ...)")
            known = _names(kind)
            if known is not None and out[key] not in known:
                fail((key,), f"{out[key]!r} is not a PSI/J {kind}; known {kind}s: {', '.join(sorted(known))}")
        for key in ("config", "custom_attributes"):
            for k, v in out.get(key, {}).items():
                if not isinstance(k, str) or isinstance(v, list | dict) or v is None:
                    fail((key, str(k)), f"{v!r} is not a plain value (a string, number or true/false)")
        return out

    def __init__(self, cluster: ClusterConfig) -> None:
        super().__init__(cluster)
        self.executor_name = str(cluster.options.get("executor", "local"))
        self.launcher = cluster.options.get("launcher")
        self._executor: Any = None

    # ------------------------------------------------------------ the PSI/J executor
    def executor(self, work_dir: Path | None = None) -> Any:
        """One PSI/J executor per backend, made on first use; ``psij.config`` settings are applied to its
        config object (an unknown one is refused: PSI/J would silently ignore it)."""
        if self._executor is None:
            psij = _psij()
            config = psij.JobExecutorConfig(work_directory=work_dir) if work_dir else None
            try:
                ex = psij.JobExecutor.get_instance(self.executor_name, url=self.cluster.options.get("url"),
                                                   config=config)
            except Exception as exc:  # noqa: BLE001 - PSI/J raises ValueError, ImportError, its own errors
                raise BackendError(f"psij executor {self.executor_name!r}: {first_line(exc)}") from None
            for key, value in dict(self.cluster.options.get("config", {})).items():
                if not hasattr(ex.config, key):
                    raise BackendError(f"{self.cluster.source}: psij.config.{key}: executor "
                                       f"{self.executor_name!r} has no setting {key!r}")
                setattr(ex.config, key, value)
            if is_batch(ex):
                ex.config.keep_files = True  # suanli reads the job folder; PSI/J's files stay with the job
            self._executor = ex
        return self._executor

    # ------------------------------------------------------------ plan
    def plan(self, sub: Submission) -> Plan:
        spec = sub.spec
        res = spec.resources
        w = spec.workload
        job_dir = str(sub.job_dir)
        if isinstance(w, Training | MPI) or not isinstance(w, Command | Function | Map):
            raise UsageError(f"workload: the psij backend runs commands and Python functions, not "
                             f"{type(w).__name__}; use a slurm cluster for training and MPI")
        if spec.array is not None or sub.dependencies or spec.max_restarts:
            raise UsageError("the psij backend runs single jobs: no arrays, dependencies or restarts")
        if any(c.isspace() for c in job_dir):
            raise UsageError(f"SUANLI_HOME: PSI/J's launcher scripts do not quote paths, and {job_dir!r} has a "
                             "space; use a SUANLI_HOME without spaces")
        files: dict[str, bytes] = {}
        if isinstance(w, Command):
            launch = list(w.argv)
        else:
            files[PAYLOAD] = function_payload(w)
            launch = function_argv(job_dir)
        env = job_env(sub, "psij", job_dir, pythonpath=suanli_pythonpath())
        setup = setup_lines(sub)
        text = sh.render(sh.load_template("suanli.compute.psij", "templates/job.sh.tmpl"), {
            "EXPORTS": sh.export_lines(env),
            "SETUP": "\n".join(setup) if setup else ":",
            "WORKDIR": sh.quote(os.path.abspath(spec.workdir or os.getcwd())),
            "LAUNCH": sh.join_argv(launch),
        })
        script = str(Path(job_dir) / "job.sh")
        request = {
            "name": psij_name(spec.display_name),
            "executable": "/bin/bash",
            "arguments": [script],
            "directory": job_dir,
            "stdout_path": str(Path(job_dir) / "job.out"),
            "stderr_path": str(Path(job_dir) / "job.err"),
            "launcher": self.launcher,
            "resources": resources(res.nodes, res.tasks_per_node, res.cpus_per_task, res.accelerators_per_node,
                                    res.memory_mb),
            "attributes": {
                "duration_s": None if res.time_limit is None else res.time_limit.total_seconds(),
                "queue_name": sub.partition.name,
                "account": spec.account,
                "custom_attributes": self._custom_attributes(spec.qos, spec.constraint),
            },
        }
        return Plan(job_id=sub.job_id, cluster=sub.cluster.name, backend=self.name, job_dir=job_dir,
                    argv=["/bin/bash", script], script=text, script_name="job.sh", env=env, files=files,
                    details={"executor": self.executor_name, "psij_job": request})

    def _custom_attributes(self, qos: str | None, constraint: str | None) -> dict[str, Any]:
        """The config's custom attributes, plus Slurm's qos/constraint (other schedulers have no such names:
        a partition that sets them must say how, in ``psij.custom_attributes``)."""
        out = dict(self.cluster.options.get("custom_attributes", {}))
        for key, value in (("qos", qos), ("constraint", constraint)):
            if value is None:
                continue
            if self.executor_name != "slurm":
                raise UsageError(f"{key}: the psij executor {self.executor_name!r} has no {key}; set the "
                                 f"scheduler's own option in psij.custom_attributes of {self.cluster.source}")
            out.setdefault(f"slurm.{key}", value)
        return out

    # ------------------------------------------------------------ submit
    def submit(self, plan: Plan) -> str:
        psij = _psij()
        work = Path(plan.job_dir).parent.parent / "psij"  # launcher scripts, shared by every job
        ex = self.executor(work)
        job_dir = plan.write_job_dir()
        try:
            job = psij_job(psij, plan.details["psij_job"])
            with _SUBMIT_LOCK:
                if is_batch(ex):
                    ex.work_directory = job_dir / "psij"  # its submit script, node file and exit code file
                ex.submit(job)
            native = str(job.native_id)
            record: dict[str, Any] = {"executor": self.executor_name, "native_id": native}
            if is_batch(ex):
                forget(ex, native)  # status comes from status_many, not PSI/J's 30-second poll thread
            elif self.executor_name == "local":
                record["pid_start"] = create_time(int(native))
            write_json(job_dir / RECORD, record)
        except Exception as exc:  # noqa: BLE001 - SubmitException, InvalidJobException, OSError
            shutil.rmtree(job_dir, ignore_errors=True)
            raise BackendError(f"psij executor {self.executor_name!r}: submit: "
                               f"{first_line(getattr(exc, 'message', None) or exc)}") from None
        return native

    def find_submitted(self, ref: JobRef, submitted_at: float) -> str | None:
        """``submit`` records the native id in the job folder right after PSI/J returned it; a submitter that
        died in between leaves no trace PSI/J could find (it lists ids, not names), so the job counts as lost."""
        rec = read_json(Path(ref.job_dir) / RECORD)
        native = rec.get("native_id")
        return str(native) if native else None

    # ------------------------------------------------------------ status
    def status_many(self, refs: Sequence[JobRef]) -> dict[TaskKey, NativeStatus]:
        refs = [r for r in refs if r.native_id]
        if not refs:
            return {}
        ex = self.executor()
        if is_batch(ex):
            seen = self._batch_status(ex, [str(r.native_id) for r in refs])
        elif self.executor_name == "local":
            seen = {str(r.native_id): (("ACTIVE", None, None) if alive(r) else None) for r in refs}
        else:
            seen = {str(r.native_id): self._attached_status(ex, str(r.native_id)) for r in refs}
        out: dict[TaskKey, NativeStatus] = {}
        for ref in refs:
            st = self._settle(ref, seen.get(str(ref.native_id)))
            for task in ref.tasks or (None,):
                out[(ref.job_id, task)] = st
        return out

    def _batch_status(self, ex: Any, natives: list[str]) -> dict[str, tuple[str, str | None, int | None] | None]:
        """One status command for every job (the executor's own, parsed by its own parser)."""
        argv = list(ex.get_status_command(natives))
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
        except FileNotFoundError:
            raise BackendError(f"psij executor {self.executor_name!r}: {argv[0]} not found; install the "
                               "scheduler's client tools or run this on a login node") from None
        except subprocess.TimeoutExpired:
            raise BackendError(f"psij executor {self.executor_name!r}: {argv[0]} timed out") from None
        text = proc.stdout if proc.returncode == 0 else "\n".join(s for s in (proc.stdout, proc.stderr) if s)
        try:
            parsed = ex.parse_status_output(proc.returncode, text)
        except Exception as exc:  # noqa: BLE001 - RuntimeError for a failed command, AssertionError for odd rows
            raise BackendError(f"psij executor {self.executor_name!r}: status: {first_line(exc)}") from None
        out: dict[str, tuple[str, str | None, int | None] | None] = {}
        for native in natives:
            s = parsed.get(native)
            out[native] = None if s is None else (s.state.name, s.message, s.exit_code)
        return out

    def _attached_status(self, ex: Any, native: str) -> tuple[str, str | None, int | None] | None:
        """Executors without a bulk query (Flux, plug-ins): attach() and wait briefly for its first report."""
        psij = _psij()
        job = psij.Job()
        try:
            ex.attach(job, native)
            s = job.wait(timeout=timedelta(seconds=ATTACH_WAIT_S), target_states=[psij.JobState.QUEUED])
        except Exception as exc:  # noqa: BLE001 - whatever the plug-in raises
            raise BackendError(f"psij executor {self.executor_name!r}: attach {native}: {first_line(exc)}") from None
        if s is None:
            raise BackendError(f"psij executor {self.executor_name!r}: no state for job {native} yet")
        return s.state.name, s.message, s.exit_code

    def _settle(self, ref: JobRef, seen: tuple[str, str | None, int | None] | None) -> NativeStatus:
        """A job's state from what the scheduler said (None: it no longer lists the job) and the job folder.
        The exit code job.sh wrote is final whatever the scheduler shows; a job that left the scheduler
        without one was killed (time limit, node failure) or cancelled."""
        folder = Path(ref.job_dir)
        started = float_file(folder / STARTED)
        ended = exit_record(folder / EXIT)
        cancelled = (folder / CANCEL).exists()
        name, message, code = seen if seen is not None else (None, None, None)
        if ended is not None:
            rc, at = ended
            state = "COMPLETED" if rc == 0 else ("CANCELED" if cancelled or name == "CANCELED" else "FAILED")
            return NativeStatus(STATES(state), reason=None if rc == 0 else failure_reason(state, message), exit_code=rc,
                                started_at=started, ended_at=at, native_id=ref.native_id)
        if name is not None and name not in FINAL:
            state = STATES(name)
            return NativeStatus(state, reason=message, started_at=started if state is JobState.RUNNING else None,
                                native_id=ref.native_id)
        now = time.time()
        if cancelled or name == "CANCELED":
            return NativeStatus(JobState.CANCELLED, started_at=started, ended_at=mtime(folder / CANCEL) or now,
                                native_id=ref.native_id)
        return NativeStatus(JobState.FAILED, reason=message or "NoExitCode", exit_code=code, started_at=started,
                            ended_at=now, native_id=ref.native_id)

    # ------------------------------------------------------------ cancel
    def cancel(self, refs: Sequence[JobRef]) -> None:
        ex: Any = None
        for ref in refs:
            folder = Path(ref.job_dir)
            if not ref.native_id or exit_record(folder / EXIT) is not None:
                continue  # never reached PSI/J, or already ended
            if folder.is_dir():
                (folder / CANCEL).touch()
            ex = ex or self.executor()
            native = str(ref.native_id)
            if is_batch(ex):
                self._batch_cancel(ex, native)
            elif self.executor_name == "local":
                kill_local(ref)
            else:
                psij = _psij()
                job = psij.Job()
                try:
                    ex.attach(job, native)
                    ex.cancel(job)
                except Exception as exc:  # noqa: BLE001
                    raise BackendError(f"psij executor {self.executor_name!r}: cancel {native}: "
                                       f"{first_line(exc)}") from None

    def _batch_cancel(self, ex: Any, native: str) -> None:
        """The executor's cancel command (``scancel``, ``qdel``, ``bkill``); a job that ended meanwhile is fine."""
        argv = list(ex.get_cancel_command(native))
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise BackendError(f"psij executor {self.executor_name!r}: {argv[0]}: {first_line(exc)}") from None
        if proc.returncode == 0:
            return
        from psij.executors.batch.batch_scheduler_executor import InvalidJobStateError

        try:
            ex.process_cancel_command_output(proc.returncode, proc.stdout + proc.stderr)
        except InvalidJobStateError:
            return
        except Exception as exc:  # noqa: BLE001 - SubmitException
            raise BackendError(f"psij executor {self.executor_name!r}: cancel {native}: "
                               f"{first_line(getattr(exc, 'message', None) or exc)}") from None
