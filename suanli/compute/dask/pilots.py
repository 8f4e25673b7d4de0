"""The pilot jobs of one sweep: recorded in the registry before sbatch, their sbatch and scancel argv, and the
dask-jobqueue job class that submits them. Apart from ``engine.py`` (the sweep driver) because this is the one
place that talks to Slurm for the dask engine."""

from __future__ import annotations

import asyncio
import os
import secrets
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Protocol, cast

from suanli.compute import script as sh
from suanli.compute.dask.request import MapClient, PilotRequest
from suanli.compute.jobenv import setup_lines
from suanli.compute.payload import suanli_pythonpath
from suanli.compute.store import JobRow
from suanli.jobs.state import JobState

_ID_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"


class _Bucket(Protocol):
    def take(self) -> None: ...


class SlurmRunner(Protocol):
    """What the pilots use of the cluster's Slurm backend (this engine may not import it): the submission rate
    limit every Slurm job of the process shares, and the runner that retries a controller that was not reached."""

    bucket: _Bucket

    def run(self, argv: list[str], what: str, input_text: str | None = None) -> subprocess.CompletedProcess[str]: ...


def _new_id() -> str:
    first = secrets.choice(_ID_ALPHABET[:23])
    return first + "".join(secrets.choice(_ID_ALPHABET) for _ in range(7))


# ---------------------------------------------------------------- pilot jobs
class Pilots:
    """The pilot jobs of one sweep: recorded in the registry before sbatch, cancelled on the way out."""

    def __init__(self, client: MapClient, req: PilotRequest, sweep_id: str, fn_name: str) -> None:
        self.client = client
        self.req = req
        self.sweep_id = sweep_id
        self.name = req.sub.spec.name or f"dask-worker:{fn_name}"
        self.ids: list[str] = []
        self.refused: list[str] = []  # sbatch's own words for each pilot it refused
        self.lock = threading.Lock()
        self.closing = threading.Event()
        self.cancelled: set[str] = set()
        self.settler: threading.Thread | None = None
        conf = req.sub.cluster.slurm.get("conf")
        self.env_prefix = ["env", f"SLURM_CONF={conf}"] if conf else []
        self.resource_args = resource_options(req)

    def job_dir(self, pilot_id: str) -> Path:
        return self.client.store.root / "jobs" / pilot_id

    def sbatch_argv(self, pilot_id: str) -> list[str]:
        """Every scheduler option on the command line, none in the script."""
        sub = self.req.sub
        res = sub.spec.resources
        d = self.job_dir(pilot_id)
        argv = ["sbatch", "--parsable", f"--job-name=suanli-dask-{self.sweep_id}",
                f"--partition={sub.partition.name}", "--nodes=1", "--ntasks=1", f"--cpus-per-task={res.cpus_per_task}",
                "--no-requeue", f"--output={d}/job.out", f"--error={d}/job.err", *self.resource_args]
        return argv

    def sbatch(self, pilot_id: str, script_path: str) -> str:
        """Submit one pilot as the Slurm backend submits any job: through its token bucket and its runner (its
        SLURM_CONF, a bounded retry when the controller was not reached); sbatch's output."""
        runner = cast(SlurmRunner, self.req.backend)
        runner.bucket.take()
        return runner.run([*self.sbatch_argv(pilot_id), script_path], f"pilot {pilot_id}").stdout

    def cancel_argv(self) -> list[str]:
        return [*self.env_prefix, "scancel"]

    def prologue(self) -> list[str]:
        """Shell lines before the worker starts: exports (quoted) and the configured setup lines."""
        sub = self.req.sub
        spec = sub.spec
        env: dict[str, str] = {"SUANLI_CLUSTER": sub.cluster.name, "SUANLI_BACKEND": "slurm",
                               "SUANLI_ADAPTER": sub.adapter.name, "SUANLI_SWEEP_ID": self.sweep_id}
        # The workers unpickle the caller's functions: they need the caller's import path.
        own_prefixes = tuple({sys.prefix, sys.base_prefix, sys.exec_prefix})
        paths = [p for p in sys.path if p and os.path.isdir(p) and not p.startswith(own_prefixes)
                 and "dask-scratch-space" not in p]
        current = os.environ.get("PYTHONPATH", "").split(os.pathsep)
        own = suanli_pythonpath().get("PYTHONPATH", "").split(os.pathsep)
        env["PYTHONPATH"] = os.pathsep.join(p for p in dict.fromkeys([*own, *paths, *current]) if p)
        env.update(sub.adapter.environment(spec.resources))
        env.update(spec.env)
        lines = [sh.export_lines(env), f"cd {sh.quote(os.path.abspath(spec.workdir or os.getcwd()))} || exit 1"]
        lines += setup_lines(sub)
        return lines

    def record(self, pilot_id: str, script: str) -> None:
        """Insert the pilot's row (PENDING, Submitting) and its folder before sbatch runs."""
        sub = self.req.sub
        s = sub.spec
        d = self.job_dir(pilot_id)
        d.mkdir(parents=True, exist_ok=True)
        (d / "job.sh").write_text(script)
        row = JobRow(
            id=pilot_id, name=self.name, cluster=sub.cluster.name, backend="slurm", native_id=None,
            kind="dask-worker", partition=sub.partition.name, account=s.account, user=sub.user,
            submitted_at=time.time(), job_dir=str(d),
            meta={"resources": s.resources.to_dict(), "array": None, "dependencies": [], "max_restarts": 0,
                  "qos": s.qos, "constraint": s.constraint, "adapter": sub.adapter.name, "layout": {},
                  "engine": "dask", "sweep": self.sweep_id},
            done=False,
        )
        self.client.store.insert(row, [None], JobState.PENDING, "Submitting")
        with self.lock:
            self.ids.append(pilot_id)

    def submitted(self, pilot_id: str, native: str) -> None:
        self.client.store.set_native_id(pilot_id, native)

    def failed(self, pilot_id: str, why: str) -> None:
        """sbatch refused: nothing refused stays recorded, but the watchdog learns why."""
        self.client.store.delete(pilot_id)
        with self.lock:
            if pilot_id in self.ids:
                self.ids.remove(pilot_id)
            self.refused.append(why)

    def rows(self) -> list[JobRow]:
        with self.lock:
            ids = list(self.ids)
        return self.client.store.query(ids=ids) if ids else []

    def cancel_all(self) -> None:
        """scancel every pilot that has a Slurm id, is not known to be over and was not cancelled yet (one
        call)."""
        rows = [r for r in self.rows() if r.native_id and not r.done and r.id not in self.cancelled]
        self.cancelled.update(r.id for r in rows)
        if rows:
            try:
                self.client.cancel_many([(r, None) for r in rows])
            except Exception:  # noqa: BLE001 - best effort on the way out; the fallback below retries once
                subprocess_scancel(self.cancel_argv(), [r.native_id for r in rows if r.native_id])

    def settle(self, timeout: float) -> None:
        """Refresh the pilots' rows until their final states are recorded, at most ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        delay = 0.3
        while True:
            try:
                rows = [r for r in self.rows() if not r.done]
                if not rows:
                    return
                self.client.refresh(rows)
            except Exception:  # noqa: BLE001 - (a closed registry, sacct down) a later `suanli status` does it
                return
            if time.monotonic() + delay > deadline:
                return
            time.sleep(delay)
            delay = min(delay * 1.5, 2.0)

    def settle_later(self, timeout: float) -> None:
        """``settle`` in a daemon thread, so the sweep returns at once and the interpreter can still exit
        (an exit cuts it short; the next ``suanli status`` or ``accounting sync`` finishes the job)."""
        if not any(not r.done for r in self.rows()):
            return
        self.settler = threading.Thread(target=self.settle, args=(timeout,), daemon=True,
                                        name=f"suanli-dask-settle-{self.sweep_id}")
        self.settler.start()

    def stderr_tail(self) -> str:
        for pid in reversed(self.rows()):
            try:
                lines = (Path(pid.job_dir) / "job.err").read_text(errors="replace").strip().splitlines()
            except OSError:
                continue
            if lines:
                return " | ".join(lines[-5:])
        return ""


#: The sbatch options of a plan that a pilot takes over as they are: the rest (job name, tasks, logs, requeue,
#: signal) the pilot sets itself.
PILOT_OPTIONS = ("--account=", "--qos=", "--constraint=", "--mem=", "--time=", "--gres=")


def resource_options(req: PilotRequest) -> list[str]:
    """The pilot's resource options as the Slurm backend renders them for this submission (this layer may not
    import the backend's module): taken from its plan, in its order."""
    return [a for a in req.backend.plan(req.sub).argv if a.startswith(PILOT_OPTIONS)]


