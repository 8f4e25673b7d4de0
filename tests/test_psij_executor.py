"""suanli as a PSI/J executor (suanli/interop/psij.py), driven through PSI/J's own entry point
``JobExecutor.get_instance("suanli")`` on the local cluster and on the Slurm test cluster."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_until

psij = pytest.importorskip("psij", reason="PSI/J is not installed: pip install 'suanli[psij]'")
from psij import (  # noqa: E402
    InvalidJobException,
    Job,
    JobAttributes,
    JobExecutor,
    JobSpec,
    JobState,
    ResourceSpecV1,
)

from suanli.interop.psij import STATES, SuanliJobExecutor  # noqa: E402
from suanli.jobs.state import JobState as SuanliState  # noqa: E402


def executor() -> SuanliJobExecutor:
    ex = JobExecutor.get_instance("suanli")
    assert isinstance(ex, SuanliJobExecutor)  # the one class, not a second copy loaded by PSI/J's plugin loader
    return ex


def run(ex: JobExecutor, spec: JobSpec, timeout: float = 60) -> tuple[Job, Any]:
    job = Job(spec)
    ex.submit(job)
    status = job.wait(timeout=timedelta(seconds=timeout))
    assert status is not None, f"job {job.native_id} did not end within {timeout} s"
    return job, status


# ---------------------------------------------------------------- discovery
def test_psij_finds_the_suanli_executor_from_outside_the_repository(tmp_path: Path) -> None:
    """The descriptor in psij-descriptors/ is found by PSI/J's sys.path scan in a fresh interpreter whose working
    folder is not the repository (the editable install's .pth, or site-packages for a wheel)."""
    r = subprocess.run([sys.executable, "-c", "from psij import JobExecutor; "
                        "print(type(JobExecutor.get_instance('suanli')).__module__)"],
                       capture_output=True, text=True, cwd=tmp_path, timeout=60,
                       env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "suanli.interop.psij"


def test_every_terminal_and_active_suanli_state_maps_to_one_psij_state() -> None:
    assert set(STATES) == set(SuanliState) - {SuanliState.UNKNOWN}
    assert STATES[SuanliState.CANCELLED] is JobState.CANCELED
    assert {STATES[s] for s in SuanliState if s.is_terminal and s not in (SuanliState.COMPLETED,
                                                                          SuanliState.CANCELLED)} == {JobState.FAILED}


# ---------------------------------------------------------------- the local cluster
def test_local_echo_completes_and_writes_its_stdout_file(home: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    out.write_text("stale text the job must replace")
    job, status = run(executor(), JobSpec("/bin/echo", ["-n", "_x_"], stdout_path=out))
    assert status.state == JobState.COMPLETED and status.exit_code == 0
    assert out.read_text() == "_x_"
    assert (home / "jobs" / str(job.native_id)).is_dir()  # native_id is the suanli job id


def test_local_stdin_environment_and_directory(home: Path, tmp_path: Path) -> None:
    (tmp_path / "in.txt").write_text("from stdin\n")
    spec = JobSpec("/bin/sh", ["-c", 'cat; echo "$A $B"; pwd'], directory=tmp_path, stdin_path="in.txt",
                   stdout_path="out.txt", environment={"A": "a", "B": 2})  # type: ignore[dict-item]
    _, status = run(executor(), spec)
    assert status.state == JobState.COMPLETED
    assert (tmp_path / "out.txt").read_text() == f"from stdin\na 2\n{tmp_path}\n"


def test_local_failing_job_is_failed_with_its_exit_code(home: Path) -> None:
    _, status = run(executor(), JobSpec("/bin/sh", ["-c", "exit 3"]))
    assert status.state == JobState.FAILED and status.exit_code == 3
    assert "FAILED" in (status.message or "")


def test_local_cancel_ends_canceled(home: Path) -> None:
    ex = executor()
    job = Job(JobSpec("/bin/sleep", ["60"]))
    ex.submit(job)
    job.wait(target_states=[JobState.ACTIVE])
    start = time.monotonic()
    job.cancel()
    status = job.wait(timeout=timedelta(seconds=30))
    assert status is not None and status.state == JobState.CANCELED
    assert time.monotonic() - start < 30


def test_attach_from_a_new_executor_and_to_a_job_suanli_submitted(home: Path) -> None:
    ex = executor()
    job = Job(JobSpec("/bin/sleep", ["1"]))
    ex.submit(job)
    assert job.native_id is not None
    other = Job()
    executor().attach(other, job.native_id)
    status = other.wait(timeout=timedelta(seconds=60))
    assert status is not None and status.state == JobState.COMPLETED

    from suanli.api import Client

    c = Client()
    native = c.submit(["sh", "-c", "exit 4"]).id
    c.close()
    third = Job()
    executor().attach(third, native)
    status = third.wait(timeout=timedelta(seconds=60))
    assert status is not None and status.state == JobState.FAILED and status.exit_code == 4
    with pytest.raises(InvalidJobException, match="no job 'nosuchid'"):
        executor().attach(Job(), "nosuchid")


def test_callbacks_fire_once_per_state_change(home: Path) -> None:
    ex = executor()
    seen: dict[str, list[JobState]] = {}
    lock = threading.Lock()

    def record(job: Job, status: Any) -> None:
        with lock:
            seen.setdefault(job.id, []).append(status.state)

    ex.set_job_status_callback(record)
    jobs = [Job(JobSpec("/bin/sleep", ["0.5"])), Job(JobSpec("/bin/false"))]
    for j in jobs:
        ex.submit(j)
    for j in jobs:
        j.wait()
    wait_until(lambda: all(len(seen.get(j.id, [])) >= 3 for j in jobs), f"the final callbacks: {seen}", timeout=10)
    assert seen[jobs[0].id] == [JobState.QUEUED, JobState.ACTIVE, JobState.COMPLETED]
    assert seen[jobs[1].id] == [JobState.QUEUED, JobState.ACTIVE, JobState.FAILED]


def test_one_poller_thread_and_one_refresh_per_poll_for_twenty_jobs(home: Path) -> None:
    ex = executor()
    calls: list[int] = []
    refresh = ex.client.refresh

    def counting(rows: Any, strict: bool = False) -> Any:
        calls.append(len(rows))
        return refresh(rows, strict)

    ex.client.refresh = counting  # type: ignore[method-assign]
    before = threading.active_count()
    jobs = [Job(JobSpec("/bin/sleep", ["2"])) for _ in range(20)]
    for j in jobs:
        ex.submit(j)
    pollers = [t for t in threading.enumerate() if t.name == "suanli-psij-poller"]
    assert len(pollers) == 1 and threading.active_count() - before == 1
    for j in jobs:
        status = j.wait(timeout=timedelta(seconds=120))
        assert status is not None and status.state == JobState.COMPLETED
    assert max(calls) == 20  # every followed job in one refresh
    wait_until(lambda: ex.poller_thread is None, "the poller to stop with no job left", timeout=10)
    assert not [t for t in threading.enumerate() if t.name == "suanli-psij-poller"]


@pytest.mark.parametrize("change, message", [
    (lambda s: setattr(s.attributes, "custom_attributes", {"suanli.nope": 1}), "unknown key 'suanli.nope'"),
    (lambda s: setattr(s.attributes, "reservation_id", "r1"), "reservation_id"),
    (lambda s: setattr(s, "launcher", "aprun"), "valid launchers: single, multiple, srun, mpirun"),
    (lambda s: setattr(s, "launcher", "srun"), "'srun' needs a Slurm cluster"),
    (lambda s: setattr(s.resources, "exclusive_node_use", True), "exclusive_node_use"),
    (lambda s: setattr(s.attributes, "queue_name", "nopart"), "no partition 'nopart'"),
], ids=["custom", "reservation", "launcher", "srun-local", "exclusive", "queue"])
def test_what_suanli_cannot_honour_is_refused_and_nothing_is_submitted(
        home: Path, change: Callable[[JobSpec], None], message: str) -> None:
    spec = JobSpec("/bin/true", attributes=JobAttributes(), resources=ResourceSpecV1())
    change(spec)
    ex = executor()
    with pytest.raises(InvalidJobException, match=message):
        ex.submit(Job(spec))
    assert ex.client.store.query() == []


# ---------------------------------------------------------------- the Slurm test cluster
@pytest.mark.slurm
def test_slurm_echo_failure_and_latency_of_three_trivial_jobs(slurm: Any, tmp_path: Path) -> None:
    ex = executor()
    out = tmp_path / "out.txt"
    job, status = run(ex, JobSpec("/bin/echo", ["-n", "_x_"], stdout_path=out))
    assert status.state == JobState.COMPLETED and out.read_text() == "_x_"
    assert slurm.get_job(job.native_id).info().native_id  # a Slurm job id behind the suanli id
    _, status = run(ex, JobSpec("/bin/sh", ["-c", "exit 5"]))
    assert status.state == JobState.FAILED and status.exit_code == 5

    start = time.monotonic()
    jobs = [Job(JobSpec("/bin/true")) for _ in range(3)]
    for j in jobs:
        ex.submit(j)
    for j in jobs:
        s = j.wait(timeout=timedelta(seconds=60))
        assert s is not None and s.state == JobState.COMPLETED
    took = time.monotonic() - start
    print(f"three trivial jobs through suanli's PSI/J executor on Slurm: {took:.1f} s end to end")
    assert took < 16  # PSI/J's own slurm executor, at its default 30 s queue poll, took 32 s (issue 14)


@pytest.mark.slurm
def test_slurm_srun_runs_one_process_per_task_and_cancel(slurm: Any, tmp_path: Path) -> None:
    ex = executor()
    out = tmp_path / "out.txt"
    spec = JobSpec("/bin/sh", ["-c", 'echo "rank $SLURM_PROCID"; wc -l <"$PSIJ_NODEFILE"'], stdout_path=out,
                   launcher="srun", resources=ResourceSpecV1(process_count=3))
    _, status = run(ex, spec)
    assert status.state == JobState.COMPLETED, out.read_text()
    lines = sorted(out.read_text().split("\n"))
    assert [x for x in lines if x.startswith("rank")] == ["rank 0", "rank 1", "rank 2"]
    assert [x.strip() for x in lines if x.strip().isdigit()] == ["3", "3", "3"]

    job = Job(JobSpec("/bin/sleep", ["60"]))
    ex.submit(job)
    job.wait(target_states=[JobState.ACTIVE])
    job.cancel()
    status = job.wait(timeout=timedelta(seconds=60))
    assert status is not None and status.state == JobState.CANCELED


def test_a_followed_job_removed_from_the_registry_ends_failed_not_followed_forever(home: Path) -> None:
    from suanli.api import Client

    c = Client()
    native = c.submit(["sleep", "30"]).id
    job = Job()
    ex = executor()
    ex.attach(job, native)
    job.wait(target_states=[JobState.ACTIVE])
    c.cancel(native, None)
    c.store.delete(native)
    c.close()
    status = job.wait(timeout=timedelta(seconds=30))
    assert status is not None and status.state == JobState.FAILED
    assert "no longer in the registry" in (status.message or "")
    wait_until(lambda: ex.poller_thread is None, "the poller to stop", timeout=10)
