"""The fault matrix: a process killed at each point that matters, locked and damaged stores, a read-only home.

Each case asserts the same three things: nothing is lost (what was submitted is in the registry and, once ended,
booked exactly once), nothing is stuck (every row reaches a final state, no quota reservation is left held), and
what the user sees is one line with a non-zero exit code that says what to do. Real processes, the real registry
and ledger (SQLite; PostgreSQL and Slurm variants live in test_accounting.py and test_trust_local.py).
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import run_cli, wait_until
from test_trust_cli import one_line_error, read_only
from test_trust_local import killed_submit, status_json

from suanli.accounting.ledger import Ledger
from suanli.accounting.quota import Quota


def ledger_state(home: Path) -> tuple[list[Any], int]:
    """(reservations held, usage records booked) as the ledger has them now."""
    ledger = Ledger(None, home)
    try:
        return ledger.reservations(), int(ledger.totals()["records"])
    finally:
        ledger.close()


def with_quota(home: Path, account: str = "kk") -> None:
    ledger = Ledger(None, home)
    ledger.set_quota(Quota(account=account, cpu_hours=1000), "admin")
    ledger.close()


# ---------------------------------------------------------------- the submitter killed mid-submit
@pytest.mark.parametrize(("point", "state", "reason", "exit_code", "booked"), [
    ("after-insert", "FAILED", "SubmitLost", 1, 0),   # the backend never got it: nothing ran, nothing booked
    ("after-submit", "COMPLETED", None, 0, 2),         # the backend has it: adopted, run, booked once per task
])
def test_submitter_killed(home: Path, tmp_path: Path, point: str, state: str, reason: str | None, exit_code: int,
                          booked: int) -> None:
    with_quota(home)
    job = killed_submit(tmp_path, point, "-A", "kk", "-t", "1m", "--array", "0-1", "--", "true")
    assert [r["job_id"] for r in ledger_state(home)[0]] == [job]  # its worst case is held while it is unsettled
    r = run_cli("wait", "--timeout", "60", job, timeout=120)
    assert r.returncode == exit_code, r.stdout + r.stderr
    assert {(i["state"], i["reason"]) for i in status_json(job)} == {(state, reason)}
    assert ledger_state(home) == ([], booked)
    assert run_cli("accounting", "sync").returncode == 0
    assert ledger_state(home) == ([], booked)  # a sync afterwards books nothing twice


# ---------------------------------------------------------------- the local runner killed
def test_runner_killed(home: Path) -> None:
    with_quota(home)
    r = run_cli("submit", "--json", "-A", "kk", "-t", "5m", "--", "sleep", "300")
    assert r.returncode == 0, r.stderr
    job = json.loads(r.stdout)["id"]
    folder = home / "jobs" / job
    wait_until(lambda: status_json(job)[0]["state"] == "RUNNING", "the job to run")
    task_pid = json.loads((folder / "state.json").read_text())["tasks"]["main"]["pid"]
    os.kill(int((folder / "runner.pid").read_text().split()[0]), signal.SIGKILL)
    wait_until(lambda: status_json(job)[0]["state"] == "FAILED", "the job of a dead runner to fail")
    assert status_json(job)[0]["reason"] == "RunnerLost"
    wait_until(lambda: not _alive(task_pid), "the orphaned task to be stopped")
    reservations, records = ledger_state(home)
    assert reservations == [] and records == 1
    assert run_cli("wait", job).returncode == 1  # ended, not completed: never a hang


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# ---------------------------------------------------------------- `accounting sync` killed
def test_accounting_sync_killed_then_rerun_books_each_job_once(home: Path) -> None:
    Ledger(None, home).close()  # a ledger exists, so jobs are booked
    jobs = []
    for _ in range(3):
        r = run_cli("submit", "--json", "-A", "kk", "-t", "1m", "--array", "0-9", "--", "true")
        assert r.returncode == 0, r.stderr
        jobs.append(json.loads(r.stdout)["id"])

    def ended(job: str) -> bool:  # read from the runner's own file: no `status`, which would book them
        try:
            tasks = json.loads((home / "jobs" / job / "state.json").read_text())["tasks"].values()
        except (OSError, ValueError):
            return False
        return all(t.get("state") == "COMPLETED" for t in tasks)

    wait_until(lambda: all(ended(j) for j in jobs), "the arrays to end")
    assert ledger_state(home)[1] == 0
    proc = subprocess.Popen([sys.executable, "-m", "suanli", "accounting", "sync"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    proc.send_signal(signal.SIGKILL)  # wherever it is: before, inside or after its transaction
    proc.communicate()
    assert ledger_state(home)[1] in (0, 30)  # one transaction: all of it or none, never half
    assert run_cli("accounting", "sync").returncode == 0
    assert ledger_state(home) == ([], 30)
    assert run_cli("accounting", "sync").returncode == 0
    assert ledger_state(home) == ([], 30)


# ---------------------------------------------------------------- locked and damaged stores
def test_locked_registry_blocks_no_reader_and_loses_no_writer(home: Path) -> None:
    assert run_cli("submit", "--wait", "--", "true").returncode == 0
    holder = sqlite3.connect(home / "registry.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process mid-write
    try:
        r = run_cli("status", "--all", "--json", timeout=20)  # WAL: readers never wait for a writer
        assert r.returncode == 0 and len(json.loads(r.stdout)) == 1, r.stderr
        submit = subprocess.Popen([sys.executable, "-m", "suanli", "submit", "--json", "--", "true"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    out, err = submit.communicate(timeout=60)  # it waited for the lock, then went through
    assert submit.returncode == 0, err
    assert json.loads(out)["id"] in {i["id"] for i in json.loads(run_cli("status", "--all", "--json").stdout)}


def test_damaged_registry_is_one_line_naming_the_file_and_the_way_out(home: Path) -> None:
    home.mkdir(parents=True)
    (home / "registry.db").write_bytes(b"not a database " * 400)
    for verb in (["status"], ["submit", "--", "true"], ["logs", "abcdefgh"]):
        one_line_error(run_cli(*verb), 2, str(home / "registry.db"), "mv ")
    assert not (home / "jobs").exists()  # the refused submit left no folder behind


def test_locked_ledger_refuses_the_submission_and_leaves_nothing(home: Path) -> None:
    with_quota(home, "lab")
    holder = Ledger(None, home)
    with holder.db.transaction(lock="x"):
        r = run_cli("submit", "-A", "lab", "-t", "1h", "--", "true", timeout=60)
    holder.close()
    one_line_error(r, 4, "locked by another process")
    assert json.loads(run_cli("status", "--all", "--json").stdout) == []
    assert ledger_state(home) == ([], 0)


def test_damaged_ledger_refuses_quota_submissions_and_leaves_nothing(home: Path) -> None:
    home.mkdir(parents=True)
    (home / "ledger.db").write_bytes(b"not sqlite " * 400)
    one_line_error(run_cli("submit", "-A", "lab", "-t", "1h", "--", "true"), 4, "corrupt")
    assert json.loads(run_cli("status", "--all", "--json").stdout) == []
    assert not (home / "jobs").exists() or not any((home / "jobs").iterdir())


def test_read_only_home_reads_and_refuses_writes_in_one_line(home: Path) -> None:
    r = run_cli("submit", "--wait", "--json", "--", "true")
    assert r.returncode == 0, r.stderr
    with read_only(home):
        assert run_cli("status", "--all").returncode == 0
        one_line_error(run_cli("submit", "--", "true"), 2, "read-only file system")
        one_line_error(run_cli("quota", "set", "-A", "x", "--cpu-hours", "1"), 2, "read-only")
    assert len(json.loads(run_cli("status", "--all", "--json").stdout)) == 1