def subprocess_scancel(prefix: list[str], ids: list[str]) -> None:
    import subprocess

    if ids:
        subprocess.run([*prefix, *ids], capture_output=True, timeout=60)


def _job_class(pilots: Pilots) -> type:
    """A SLURMJob that records itself in the suanli registry and keeps options off the ``#SBATCH`` header."""
    import importlib

    base: Any = importlib.import_module("dask_jobqueue.slurm").SLURMJob

    class SuanliSLURMJob(base):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.job_header = "# scheduler options are on the sbatch command line"
            self.suanli_id = _new_id()
            self.submit_command = shlex.join(pilots.sbatch_argv(self.suanli_id))
            self.cancel_command = shlex.join(pilots.cancel_argv())
            prologue = [*pilots.prologue(), f"export SUANLI_JOB_ID={sh.quote(self.suanli_id)}"]
            self._job_script_prologue = prologue

        async def _submit_job(self, script_filename: str) -> str:
            if pilots.closing.is_set():
                raise RuntimeError("the sweep is closing; no new pilot job")
            pilots.record(self.suanli_id, self.job_script())
            try:
                out = await asyncio.get_running_loop().run_in_executor(None, pilots.sbatch, self.suanli_id,
                                                                       script_filename)
                native = self._job_id_from_submit_output(out)
            except BaseException as exc:
                lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
                error_lines = [ln for ln in lines if "error" in ln.lower()]
                pilots.failed(self.suanli_id, (error_lines or lines or [type(exc).__name__])[-1])
                raise
            pilots.submitted(self.suanli_id, native)
            if pilots.closing.is_set():  # sbatch raced with the shutdown: no orphan
                subprocess_scancel(pilots.cancel_argv(), [native])
            return out

    return SuanliSLURMJob


def pilot_job_options(req: PilotRequest) -> dict[str, Any]:
    """What each pilot's ``SLURMJob`` is built with. ``memory`` is the worker's one ``--memory-limit`` (no
    second one in extra arguments); the same figure reaches sbatch as ``--mem`` (``Pilots.sbatch_argv``)."""
    res = req.sub.spec.resources
    return {"cores": res.cpus_per_task, "processes": 1, "memory": f"{res.memory_mb}MiB",
            "python": sh.quote(sys.executable), "interface": req.interface}
