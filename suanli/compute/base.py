"""The backend contract. A backend plans (a dry run that shows exactly what would run), submits a plan,
reports the state of many jobs in one call, cancels, and says where logs are."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from suanli.adapters import Adapter
from suanli.compute.config import ClusterConfig, PartitionConfig
from suanli.jobs.spec import JobSpec
from suanli.jobs.state import JobState

TaskKey = tuple[str, int | None]  # (suanli job id, array task or None)


@dataclass(frozen=True)
class DependencyRef:
    kind: str  # afterok | afterany
    job_id: str
    native_id: str | None
    job_dir: str


@dataclass(frozen=True)
class Submission:
    """A spec with everything resolved: its id, partition, adapter, job folder, defaults applied."""

    job_id: str
    spec: JobSpec
    cluster: ClusterConfig
    partition: PartitionConfig
    adapter: Adapter
    job_dir: Path
    user: str
    dependencies: tuple[DependencyRef, ...] = ()

    @property
    def tasks(self) -> list[int | None]:
        return list(self.spec.array.indices) if self.spec.array else [None]


@dataclass
class Plan:
    """Exactly what a submission would execute; printable, JSON-able, and what ``submit`` acts on."""

    job_id: str
    cluster: str
    backend: str
    job_dir: str
    argv: list[str]
    script: str | None = None
    script_name: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

    def render(self) -> str:
        out = [f"# backend: {self.backend}  cluster: {self.cluster}  job: {self.job_id}",
               f"# job folder: {self.job_dir}"]
        if self.script is not None:
            out += [f"# --- {self.script_name or 'script'} ---", self.script.rstrip("\n"), "# --- end of script ---"]
        import shlex

        out.append("# command: " + shlex.join(self.argv))
        for name, data in self.files.items():
            out.append(f"# file: {name} ({len(data)} bytes)")
        for k, v in self.details.items():
            out.append(f"# {k}: {json.dumps(v, default=str)}")
        return "\n".join(out) + "\n"

    def write_job_dir(self) -> Path:
        """Create the job folder with the script and payload files; on failure leave no folder behind."""
        import shutil

        job_dir = Path(self.job_dir)
        try:
            job_dir.mkdir(parents=True, exist_ok=False)
            for name, data in self.files.items():
                (job_dir / name).write_bytes(data)
            if self.script is not None:
                script = job_dir / (self.script_name or "job.sh")
                script.write_text(self.script)
                script.chmod(0o755)
        except OSError as exc:
            shutil.rmtree(job_dir, ignore_errors=True)
            from suanli.errors import BackendError

            raise BackendError(f"{self.backend}: cannot write the job folder {job_dir}: {exc.strerror}") from None
        return job_dir

    def to_json(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "cluster": self.cluster,
            "backend": self.backend,
            "job_dir": self.job_dir,
            "argv": self.argv,
            "script": self.script,
            "env": self.env,
            "files": {k: len(v) for k, v in self.files.items()},
            "details": self.details,
        }


@dataclass(frozen=True)
class JobRef:
    """What status/cancel need to find a job on its backend. ``layout`` is what the backend's plan asked the
    registry to keep (``Plan.details["layout"]``), for example how a large array was split."""

    job_id: str
    native_id: str | None
    job_dir: str
    tasks: tuple[int | None, ...]
    layout: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class NativeStatus:
    state: JobState
    reason: str | None = None
    exit_code: int | None = None
    started_at: float | None = None
    ended_at: float | None = None
    restarts: int = 0
    native_id: str | None = None
    #: Earlier attempts of a requeued task, each {"started_at", "ended_at", "state", "exit_code"} (each is
    #: booked as its own usage record); backends that do not keep them leave it empty.
    attempts: tuple[dict[str, Any], ...] = ()


class Backend(ABC):
    """Base of every backend. Subclasses are constructed per cluster and must be cheap to create."""

    name: ClassVar[str]
    #: First and largest status polling interval while waiting (the settings can lower the ceiling).
    poll_initial_s: ClassVar[float] = 1.0
    poll_max_s: ClassVar[float] = 30.0

    def __init__(self, cluster: ClusterConfig) -> None:
        self.cluster = cluster

    @abstractmethod
    def plan(self, sub: Submission) -> Plan:
        """Build everything that would be executed; no side effects."""

    @abstractmethod
    def submit(self, plan: Plan) -> str:
        """Write the plan's files, hand it to the scheduler, return the native id. Raise BackendError on refusal."""

    @abstractmethod
    def status_many(self, refs: Sequence[JobRef]) -> dict[TaskKey, NativeStatus]:
        """States of every task of every ref, from ONE call to the scheduler."""

    @abstractmethod
    def cancel(self, refs: Sequence[JobRef]) -> None:
        """Stop the jobs (or the named array tasks)."""

    def find_submitted(self, ref: JobRef, submitted_at: float) -> str | None:
        """The native id of a job whose submitter died after handing it over but before recording the id, or
        None when the scheduler never got it (the job then ends FAILED SubmitLost). Raise BackendError when the
        scheduler cannot tell yet; the question is asked again on the next status."""
        return None

    def array_cap(self) -> int | None:
        """The most tasks one array may have here when the cluster config sets no ``max_array_size``."""
        return None

    def log_paths(self, ref: JobRef, task: int | None) -> tuple[Path, Path]:
        """stdout and stderr files of one task."""
        base = Path(ref.job_dir)
        stem = "job" if task is None else f"task-{task}"
        return base / f"{stem}.out", base / f"{stem}.err"

    def result_path(self, ref: JobRef, task: int | None) -> Path:
        base = Path(ref.job_dir)
        return base / ("result.pkl" if task is None else f"result-{task}.pkl")
