"""The backend contract. A backend plans (a dry run that shows exactly what would run), submits a plan,
reports the state of many jobs in one call, cancels, and says where logs are."""

from __future__ import annotations

import json
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, NoReturn

from suanli.jobs.state import JobState

if TYPE_CHECKING:  # types only: config validates backend names through the registry, which loads backends
    from suanli.adapters import Adapter
    from suanli.compute.config import ClusterConfig, PartitionConfig
    from suanli.jobs.spec import JobSpec

def current_user() -> str:
    """The login name as getpass.getuser() finds it ($LOGNAME, $USER, $LNAME, $USERNAME, then the password
    database), without importing getpass; the uid when nothing names it."""
    for var in ("LOGNAME", "USER", "LNAME", "USERNAME"):
        name = os.environ.get(var)
        if name:
            return name
    try:
        import pwd

        return pwd.getpwuid(os.getuid()).pw_name
    except (ImportError, KeyError, OSError):
        return str(os.getuid())


TaskKey = tuple[str, int | None]  # (suanli job id, array task or None)
#: Where the usage of a backend's ended jobs comes from: ``registry`` (the start and end times status_many
#: reported, times what suanli allocated at submission) or ``sacct`` (Slurm's accounting database).
UsageSource = Literal["registry", "sacct"]
#: Raises a one-line ``file:line: section.key: message`` error; the path is relative to the backend's section.
ConfigFail = Callable[[tuple[str | int, ...], str], NoReturn]


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
    #: The routing decision when ``--cluster auto`` chose this plan (``Routed.to_json``), else None.
    routing: dict[str, Any] | None = None
    #: The id ``submit`` will return, when the backend knows it before submitting (local: the job id). A quota
    #: reservation is then made with it, and needs no second write to record it once the job is submitted.
    native_id: str | None = None

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
            **({"routing": self.routing} if self.routing else {}),
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


@dataclass(frozen=True)
class StartEstimate:
    """When a backend expects a planned job to start (routing asks every candidate before it picks)."""

    at: float | None  # epoch seconds; None when the backend cannot tell
    source: str  # how it knows: "sbatch --test-only", "free resources", "free cores", "unknown"
    #: The scheduler's own refusal of this exact request (for example a node count the partition cannot hold);
    #: the candidate is then excluded with this message.
    refused: str | None = None


class Backend(ABC):
    """Base of every backend. Subclasses are constructed per cluster and must be cheap to create."""

    name: ClassVar[str]
    #: First and largest status polling interval while waiting (the settings can lower the ceiling).
    poll_initial_s: ClassVar[float] = 1.0
    poll_max_s: ClassVar[float] = 30.0
    #: How ended jobs are booked in the ledger (see ``UsageSource``); the registry suits any backend whose
    #: status_many reports start and end times, so only a backend with its own accounting changes it.
    usage_source: ClassVar[UsageSource] = "registry"
    #: The keys of this backend's section in a cluster config (``<backend>: {key: value}``) and the type of
    #: each value; ``config_section`` checks them. The validated section is ``ClusterConfig.options``.
    options: ClassVar[Mapping[str, type | tuple[type, ...]]] = {}
    #: What the backend runs beyond one plain job; ``compute/fit.check_capabilities`` refuses the rest (exit 2).
    capabilities: ClassVar[frozenset[str]] = frozenset({"arrays", "requeue", "dependencies", "functions"})

    @classmethod
    def config_section(cls, values: Mapping[str, Any], fail: ConfigFail) -> Mapping[str, Any]:
        """Validate this backend's config section (``{}`` when the file has none) and return what the backend
        reads later. The default checks ``options``: unknown keys and values of the wrong type are refused
        through ``fail``, which names the file and line. Override it for more (required keys, ranges, paths)."""
        allowed = ", ".join(cls.options) or "none"
        for key, value in values.items():
            want = cls.options.get(str(key))
            if want is None:
                fail((str(key),), f"unknown key {key!r}; allowed keys: {allowed}")
            kinds = want if isinstance(want, tuple) else (want,)
            if float in kinds:
                kinds = (*kinds, int)  # YAML reads 5 as an int where a number of seconds is meant
            if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
                names = " or ".join(k.__name__ for k in kinds)
                fail((str(key),), f"{value!r} is not a {names}")
        return dict(values)

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
        """stdout and stderr files of one task: the spec's own paths where it named them (kept by the plan in
        ``layout["stdio"]``), else the job folder's."""
        from suanli.compute.logs import stdio_paths

        base = Path(ref.job_dir)
        stem = "job" if task is None else f"task-{task}"
        out, err = stdio_paths(ref.layout, ref.native_id or ref.job_id, task)
        return out or base / f"{stem}.out", err or base / f"{stem}.err"

    def result_path(self, ref: JobRef, task: int | None) -> Path:
        base = Path(ref.job_dir)
        return base / ("result.pkl" if task is None else f"result-{task}.pkl")

    def expected_start(self, plan: Plan, sub: Submission, timeout_s: float) -> StartEstimate:
        """When this plan would start if submitted now, asked within ``timeout_s`` and without submitting it.
        Raise BackendError when the cluster cannot be reached (routing then excludes it as unreachable). The
        default cannot tell: such a candidate counts as later than any known start."""
        return StartEstimate(None, "unknown")
