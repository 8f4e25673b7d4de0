"""Trust issue, items 1, 2, 8 and 14: submitters killed mid-submit, bounded arrays with linear status, sys.exit
in a map item, one usage record per attempt. Real processes, the real registry, ledger and Slurm test cluster."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import run_cli, wait_until

from suanli import JobState
from suanli.accounting.ledger import Ledger
from suanli.accounting.quota import Quota
from suanli.compute.store import Store
from suanli.errors import JobFailedError


def killed_submit(tmp_path: Path, point: str, *args: str) -> str:
    """Run `suanli submit ARGS`, SIGKILL it at the test hook ``point``; return the id of the row it left."""
    pause = tmp_path / f"pause-{point}"
    pause.unlink(missing_ok=True)
    env = dict(os.environ, SUANLI_TEST_PAUSE_AT=point, SUANLI_TEST_PAUSE_FILE=str(pause))
    proc = subprocess.Popen([sys.executable, "-m", "suanli", "submit", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: pause.exists() or proc.poll() is not None, f"the submitter to reach {point}")
        assert proc.poll() is None, proc.communicate()
    finally:
        proc.kill()
        proc.communicate()
    store = Store()
    [row] = store.unsubmitted()
    store.close()
    return row.id


def status_json(job: str) -> list[dict[str, Any]]:
    r = run_cli("status", job, "--json")
    assert r.returncode == 0, r.stderr
    out: list[dict[str, Any]] = json.loads(r.stdout)
    return out


# ---------------------------------------------------------------- item 1: a submitter killed mid-submit
def test_submitter_killed_before_the_backend_fails_submitlost_and_frees_quota(home: Path, tmp_path: Path) -> None:
    ledger = Ledger(None, home)
    ledger.set_quota(Quota(account="kk", cpu_hours=100000), "admin")
    job = killed_submit(tmp_path, "after-insert", "-A", "kk", "-t", "1m", "--array", "0-99", "--", "true")
    assert [r["job_id"] for r in ledger.reservations()] == [job]
    infos = status_json(job)
    assert {(i["state"], i["reason"]) for i in infos} == {("FAILED", "SubmitLost")}
    assert ledger.reservations() == []
    assert ledger.totals()["records"] == 0  # it ran nothing, so nothing is booked
    r = run_cli("wait", job, timeout=30)
    assert r.returncode == 1
    ledger.close()


def test_submitter_killed_after_the_backend_is_adopted(home: Path, tmp_path: Path) -> None:
    ledger = Ledger(None, home)
    ledger.set_quota(Quota(account="kk", cpu_hours=100000), "admin")
    job = killed_submit(tmp_path, "after-submit", "-A", "kk", "-t", "1m", "--array", "0-3", "--", "true")
    r = run_cli("wait", job, timeout=60)  # `wait` adopts the job the runner is running, then sees it end
    assert r.returncode == 0, r.stdout + r.stderr
    assert {i["state"] for i in status_json(job)} == {"COMPLETED"}
    assert ledger.reservations() == []
    assert ledger.totals()["records"] == 4
    ledger.close()


def test_cancel_of_a_row_left_submitting_ends_it(client: Any, tmp_path: Path) -> None:
    job = killed_submit(tmp_path, "after-insert", "-t", "1m", "--", "sleep", "30")
    client.get_job(job).cancel()
    [info] = status_json(job)
    assert (info["state"], info["reason"]) == ("CANCELLED", "SubmitLost")
    # The CLI's cancel ends it the same way, and says the cancel (not "had already ended").
    job1 = killed_submit(tmp_path, "after-insert", "-t", "1m", "--", "sleep", "30")
    r = run_cli("cancel", job1)
    assert r.returncode == 0 and "cancel requested" in r.stderr, r.stderr
    assert (status_json(job1)[0]["state"], status_json(job1)[0]["reason"]) == ("CANCELLED", "SubmitLost")
    # Adopted, then cancelled: the job the runner runs is stopped and ends CANCELLED.
    job2 = killed_submit(tmp_path, "after-submit", "-t", "1m", "--", "sleep", "30")
    assert run_cli("cancel", job2).returncode == 0
    wait_until(lambda: status_json(job2)[0]["state"] == "CANCELLED", "the adopted job to end CANCELLED")


def test_a_deleted_job_folder_fails_the_job_and_stops_its_tasks(client: Any, home: Path) -> None:
    job = client.submit(["sleep", "60"], time="5m")
    state_file = home / "jobs" / job.id / "state.json"
    wait_until(lambda: job.status() is JobState.RUNNING, "the job to run")
    pid = json.loads(state_file.read_text())["tasks"]["main"]["pid"]
    shutil.rmtree(home / "jobs" / job.id)
    assert job.wait(timeout=30) is JobState.FAILED
    assert job.info().reason == "JobDirLost"

    def gone() -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False

    wait_until(gone, "the task of the deleted job to stop", timeout=15)


# ---------------------------------------------------------------- item 2: bounded arrays, linear status
def test_array_size_is_bounded_before_anything_is_allocated(home: Path, tmp_path: Path) -> None:
    for spec in ("0-100000", "0-100000000", "0-99999999999999999999"):
        t0 = time.monotonic()
        r = run_cli("submit", "--dry-run", "--array", spec, "--", "true")
        assert r.returncode == 2, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and "array" in r.stderr and "Traceback" not in r.stderr
        assert time.monotonic() - t0 < 20
    r = run_cli("submit", "--array", "0-100000", "--", "true")
    assert r.returncode == 2 and "100000" in r.stderr
    assert not (home / "jobs").exists() or not any((home / "jobs").iterdir())
    # A cluster's own cap, validated where it is written.
    cfg = tmp_path / "clusters"
    cfg.mkdir()
    (cfg / "small.yaml").write_text("name: small\nbackend: local\nmax_array_size: 5\npartitions:\n  - {name: local}\n")
    env = {"SUANLI_CONFIG": str(cfg)}
    r = run_cli("submit", "-c", "small", "--dry-run", "--array", "0-5", "--", "true", env=env)
    assert r.returncode == 2 and "allows (5)" in r.stderr, r.stderr
    assert run_cli("submit", "-c", "small", "--dry-run", "--array", "0-4", "--", "true", env=env).returncode == 0
    (cfg / "small.yaml").write_text("name: small\nbackend: local\nmax_array_size: 0\npartitions:\n  - {name: local}\n")
    r = run_cli("submit", "-c", "small", "--dry-run", "--", "true", env=env)
    assert r.returncode == 2 and "small.yaml" in r.stderr and "max_array_size" in r.stderr, r.stderr


def test_status_of_a_big_array_is_fast(client: Any, home: Path) -> None:
    """20,000 tasks: cancelling them and `status ARRAY_ID` were quadratic (10k tasks: 7.8 s of status)."""
    arr = client.submit(["sleep", "60"], array="0-19999%1", time="5m")
    wait_until(lambda: arr[0].status() is JobState.RUNNING, "the first task to run")
    arr.cancel()
    assert arr.wait(timeout=120) is JobState.CANCELLED
    t0 = time.monotonic()
    r = run_cli("status", arr.id)
    assert r.returncode == 0 and r.stdout.count("CANCELLED") == 20000
    assert time.monotonic() - t0 < 15


def test_tasks_that_never_ran_are_not_booked(client: Any, home: Path) -> None:
    ledger = Ledger(None, home)
    ledger.set_quota(Quota(account="lab", cpu_hours=1000), "admin")
    arr = client.submit(["sleep", "60"], array="0-9%1", time="5m", account="lab")
    wait_until(lambda: arr[0].status() is JobState.RUNNING, "the first task to run")
    arr.cancel()
    assert arr.wait(timeout=60) is JobState.CANCELLED
    assert ledger.totals()["records"] == 1 and ledger.reservations() == []
    ledger.close()


# ---------------------------------------------------------------- item 8: sys.exit in a map item
def exit_on_one(x: int) -> int:
    if x == 1:
        sys.exit(0)
    return x * 10


def test_sys_exit_in_a_map_item_is_that_items_failure(client: Any) -> None:
    arr = client.map(exit_on_one, [0, 1, 2])
    with pytest.raises(JobFailedError, match=rf"{arr.id}_1 .*SystemExit\(0\)"):
        arr.results(timeout=120)
    got = arr.results(return_exceptions=True)
    assert got[0] == 0 and got[2] == 20 and isinstance(got[1], JobFailedError)


# ---------------------------------------------------------------- item 14: one record per attempt
def test_requeued_local_task_books_one_record_per_attempt(client: Any, home: Path) -> None:
    ledger = Ledger(None, home)
    ledger.set_quota(Quota(account="lab", cpu_hours=1000), "admin")
    job = client.submit(["sh", "-c", "sleep 0.2; exit 3"], requeue=2, time="1h", account="lab")
    assert job.wait(timeout=60) is JobState.FAILED
    assert job.info().restarts == 2
    assert ledger.totals()["records"] == 3
    rows = ledger.report(["job"])
    assert rows[0]["cpu_hours"] * 3600 >= 3 * 0.2
    before = ledger.totals()
    client.accounts.sync("local")
    assert ledger.totals() == before
    ledger.close()


# ---------------------------------------------------------------- item 1 on Slurm
def test_slurm_submitter_killed_after_sbatch_is_adopted_or_lost(slurm: Any, tmp_path: Path) -> None:
    job = killed_submit(tmp_path, "after-submit", "-t", "1m", "--", "true")
    r = run_cli("wait", job, "--timeout", "120", timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    row = slurm.store.get(job)
    assert row.native_id and row.native_id.isdigit()
    lost = killed_submit(tmp_path, "after-insert", "-t", "1m", "--", "true")
    [info] = status_json(lost)
    assert (info["state"], info["reason"]) == ("FAILED", "SubmitLost")
