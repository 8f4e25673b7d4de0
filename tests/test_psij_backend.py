"""The psij backend (issue 14, part 2): PSI/J's executors behind suanli's API, registry and ledger. Real runs
through PSI/J's ``local`` executor (no services) and its ``slurm`` executor on the single-node Slurm test
cluster; PBS, LSF and Flux are reached through the same code but cannot be tested on this machine."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import run_cli, wait_until

pytest.importorskip("psij")

LOCAL_CFG = ("name: pl\nbackend: psij\npsij: {executor: local}\n"
             "partitions:\n  - {name: main, nodes: 1, cpus_per_node: 4}\n")


def _client_for(cfg: Path, text: str, name: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    cfg.mkdir()
    (cfg / f"{name}.yaml").write_text(text)
    (cfg / "settings.yaml").write_text(f"default_cluster: {name}\nstatus_poll_max_s: 1\n")
    monkeypatch.setenv("SUANLI_CONFIG", str(cfg))
    from suanli.api import Client

    return Client()


def _cancel_open(c: Any) -> None:
    """Stop whatever a failed test left running (through the backend itself), then close the registry."""
    open_jobs = [r.id for r in c.store.query(only_open=True) if r.native_id]
    if open_jobs:
        try:
            c.cancel(open_jobs)
        except Exception:  # noqa: BLE001 - teardown must not hide the test's own failure
            pass
    c.store.close()


@pytest.fixture
def psij_local(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A Client whose default cluster runs jobs through PSI/J's local executor."""
    c = _client_for(tmp_path / "clusters", LOCAL_CFG, "pl", monkeypatch)
    yield c
    _cancel_open(c)


