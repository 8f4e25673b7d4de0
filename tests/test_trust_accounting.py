"""The "Trust" issue, accounting items 10-13 and 15: one booking per physical Slurm cluster, measured CPU time
from sacct's step lines, ranks counted as held CPUs, admission that settles ended jobs, readable small numbers.

Ledger tests run on SQLite and on the real PostgreSQL server (the ``ledger`` fixtures of test_accounting.py);
Slurm tests on the real test cluster (``slurm`` fixture: three configs over one slurm.conf).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import test_accounting as _acc
from conftest import run_cli
from test_accounting import FIX, rec

from suanli.accounting.ledger import Ledger
from suanli.accounting.quota import Quota
from suanli.accounts_slurm import ParseStats, parse_usage
from suanli.cli.accounting_cmd import sig
from suanli.jobs.resources import Resources
from suanli.jobs.spec import MPI, Command, JobSpec, Training
from suanli.jobs.state import JobState

# The ledger fixtures of test_accounting.py (SQLite and PostgreSQL), taken by name.
pg, pg_db, ledger_url, ledger = _acc.pg, _acc.pg_db, _acc.ledger_url, _acc.ledger


def _until(cond: Any, timeout: float, what: str, step: float = 0.5) -> Any:
    """Poll ``cond`` until it returns something true (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(step)


def _sacct_env(conf: str) -> dict[str, str]:
    return dict(os.environ, SLURM_CONF=conf)


def _cputime_raw(conf: str, natives: list[str]) -> dict[str, int]:
    out = subprocess.run(["sacct", "-n", "-P", "-X", "-D", "-j", ",".join(natives), "-o", "JobID,CPUTimeRAW,State"],
                         capture_output=True, text=True, env=_sacct_env(conf), check=True).stdout
    got: dict[str, int] = {}
    for line in out.splitlines():
        job, raw, _state = line.split("|")
        got[job] = got.get(job, 0) + int(raw)
    return got


def _ended_in_sacct(conf: str, natives: list[str]) -> bool:
    out = subprocess.run(["sacct", "-n", "-P", "-X", "-j", ",".join(natives), "-o", "JobID,State,End"],
                         capture_output=True, text=True, env=_sacct_env(conf)).stdout
    rows = [line.split("|") for line in out.splitlines() if line]
    return len(rows) >= len(natives) and all(r[1] == "COMPLETED" and r[2][:1].isdigit() for r in rows)


# ---------------------------------------------------------------- item 10: one booking per physical cluster
@pytest.mark.slurm
def test_configs_over_one_slurm_conf_book_each_job_once(slurm: Any, slurm_conf: str, ledger: Ledger) -> None:
    a = slurm.submit(["sleep", "1"], time="5m", cpus_per_task=2)
    b = slurm.submit(["sleep", "1"], time="5m", cluster="testslurm-small")
    env = _sacct_env(slurm_conf)
    raw = subprocess.run(["sbatch", "--parsable", "-A", "acct-b", "-t", "5", "--wrap", "sleep 1", "-o", "/dev/null"],
                         capture_output=True, text=True, env=env, check=True).stdout.strip()
    assert a.wait(timeout=120) is JobState.COMPLETED and b.wait(timeout=120) is JobState.COMPLETED
    natives = [a.info().native_id, b.info().native_id, raw]
    _until(lambda: _ended_in_sacct(slurm_conf, natives), 60, "sacct to list the three jobs as ended")
    # A ledger written by the old suanli: records keyed on the config name, the same job once per config.
    lines = subprocess.run(["sacct", "--parsable2", "-D", "-j", ",".join(natives), "-o",
                            "JobID,User,Account,Partition,State,AllocCPUS,AllocTRES,ElapsedRaw,CPUTimeRAW,Submit,"
                            "Start,End"], capture_output=True, text=True, env=env, check=True).stdout.splitlines()
    for name in ("testslurm", "testslurm-small"):
        ledger.record(list(parse_usage(lines, name)))
    since = time.time() - 3600
    for name in ("testslurm", "testslurm-small", "testslurm-mpirun"):
        slurm.accounts.sync(name, since=since, all_users=True)
    r = run_cli("accounting", "sync", "--since", "1h", "--all-users", "--json")  # every config, again
    assert r.returncode == 0, r.stderr
    rows = ledger.report(["job"])  # grouped by (cluster, job): a job booked under two configs shows twice
    want = _cputime_raw(slurm_conf, natives)
    assert set(want) == set(natives)
    for n in natives:
        mine = [row for row in rows if row["job"] == n]
        assert sum(row["jobs"] for row in mine) == 1, f"job {n} booked {mine}"
        assert mine[0]["cpu_hours"] * 3600 == pytest.approx(want[n])
    total = sum(row["cpu_hours"] for row in rows if row["job"] in natives) * 3600
    assert total == pytest.approx(sum(want.values()))
    # Each suanli job shows the config that submitted it; the foreign job one config, always the same.
    where = {row["job"]: (row["cluster"], row["job_id"]) for row in rows if row["job"] in natives}
    assert where == {natives[0]: ("testslurm", a.id), natives[1]: ("testslurm-small", b.id), raw: ("testslurm", None)}


def test_old_record_keys_are_adopted_once(ledger: Ledger) -> None:
    lines = (FIX / "testcluster__sacct-busy-steps.txt").read_text().splitlines()
    for name in ("c-big", "c-small"):  # two configs over one cluster, booked by the old key
        ledger.record(list(parse_usage(lines, name)))
    assert ledger.totals()["records"] == 2
    assert ledger.adopt_keys(["c-big", "c-small"], "slurm:testcluster") == 2  # one re-keyed, one dropped
    new = list(parse_usage(lines, "c-big", key="slurm:testcluster"))
    ledger.record(new)
    assert ledger.totals() == {"records": 1, "cpu_seconds": 16.0, "accelerator_seconds": 0.0, "charge": 0.0}
    assert ledger.adopt_keys(["c-big", "c-small"], "slurm:testcluster") == 0


# ---------------------------------------------------------------- item 11: CPU efficiency from the steps
def test_sacct_steps_carry_the_measured_cpu_time() -> None:
    with_x = (FIX / "testcluster__sacct-busy-X.txt").read_text().splitlines()
    steps = (FIX / "testcluster__sacct-busy-steps.txt").read_text().splitlines()
    [r] = parse_usage(with_x, "t")
    assert r.total_cpu_s == 0.0  # Slurm 22.05 under -X: the allocation line says 00:00:00
    stats = ParseStats()
    [r] = parse_usage(steps, "t", stats=stats)  # without -X: steps fold into their job, never records
    assert (r.native_id, r.cpus, r.cpu_seconds, stats.steps, stats.records) == ("12", 2, 16.0, 2, 1)
    assert r.total_cpu_s == pytest.approx(6.231)
    # An allocation line that carries no TotalCPU: the steps' sum (5.047 s batch + 1.184 s step 0) stands in.
    blank = [steps[0], steps[1].replace("|00:06.231|", "|00:00:00|"), *steps[2:]]
    [r] = parse_usage(blank, "t")
    assert r.total_cpu_s == pytest.approx(5.047 + 1.184)
    # Steps of a job still open are not added to the next one.
    running = steps[1].replace("|COMPLETED|", "|RUNNING|").replace("|2026-11-30T00:23:41", "|Unknown")
    recs = list(parse_usage([steps[0], running, *steps[2:], steps[1].replace("12|12|", "13|13|")], "t"))
    assert [x.native_id for x in recs] == ["13"] and recs[0].total_cpu_s == pytest.approx(6.231)


@pytest.mark.slurm
def test_busy_slurm_job_shows_its_cpu_efficiency(slurm: Any, ledger: Ledger, tmp_path: Path) -> None:
    busy = tmp_path / "busy.sh"
    busy.write_text("end=$((SECONDS+4)); while [ $SECONDS -lt $end ]; do :; done\n")
    job = slurm.submit(["bash", str(busy)], time="5m")
    assert job.wait(timeout=120) is JobState.COMPLETED
    native = job.info().native_id

    def booked() -> Any:
        r = run_cli("accounting", "sync", "--cluster", "testslurm", "--since", "1h")
        assert r.returncode == 0, r.stderr
        rows = {x["job"]: x for x in json.loads(run_cli("usage", "--by", "job", "--json").stdout)}
        eff = rows.get(native, {}).get("cpu_efficiency")
        return eff if eff else None

    eff = _until(booked, 60, "the job's steps in sacct", step=1.0)
    assert 0.2 < eff <= 1.05  # one busy process on one allocated CPU for ~4 of the elapsed seconds
    table = run_cli("usage", "--by", "job").stdout
    line = next(x for x in table.splitlines() if x.split()[:2] == ["testslurm", native])
    assert line.split()[-1].endswith("%") and line.split()[-1] != "0%"


# ---------------------------------------------------------------- item 12: ranks are held resources
def test_ranks_raise_the_tasks_held_per_node() -> None:
    res = Resources(time="1h")
    assert res.for_workload(Training(script="t.py", nproc_per_node=2)).tasks_per_node == 2
    assert res.for_workload(MPI(["x"], ranks=2)).tasks_per_node == 2
    assert Resources(nodes=2).for_workload(MPI(["x"], ranks=3)).tasks_per_node == 2  # the busiest node
    assert Resources(tasks_per_node=4).for_workload(Training(script="t.py", nproc_per_node=2)).tasks_per_node == 4
    assert Resources(cpus_per_task=3).for_workload(MPI(["x"], ranks_per_node=2)).cpus_per_node == 6
    assert res.for_workload(Command(("true",))) is res


def test_cli_refuses_ranks_that_do_not_fit_a_node(home: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "clusters"
    cfg.mkdir()
    (cfg / "small.yaml").write_text("name: small\nbackend: local\npartitions:\n  - {name: p, cpus_per_node: 2}\n")
    for body, code in (("training: {script: train.py, nproc_per_node: 3}", 2),
                       ("mpi: {argv: [hostname], ranks: 3}", 2),
                       ("training: {script: train.py, nproc_per_node: 2}", 0)):
        job = tmp_path / "job.yaml"
        job.write_text(body + "\nresources: {time: 30m}\n")
        r = run_cli("submit", "--config", str(cfg), "--cluster", "small", "--dry-run", "--json", str(job))
        assert r.returncode == code, (body, r.stderr)
        if code:
            assert "cpus: asked for 3 CPUs per node (3 tasks or ranks x 1 cpus)" in r.stderr
            assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
        else:
            assert json.loads(r.stdout)["estimate"]["cpus"] == 2  # the estimate counts both ranks
    r = run_cli("submit", "--config", str(cfg), "--cluster", "small", "--dry-run", "--ntasks-per-node", "4",
                "--", "true")
    assert r.returncode == 2 and "cpus: asked for 4 CPUs" in r.stderr


@pytest.mark.slurm
def test_slurm_requests_and_books_every_rank(slurm: Any) -> None:
    for wl in (Training(script="t.py", nproc_per_node=2), MPI(["hostname"], ranks=2)):
        plan, sub = slurm.plan(JobSpec(wl, resources=Resources(time="1h")))
        assert "--ntasks-per-node=2" in plan.argv and "--cpus-per-task=1" in plan.argv
        assert slurm.accounts.estimate(sub).cpu_hours == pytest.approx(2.0)
    plan, _ = slurm.plan(JobSpec(Training(script="t.py", nproc_per_node=2),
                                 resources=Resources(tasks_per_node=3, time="1h")))
    assert "--ntasks-per-node=3" in plan.argv  # what the estimate holds is what sbatch asks for


def test_local_mpi_reserves_and_books_its_ranks(ledger: Ledger, client: Any) -> None:
    ledger.set_quota(Quota(account="lab", cpu_hours=100), "admin")
    job = client.submit(JobSpec(MPI(["true"], ranks=2), resources=Resources(time="1h"), account="lab"))
    [held] = ledger.reservations()
    assert held["cpu_seconds"] == pytest.approx(2 * 3600)
    assert job.wait(timeout=120) is JobState.COMPLETED, job.logs("stderr")[-2000:]
    [row] = ledger.report(["job"])
    info = job.info()
    assert row["cpu_hours"] * 3600 == pytest.approx(2 * (info.ended_at - info.started_at), abs=1e-3)


# ---------------------------------------------------------------- item 13: admission settles ended jobs
def test_second_submit_fits_once_the_first_ended_without_status(ledger: Ledger, home: Path) -> None:
    ledger.set_quota(Quota(account="lab", cpu_hours=1), "admin")
    r = run_cli("submit", "--account", "lab", "--time", "48m", "--json", "--", "true")
    assert r.returncode == 0, r.stderr
    first = json.loads(r.stdout)["id"]
    state = home / "jobs" / first / "state.json"

    def ended() -> bool:  # read the runner's own file: no `suanli status`, so nothing books the job
        try:
            tasks = json.loads(state.read_text())["tasks"].values()
        except (OSError, ValueError):
            return False
        return all(t.get("state") == "COMPLETED" for t in tasks)

    _until(ended, 60, "the first job to end")
    assert [x["job_id"] for x in ledger.reservations()] == [first]  # still held: nobody asked
    r = run_cli("submit", "--account", "lab", "--time", "48m", "--json", "--", "true")
    assert r.returncode == 0, r.stderr  # before: exit 3, "0.2 of 1.0 remain"
    second = json.loads(r.stdout)["id"]
    assert [x["job_id"] for x in ledger.reservations()] in ([second], [])
    assert [row["job_id"] for row in ledger.report(["job"])] == [first]  # booked by the admission


# ---------------------------------------------------------------- item 15: significant digits in tables
def test_sig_shows_three_significant_digits() -> None:
    assert [sig(v) for v in (0.0, 0.000347222, 0.0123456, 1.0, 12.345, 999.4, 1234.5, 2e-9, 3.5e10)] == [
        "0", "0.000347", "0.0123", "1.00", "12.3", "999", "1234", "2.00e-09", "3.50e+10"]


def test_usage_table_shows_small_jobs(ledger: Ledger) -> None:
    ledger.record([rec(1, account="lab", cpu_s=1.25)])  # 1.25 cpu-seconds
    r = run_cli("usage", "--by", "account")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[1].split()[:4] == ["lab", "1", "0.000347", "0"]
    [row] = json.loads(run_cli("usage", "--by", "account", "--json").stdout)
    assert row["cpu_hours"] == 1.25 / 3600  # JSON keeps every digit
    assert run_cli("usage", "--by", "account", "--csv").stdout.splitlines()[1].split(",")[2] == repr(1.25 / 3600)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))


def test_dry_run_estimate_shows_small_costs() -> None:
    """A one-minute, one-CPU job costs 0.0167 cpu-hours: the dry run must not print 0.00."""
    from suanli.accounting.estimate import worst_case

    text = worst_case(Resources(time="1m"), 1, 1.0, 0.0).describe()
    assert "at most 0.0167 cpu-hours" in text and "charge 0.0167 units" in text, text