@pytest.fixture
def psij_slurm(home: Path, slurm_conf: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A Client whose default cluster is the Slurm test cluster reached through PSI/J's slurm executor."""
    monkeypatch.setenv("SLURM_CONF", slurm_conf)
    c = _client_for(tmp_path / "clusters", "name: ps\nbackend: psij\ndefault_account: acct-a\n"
                    "psij: {executor: slurm}\npartitions:\n  - {name: debug, nodes: 1, cpus_per_node: 8}\n",
                    "ps", monkeypatch)
    yield c
    _cancel_open(c)


@pytest.fixture(params=["local", pytest.param("slurm", marks=pytest.mark.slurm)])
def psij_client(request: pytest.FixtureRequest) -> Any:
    return request.getfixturevalue("psij_local" if request.param == "local" else "psij_slurm")


def double(x: int) -> int:
    return 2 * x


# ---------------------------------------------------------------- runs
def test_command_completes_and_its_output_is_in_suanli_logs(psij_client: Any) -> None:
    # Submitted by the CLI, a process that exits at once; followed from this process and read back by another.
    r = run_cli("submit", "--", "sh", "-c", "echo out-$SUANLI_BACKEND; echo err-line >&2")
    assert r.returncode == 0, r.stderr
    job_id = r.stdout.split()[0]
    job = psij_client.get_job(job_id)
    assert job.wait(timeout=60).value == "COMPLETED"
    info = job.info()
    assert info.exit_code == 0 and info.native_id and info.started_at and info.ended_at >= info.started_at
    out = run_cli("logs", "--stream", "stdout", job_id)
    assert out.returncode == 0 and out.stdout.strip() == "out-psij", out.stdout + out.stderr
    err = run_cli("logs", "--stream", "stderr", job_id)
    assert err.returncode == 0 and err.stderr.strip() == "err-line", err.stdout + err.stderr  # stderr to stderr


def test_python_function_returns_its_value(psij_client: Any) -> None:
    job = psij_client.submit(double, 21)
    assert job.result(timeout=60) == 42


def test_failing_command_is_failed_with_its_exit_code(psij_client: Any) -> None:
    job = psij_client.submit(["sh", "-c", "exit 7"])
    assert job.wait(timeout=60).value == "FAILED"
    info = job.info()
    assert info.exit_code == 7 and info.reason == "NonZeroExitCode"
    r = run_cli("wait", job.id, "--timeout", "30")
    assert r.returncode == 1  # a waited job that did not complete


def test_cancel_from_another_process_ends_cancelled(psij_client: Any) -> None:
    job = psij_client.submit(["sleep", "300"])
    wait_until(lambda: job.info().state.value == "RUNNING", "the job to start", timeout=60)
    r = run_cli("cancel", job.id)
    assert r.returncode == 0, r.stderr
    assert job.wait(timeout=60).value == "CANCELLED"
    info = job.info()
    assert info.started_at is not None and info.ended_at is not None
    if info.cluster == "pl":  # the local executor's launcher is gone (a zombie until its parent reaps it)
        import psutil

        assert not psutil.pid_exists(int(str(info.native_id))) or psutil.Process(
            int(str(info.native_id))).status() == psutil.STATUS_ZOMBIE


def test_status_in_a_second_process_attaches_by_native_id(psij_client: Any) -> None:
    job = psij_client.submit(["sh", "-c", "echo done"])
    # Another process, with nothing but the registry row (JobRef), follows the job to its end.
    r = run_cli("wait", job.id, "--timeout", "60")
    assert r.returncode == 0, r.stdout + r.stderr
    r = run_cli("status", "--json", job.id)
    assert r.returncode == 0, r.stderr
    [row] = json.loads(r.stdout)
    assert row["state"] == "COMPLETED" and row["native_id"] == job.info().native_id


def test_job_of_a_submitter_killed_after_submit_is_adopted(psij_client: Any, tmp_path: Path) -> None:
    """find_submitted: the native id PSI/J returned is in the job folder, so the next status adopts the job."""
    import os
    import sys

    pause = tmp_path / "pause"
    env = dict(os.environ, SUANLI_TEST_PAUSE_AT="after-submit", SUANLI_TEST_PAUSE_FILE=str(pause))
    proc = subprocess.Popen([sys.executable, "-m", "suanli", "submit", "--", "sh", "-c", "echo adopted"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: pause.exists() or proc.poll() is not None, "the submitter to reach after-submit", timeout=60)
        assert proc.poll() is None, proc.communicate()
    finally:
        proc.kill()
        proc.communicate()
    [row] = psij_client.store.unsubmitted()
    recorded = json.loads((Path(row.job_dir) / "psij.json").read_text())["native_id"]
    job = psij_client.get_job(row.id)
    assert job.wait(timeout=60).value == "COMPLETED"
    assert job.info().native_id == recorded and job.logs().strip() == "adopted"


@pytest.mark.slurm
def test_slurm_executor_job_is_a_real_slurm_job(psij_slurm: Any, slurm_conf: str) -> None:
    job = psij_slurm.submit(["sh", "-c", "echo $SLURM_JOB_ID"], time="5m")
    assert job.wait(timeout=60).value == "COMPLETED"
    native = job.info().native_id
    assert native and job.logs().strip() == native  # the native id is Slurm's job id
    # PSI/J's own submit script stays in the job folder, with the partition and time limit suanli asked for.
    row = psij_slurm.store.query(ids=[job.id])[0]
    psij_files = list((Path(row.job_dir) / "psij").iterdir())
    assert any(p.suffix == ".job" and "#SBATCH --time=0:5:0" in p.read_text() for p in psij_files)
    assert any(p.suffix == ".job" and '#SBATCH --partition="debug"' in p.read_text() for p in psij_files)
    assert any(p.suffix == ".job" and '#SBATCH --account="acct-a"' in p.read_text() for p in psij_files)


# ---------------------------------------------------------------- refusals
@pytest.mark.parametrize(("section", "line", "message"), [
    ("psij:\n  launcher: single\n", 3, "psij: missing required key 'executor'"),
    ("psij:\n  executor: pbsx\n", 4, "psij.executor: 'pbsx' is not a PSI/J executor"),
    ("psij:\n  executor: local\n  launcher: rocket\n", 5, "psij.launcher: 'rocket' is not a PSI/J launcher"),
    ("psij:\n  executor: local\n  colour: blue\n", 5, "psij.colour: unknown key 'colour'"),
    ("psij:\n  executor: 3\n", 4, "psij.executor: 3 is not a str"),
    ("psij:\n  executor: suanli\n", 4, "psij.executor: 'suanli' is PSI/J's executor that submits through"),
    ("psij:\n  executor: pbs\n  custom_attributes:\n    pbs.place: [a]\n", 6, "psij.custom_attributes.pbs.place"),
])
def test_bad_psij_section_is_exit_2_naming_file_and_line(home: Path, tmp_path: Path, section: str, line: int,
                                                         message: str) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(f"name: pb\nbackend: psij\n{section}partitions:\n  - {{name: main}}\n")
    r = run_cli("--config", str(cfg), "submit", "--cluster", "pb", "--", "true")
    assert r.returncode == 2, r.stderr
    assert f"{cfg}:{line}:" in r.stderr and message in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not (home / "jobs").exists() or not any((home / "jobs").iterdir())


def test_array_on_psij_is_refused_by_capability_before_submission(psij_local: Any, home: Path) -> None:
    from suanli.compute.backends import backend_class
    from suanli.errors import UsageError

    assert "arrays" in backend_class("local").capabilities and "arrays" in backend_class("slurm").capabilities
    assert "arrays" not in backend_class("psij").capabilities
    r = run_cli("submit", "--array", "0-2", "--", "true")
    assert r.returncode == 2 and "cannot run arrays" in r.stderr and "backend psij" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    with pytest.raises(UsageError, match="cannot run arrays"):
        psij_local.map(double, [1, 2])
    with pytest.raises(UsageError, match="restarts"):
        psij_local.submit(["true"], max_restarts=1)
    first = psij_local.submit(["true"])
    with pytest.raises(UsageError, match="dependencies"):
        psij_local.submit(["true"], dependencies=[first.id])
    first.wait(timeout=60)
    assert [r.id for r in psij_local.store.query()] == [first.id]  # nothing else was recorded
    assert [p.name for p in (home / "jobs").iterdir()] == [first.id]  # nor any job folder written


def test_ended_job_is_booked_in_the_ledger_from_the_registry(psij_local: Any, home: Path) -> None:
    from suanli.accounting.ledger import Ledger
    from suanli.accounting.quota import Quota

    ledger = Ledger(None, home)
    try:
        ledger.set_quota(Quota(account="lab", cpu_hours=10), "admin")
        job = psij_local.submit(["sleep", "0.3"], account="lab", time="1h", cpus_per_task=2)
        assert [r["job_id"] for r in ledger.reservations()] == [job.id]
        assert job.wait(timeout=60).value == "COMPLETED"
        assert ledger.reservations() == []
        [row] = ledger.report(["job"])
        info = job.info()
        assert row["job_id"] == job.id and row["state"] == "COMPLETED"
        assert abs(row["cpu_hours"] * 3600 - 2 * (info.ended_at - info.started_at)) < 1e-3
        assert info.ended_at - info.started_at >= 0.3
    finally:
        ledger.close()


def test_a_job_killed_outside_suanli_is_failed_not_completed(psij_local: Any) -> None:
    """A job that ended without job.sh writing its exit code (killed, time limit, node failure) is FAILED,
    never COMPLETED by absence (PSI/J's own poller would call it COMPLETED)."""
    import psutil

    job = psij_local.submit(["sleep", "300"])
    wait_until(lambda: job.info().state.value == "RUNNING", "the job to start", timeout=60)
    launcher = psutil.Process(int(str(job.info().native_id)))
    for p in [*launcher.children(recursive=True), launcher]:
        p.kill()
    assert job.wait(timeout=60).value == "FAILED"
    assert job.info().reason == "NoExitCode"


def test_psij_is_imported_only_when_a_job_needs_it() -> None:
    import sys

    code = ("import sys, suanli.cli.main, suanli.compute.backends, suanli.compute.psij.backend; "
            "print('psij' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stderr
