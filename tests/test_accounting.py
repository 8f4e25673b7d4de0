"""The ledger, quotas and admission (issue 5), against SQLite and a real PostgreSQL server.

scripts/test.sh starts PostgreSQL (tests/postgres/server.sh) and exports SUANLI_TEST_PG (a superuser URL);
every ledger test runs once per database. Under CI=true a missing server fails instead of skipping.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from conftest import REPO, run_cli

from suanli.accounting.db import LedgerError, LedgerPermissionError
from suanli.accounting.estimate import worst_case
from suanli.accounting.ledger import Ledger
from suanli.accounting.quota import Quota
from suanli.accounting.records import UsageRecord
from suanli.accounts_slurm import ParseStats, parse_usage
from suanli.errors import QuotaExceeded, UsageError
from suanli.jobs.resources import Resources

FIX = Path(__file__).parent / "fixtures" / "sacct"
PG = os.environ.get("SUANLI_TEST_PG", "")
#: The field list hb-jobinfo's README gives for the captured file (it was made with --noheader).
HB_FIELDS = ("JobID,JobName,User,Partition,NodeList,NNodes,NCPUs,NTasks,State,Submit,Start,End,Timelimit,Elapsed,"
             "TotalCPU,CPUTime,UserCPU,SystemCPU,ReqMem,MaxRSS,MaxVMSize,ReqTRES,AllocTRES,TRESUsageInMax,"
             "TRESUsageInTot,TRESUsageOutTot,MaxDiskRead,MaxDiskWrite,MaxRSSNode,MaxRSSTask,MaxVMSizeNode,"
             "MaxVMSizeTask,MaxDiskReadNode,MaxDiskReadTask,MaxDiskWriteNode,MaxDiskWriteTask,Comment")
HB_HEADER = HB_FIELDS.split(",")


# ---------------------------------------------------------------- databases
def _pg_url(user: str, db: str) -> str:
    p = urlsplit(PG)
    return urlunsplit(p._replace(netloc=f"{user}@{p.hostname}:{p.port}", path="/" + db))


def _super(sql: str, db: str = "postgres") -> None:
    import psycopg2

    conn = psycopg2.connect(_pg_url("postgres", db))
    try:
        conn.autocommit = True
        conn.cursor().execute(sql)
    finally:
        conn.close()


@pytest.fixture(scope="session")
def pg() -> str:
    if not PG:
        if os.environ.get("CI") == "true":
            pytest.fail("no PostgreSQL test server (SUANLI_TEST_PG): scripts/test.sh starts it")
        pytest.skip("no PostgreSQL test server; run scripts/test.sh, which starts one")
    return PG


@pytest.fixture
def pg_db(pg: str) -> Iterator[str]:
    """A fresh database owned by the admin role suanli_admin; returns its name."""
    name = "t_" + secrets.token_hex(4)
    _super(f"CREATE DATABASE {name} OWNER suanli_admin")
    yield name
    _super(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(params=["sqlite", "postgres"])
def ledger_url(request: pytest.FixtureRequest, home: Path, monkeypatch: pytest.MonkeyPatch) -> str | None:
    """The ledger URL for this run (None: SQLite under SUANLI_HOME), also exported as SUANLI_LEDGER_URL."""
    if request.param == "sqlite":
        monkeypatch.delenv("SUANLI_LEDGER_URL", raising=False)
        return None
    db = request.getfixturevalue("pg_db")
    url = _pg_url("suanli_admin", db)
    monkeypatch.setenv("SUANLI_LEDGER_URL", url)
    return url


@pytest.fixture
def ledger(ledger_url: str | None, home: Path) -> Iterator[Ledger]:
    led = Ledger(ledger_url, home)
    yield led
    led.close()


def rec(i: int, account: str = "lab", cpu_s: float = 3600.0, end: float | None = None, kind: str | None = None,
        acc_s: float = 0.0, user: str = "u1", cluster: str = "c1") -> UsageRecord:
    end = time.time() - 60 if end is None else end
    return UsageRecord(
        record_id=f"{cluster}|{i}|0|0", cluster=cluster, backend="slurm", native_id=str(i), job_id=None,
        array_task=None, attempt=0, user=user, account=account, partition="p", adapter=None, accelerator_kind=kind,
        nodes=1, cpus=1, accelerators=1 if kind else 0, submit_time=end - 100, start_time=end - 90, end_time=end,
        elapsed_s=90.0, state="COMPLETED", cpu_seconds=cpu_s, accelerator_seconds=acc_s, charge=cpu_s / 3600,
        total_cpu_s=None, source="test",
    )


def est(cpus: int = 1, hours: float = 1.0, tasks: int = 1, acc: str | None = None) -> Any:
    res = Resources(cpus_per_task=cpus, time=f"{int(hours * 60)}m", accelerators=acc or 0)
    return worst_case(res, tasks, 1.0, 2.0)


# ---------------------------------------------------------------- sacct parsing (real captured outputs)
def test_parse_real_gpu_jobs_with_totalcpu() -> None:
    stats = ParseStats()
    with open(FIX / "hb-jobinfo__sacct_snowman-delim_EXCERPT.txt") as fh:
        recs = list(parse_usage(fh, "hb", delimiter="☃", header=HB_HEADER, stats=stats))
    assert stats.records == len(recs) > 10 and stats.bad == 0 and stats.steps > 0
    gpu = {r.native_id: r for r in recs if r.accelerators}
    r = gpu["7965768"]  # AllocTRES billing=8,cpu=8,gres/gpu:v100=1,gres/gpu=1; Elapsed 15:28:22
    assert (r.accelerator_kind, r.accelerators, r.cpus) == ("nvidia", 1, 8)
    assert r.elapsed_s == 15 * 3600 + 28 * 60 + 22
    assert r.cpu_seconds == 8 * r.elapsed_s  # CPUTime 5-03:46:56
    assert r.accelerator_seconds == r.elapsed_s and r.total_cpu_s == 15 * 3600 + 33 * 60 + 59
    assert r.state == "CANCELLED"  # "CANCELLED by 10314909"
    tasks = [r for r in recs if r.array_task is not None]
    assert tasks and all(r.native_id and "_" in r.native_id for r in tasks)


def test_parse_steps_skipped_and_strange_input_kept(caplog: pytest.LogCaptureFixture) -> None:
    lines = (FIX / "tdhock-slurm__sacct-manyfields.txt").read_text().splitlines(keepends=True)
    recs = list(parse_usage(lines, "x"))
    assert [(r.native_id, r.state, r.cpus, r.elapsed_s, r.account) for r in recs] == [
        ("32641375", "TIMEOUT", 1, 3629.0, "rpp-kenclark_cpu")]
    # The same real line with a state this parser has never seen, plus a truncated line: kept / skipped, logged.
    odd = lines[1].replace("|TIMEOUT", "|LUNAR_ECLIPSE")
    stats = ParseStats()
    recs = list(parse_usage([lines[0], odd, "32641376|broken\n", lines[1]], "x", stats=stats))
    assert [r.state for r in recs] == ["LUNAR_ECLIPSE", "TIMEOUT"]
    assert stats.bad == 1 and stats.unknown_states == {"LUNAR_ECLIPSE"}
    assert "LUNAR_ECLIPSE" in caplog.text


def test_running_and_pending_are_not_booked() -> None:
    lines = (FIX / "tdhock-slurm__sacct-multitype.txt").read_text().splitlines(keepends=True)
    stats = ParseStats()
    recs = list(parse_usage(lines, "x", stats=stats))
    assert all(r.end_time is not None for r in recs)
    assert stats.open >= 1 and stats.open_jobs


# ---------------------------------------------------------------- the ledger, on both databases
def test_record_upsert_is_idempotent_and_reports_sum(ledger: Ledger) -> None:
    records = [rec(i, account="a" if i % 2 else "b", cpu_s=100.0 * i) for i in range(1, 201)]
    assert ledger.record(records, batch=37) == 200
    first = ledger.totals()
    ledger.record(records[50:150], batch=7)
    assert ledger.totals() == first == {"records": 200, "cpu_seconds": 100.0 * sum(range(1, 201)),
                                        "accelerator_seconds": 0.0, "charge": first["charge"]}
    rows = ledger.report(["account", "month"])
    assert {r["account"] for r in rows} == {"a", "b"}
    assert sum(r["jobs"] for r in rows) == 200
    assert abs(sum(r["cpu_hours"] for r in rows) * 3600 - first["cpu_seconds"]) < 1e-6
    assert ledger.report(["account"], since=time.time() + 10) == []
    with pytest.raises(UsageError, match="--by 'colour'"):
        ledger.report(["colour"])


def test_quota_admission_reserves_and_refuses_with_the_issue_message(ledger: Ledger) -> None:
    now = time.strftime("%Y-%m")
    ledger.set_quota(Quota(account="ai-lab", accelerator_hours={"ascend": 500.0}), "admin")
    ledger.record([rec(i, account="ai-lab", kind="ascend", acc_s=100 * 3600.0) for i in range(3)])  # 300 used
    big = est(hours=15, acc="ascend:8")  # 8 x 15 = 120 accelerator-hours
    ledger.admit(job_id="j1", cluster="c1", account="ai-lab", user="u1", est=big)  # 300 + 120 <= 500
    with pytest.raises(QuotaExceeded) as e:
        ledger.admit(job_id="j2", cluster="c1", account="ai-lab", user="u1", est=big)
    assert str(e.value) == (f"quota: account ai-lab may use up to 120.0 ascend accelerator-hours with this job; "
                            f"80.0 of 500.0 remain in {now}")
    assert [r["job_id"] for r in ledger.reservations()] == ["j1"]
    # The job ends: its reservation is replaced by what it really used.
    ledger.record([rec(10, account="ai-lab", kind="ascend", acc_s=3600.0)], release_jobs=["j1"])
    assert ledger.reservations() == []
    ledger.admit(job_id="j3", cluster="c1", account="ai-lab", user="u1", est=big)
    # Other accounts and untimed jobs.
    assert ledger.admit(job_id="j4", cluster="c1", account="other", user="u1", est=est(hours=1000)) == []
    with pytest.raises(UsageError, match="needs a time limit; add --time"):
        ledger.admit(job_id="j5", cluster="c1", account="ai-lab", user="u1",
                     est=worst_case(Resources(), 1, 0.0, 0.0))


def test_quota_scopes_periods_and_overlaps(ledger: Ledger) -> None:
    q = ledger.set_quota(Quota(account="lab", cpu_hours=10), "admin")
    same = ledger.set_quota(Quota(account="lab", cpu_hours=20), "admin")  # same scope and dates: an update
    assert same.id == q.id and ledger.quotas()[0].cpu_hours == 20
    with pytest.raises(UsageError, match="overlaps quota"):
        ledger.set_quota(Quota(account="lab", period="total", start="2026-01-01", cpu_hours=5), "admin")
    ledger.set_quota(Quota(account="lab", user="u2", cluster="c2", cpu_hours=1), "admin")  # another scope
    ledger.admit(job_id="a", cluster="c1", account="lab", user="u2", est=est(cpus=2))  # u2 limit is on c2 only
    with pytest.raises(QuotaExceeded, match="account lab user u2 on c2 may use up to 2.0 cpu-hours"):
        ledger.admit(job_id="b", cluster="c2", account="lab", user="u2", est=est(cpus=2))
    # A total quota over dates in the past is not in force now.
    old = ledger.set_quota(Quota(account="old", period="total", start="2020-01-01", end="2021-01-01",
                                 cpu_hours=0), "admin")
    assert ledger.admit(job_id="c", cluster="c1", account="old", user="u", est=est()) == []
    assert ledger.remove_quotas(quota_id=old.id) == 1
    for bad, match in ((dict(cpu_hours=-1), "at least 0"), (dict(period="week", cpu_hours=1), "month or total"),
                       (dict(), "give at least one limit"),
                       (dict(start="2026-02-01", end="2026-01-01", cpu_hours=1), "before --end")):
        with pytest.raises(UsageError, match=match):
            Quota(account="x", **bad)  # type: ignore[arg-type]


def test_sixteen_racing_submitters_never_overrun(ledger: Ledger, ledger_url: str | None, home: Path) -> None:
    """16 processes ask at once for 1 cpu-hour each against 5 remaining: exactly 5 pass."""
    ledger.set_quota(Quota(account="race", cpu_hours=5), "admin")
    ledger.close()
    # The real submission path, which reserves; jobs that outlast the race (admission settles ended ones).
    cmd = [sys.executable, "-m", "suanli", "submit", "-A", "race", "-t", "1h", "--json", "--", "sleep", "120"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(16)]
    codes = [p.wait(timeout=120) for p in procs]
    errors = [p.stderr.read() for p in procs if p.stderr]  # type: ignore[union-attr]
    assert sorted(codes) == [0] * 5 + [3] * 11, errors
    assert sum("quota: account race may use up to 1.0 cpu-hours" in e for e in errors) == 11
    led = Ledger(ledger_url, home)
    assert len(led.reservations()) + led.totals()["records"] >= 5
    checks = led.quota_status("race")
    assert checks[0].used + checks[0].reserved <= 5 + 1e-9
    led.close()


def test_local_jobs_are_booked_when_they_end(ledger: Ledger, client: Any) -> None:
    ledger.set_quota(Quota(account="lab", cpu_hours=10), "admin")
    job = client.submit(["sleep", "0.3"], account="lab", time="1h", cpus_per_task=2)
    assert [r["job_id"] for r in ledger.reservations()] == [job.id]
    job.wait(timeout=60)
    assert ledger.reservations() == []
    [row] = ledger.report(["job"])
    assert row["job_id"] == job.id and row["state"] == "COMPLETED"
    info = job.info()
    assert abs(row["cpu_hours"] * 3600 - 2 * (info.ended_at - info.started_at)) < 1e-3
    before = ledger.totals()
    client.accounts.sync("local")
    client.accounts.sync("local")
    assert ledger.totals() == before


def test_cli_quota_usage_json_csv_plot(ledger: Ledger, tmp_path: Path) -> None:
    r = run_cli("quota", "set", "--account", "lab", "--cpu-hours", "12", "--accelerator-hours", "ascend:5",
                "--charge", "30")
    assert r.returncode == 0, r.stderr
    for bad, msg in ((["--cpu-hours", "lots"], "--cpu-hours 'lots' is not a number"),
                     (["--cpu-hours", "-3"], "at least 0"),
                     (["--accelerator-hours", "tpu:3"], "KIND one of ascend, dcu, nvidia"),
                     (["--start", "tomorrow", "--cpu-hours", "1"], "--start 'tomorrow' is not a date")):
        r = run_cli("quota", "set", "--account", "lab2", *bad)
        assert r.returncode == 2 and msg in r.stderr and "Traceback" not in r.stderr, r.stderr
    ledger.record([rec(i, account="lab", cpu_s=3600.0, end=time.time() - 86400 * i) for i in range(1, 4)])
    r = run_cli("quota", "show", "--json")
    rows = __import__("json").loads(r.stdout)
    cpu = next(x for x in rows if x["resource"] == "cpu_hours")
    assert cpu["limit"] == 12 and cpu["remaining"] == 12 - cpu["used"]
    r = run_cli("usage", "--by", "account,day", "--json")
    days = __import__("json").loads(r.stdout)
    assert sum(d["cpu_hours"] for d in days) == pytest.approx(3.0) and all("day" in d for d in days)
    r = run_cli("usage", "--by", "account", "--csv")
    assert r.stdout.splitlines()[0] == "account,jobs,cpu_hours,accelerator_hours,charge"
    png = tmp_path / "u.png"
    r = run_cli("usage", "--by", "account,day", "--plot", str(png))
    assert r.returncode == 0, r.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    r = run_cli("usage", "--since", "last tuesday")
    assert r.returncode == 2 and "--since: 'last tuesday' is not an ISO 8601" in r.stderr
    r = run_cli("quota", "rm", "--account", "lab")
    assert r.returncode == 0 and run_cli("quota", "show", "--json").stdout.strip() == "[]"


# ---------------------------------------------------------------- faults
def test_unreachable_ledger_refuses_unless_allowed(home: Path, tmp_path: Path) -> None:
    env = {"SUANLI_LEDGER_URL": "postgresql://nobody@127.0.0.1:9/none"}
    r = run_cli("submit", "-A", "lab", "-t", "1h", "--", "true", env=env)
    assert r.returncode == 4, r.stderr
    assert "cannot connect" in r.stderr and "on_ledger_error: allow" in r.stderr
    assert run_cli("status", "--json").stdout.strip() == "[]"  # nothing submitted
    r = run_cli("submit", "-A", "lab", "-t", "1h", "--", "true", env={**env, "SUANLI_ON_LEDGER_ERROR": "allow"})
    assert r.returncode == 0 and "submitting without a quota check" in r.stderr


def test_corrupt_and_locked_sqlite_give_clear_errors(home: Path) -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / "ledger.db").write_bytes(b"this is not sqlite" * 100)
    r = run_cli("quota", "show")
    assert r.returncode == 4 and "corrupt or not a SQLite database" in r.stderr, r.stderr
    r = run_cli("submit", "-A", "lab", "-t", "1h", "--", "true")
    assert r.returncode == 4 and run_cli("status", "--json").stdout.strip() == "[]"
    (home / "ledger.db").unlink()
    holder = Ledger(None, home)
    holder.set_quota(Quota(account="lab", cpu_hours=1), "admin")
    waiter = Ledger(None, home, lock_wait_s=0.5)
    with holder.db.transaction(lock="x"):
        t0 = time.monotonic()
        with pytest.raises(LedgerError, match="locked by another process"):
            waiter.admit(job_id="j", cluster="c", account="lab", user="u", est=est())
        assert time.monotonic() - t0 < 5
    holder.close()
    waiter.close()


# ---------------------------------------------------------------- PostgreSQL roles
def test_postgres_roles_enforce_who_may_change_what(pg_db: str, home: Path) -> None:
    admin = Ledger(_pg_url("suanli_admin", pg_db), home)
    admin.set_quota(Quota(account="lab", cpu_hours=3), "suanli_admin")  # migrates: tables owned by the admin role
    with admin.db.transaction() as tx:
        tx.execute("GRANT suanli_user TO alice")
    alice = Ledger(_pg_url("alice", pg_db), home)
    # An ordinary role records its own reservation and usage ...
    alice.admit(job_id="ja", cluster="c1", account="lab", user="alice", est=est())
    alice.record([rec(1, account="lab", user="alice")], release_jobs=["ja"])
    assert alice.reservations() == [] and alice.totals()["records"] == 1
    # ... but may not change quotas, nor other users' records.
    with pytest.raises(LedgerPermissionError, match="role alice may not do this"):
        alice.set_quota(Quota(account="lab", cpu_hours=1000), "alice")
    with pytest.raises(LedgerPermissionError):
        alice.remove_quotas(account="lab")
    with pytest.raises(LedgerPermissionError, match="row-level security"):
        alice.record([rec(2, account="lab", user="bob")])
    admin.admit(job_id="jb", cluster="c1", account="lab", user="bob", est=est())
    alice.release(["jb"])  # silently limited to her own rows
    assert [r["job_id"] for r in admin.reservations()] == ["jb"]
    r = run_cli("quota", "set", "--account", "lab", "--cpu-hours", "99",
                env={"SUANLI_LEDGER_URL": _pg_url("alice", pg_db)})
    assert r.returncode == 2
    assert "only the ledger's admin role may change quotas" in r.stderr and "Traceback" not in r.stderr
    assert admin.quotas()[0].cpu_hours == 3
    alice.close()
    admin.close()


# ---------------------------------------------------------------- Slurm: sync, booking, association limits

def _sacctmgr(slurm_conf: str, *args: str) -> str:
    r = subprocess.run(["sacctmgr", "-i", "-n", "-P", *args], capture_output=True, text=True,
                       env=dict(os.environ, SLURM_CONF=slurm_conf), timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.mark.slurm
def test_slurm_sync_is_idempotent_and_survives_a_kill(slurm: Any, slurm_conf: str, ledger: Ledger,
                                                       ledger_url: str | None, tmp_path: Path) -> None:
    ledger.set_quota(Quota(account="acct-a", cpu_hours=1000), "admin")
    arr = slurm.map(abs, [-1, -2, -3], time="5m")
    job = slurm.submit(["sleep", "2"], time="5m", cpus_per_task=2)
    assert len(ledger.reservations()) == 2
    # A job not submitted through suanli: only an --all-users sync books it.
    env = dict(os.environ, SLURM_CONF=slurm_conf)
    raw = subprocess.run(["sbatch", "--parsable", "-A", "acct-b", "-t", "5", "--wrap", "true", "-o", "/dev/null"],
                         capture_output=True, text=True, env=env, check=True).stdout.strip()
    assert arr.results(timeout=120) == [1, 2, 3] and job.wait(timeout=120).value == "COMPLETED"
    deadline = time.time() + 60
    while "COMPLETED" not in subprocess.run(["sacct", "-n", "-X", "-j", raw, "-o", "State"], capture_output=True,
                                            text=True, env=env).stdout:
        assert time.time() < deadline
        time.sleep(1)
    assert ledger.reservations() == []  # booked when the jobs ended (status/wait saw them end)
    booked = {r["job_id"] for r in ledger.report(["job"])}
    assert {arr.id, job.id} <= booked
    since = time.time() - 3600
    slurm.accounts.sync("testslurm", since=since, all_users=True)
    first = ledger.totals("testslurm")
    jobs = {r["job"]: r for r in ledger.report(["job"], cluster="testslurm")}
    assert raw in jobs and jobs[raw]["job_id"] is None  # not a suanli job, booked anyway
    assert jobs[job.info().native_id]["cpu_hours"] * 3600 >= 2 * 2  # 2 CPUs x at least 2 s
    slurm.accounts.sync("testslurm", since=since, all_users=True)
    assert ledger.totals("testslurm") == first
    # A sync killed with SIGKILL at some point, then run again, ends with the same totals.
    cfg = Path(os.environ["SUANLI_CONFIG"])
    proc = subprocess.Popen([sys.executable, "-m", "suanli", "--config", str(cfg), "accounting", "sync",
                             "--cluster", "testslurm", "--since", "1h", "--all-users"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    # Killed once it is reading sacct (its sacct child is up), i.e. mid-sync; if it ended first, that is a
    # finished sync and the totals must match all the same.
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        kids = subprocess.run(["pgrep", "-P", str(proc.pid), "sacct"], capture_output=True).returncode == 0
        if kids:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    r = run_cli("accounting", "sync", "--cluster", "testslurm", "--since", "1h", "--all-users", "--json")
    assert r.returncode == 0, r.stderr
    assert ledger.totals("testslurm") == first


@pytest.mark.slurm
def test_quota_apply_makes_slurm_enforce_the_limit(slurm: Any, slurm_conf: str, ledger: Ledger) -> None:
    ledger.set_quota(Quota(account="acct-b", cluster="testslurm", cpu_hours=1, accelerator_hours={"ascend": 2}),
                     "admin")
    ledger.set_quota(Quota(account="acct-b", user="ghost", period="total", start="2020-01-01", end="2021-01-01",
                           cpu_hours=1), "admin")  # long over: never applied
    env = dict(os.environ, SLURM_CONF=slurm_conf)
    try:
        r = run_cli("quota", "apply", "--cluster", "testslurm", "--json")
        assert r.returncode == 0, r.stderr
        out = __import__("json").loads(r.stdout)
        assert [c[-1] for c in out["commands"]] == ["GrpTRESMins=cpu=60,gres/npu=120"] and out["warnings"] == []
        limits = _sacctmgr(slurm_conf, "show", "assoc", "where", "account=acct-b", "format=User,GrpTRESMins")
        assert "cpu=60" in limits and "gres/npu=120" in limits
        # 2 CPUs x 1 h = 120 cpu-minutes > 60: Slurm itself holds a job that bypasses suanli.
        jid = subprocess.run(["sbatch", "--parsable", "-A", "acct-b", "-c", "2", "-t", "60", "--wrap", "true",
                              "-o", "/dev/null"], capture_output=True, text=True, env=env, check=True).stdout.strip()
        deadline = time.time() + 60
        reason = ""
        while time.time() < deadline:
            reason = subprocess.run(["squeue", "-h", "-j", jid, "-o", "%r"], capture_output=True, text=True,
                                    env=env).stdout.strip()
            if reason.startswith("AssocGrp"):
                break
            time.sleep(1)
        subprocess.run(["scancel", jid], env=env)
        assert reason == "AssocGrpCPUMinutesLimit"
        ledger.set_quota(Quota(account="acct-a", period="total", cluster="testslurm", cpu_hours=10_000), "admin")
        r = run_cli("quota", "apply", "--cluster", "testslurm", "--dry-run")
        assert "would run: sacctmgr -i modify account where name=acct-a" in r.stdout
        assert "Slurm resets usage MONTHLY" in r.stderr  # a total quota vs a monthly reset
        r = run_cli("quota", "apply", "--cluster", "local")
        assert r.returncode == 2 and "only Slurm enforces quotas itself" in r.stderr
    finally:
        for acct in ("acct-a", "acct-b"):
            _sacctmgr(slurm_conf, "modify", "account", "where", f"name={acct}", "set",
                      "GrpTRESMins=cpu=-1,gres/npu=-1")


def test_cli_help_lists_the_accounting_verbs() -> None:
    r = subprocess.run([sys.executable, "-m", "suanli", "--help"], capture_output=True, text=True, cwd=REPO)
    for verb in ("usage", "quota", "accounting"):
        assert verb in r.stdout


# ---------------------------------------------------------------- review findings, kept as tests
def test_split_array_reservation_released_only_when_every_part_is_booked(ledger: Ledger) -> None:
    ledger.set_quota(Quota(account="lab", cpu_hours=100), "admin")
    for job, native in (("split", "100,200"), ("single", "300")):
        ledger.admit(job_id=job, cluster="c1", account="lab", user="u1", est=est())
        ledger.bind(job, native)
    ledger.record([rec(100)], release_native=("c1", ["100", "300"]))  # part 200 still running
    assert [r["job_id"] for r in ledger.reservations()] == ["split"]
    ledger.record([rec(200)], release_native=("c1", ["200", "100"]))
    assert ledger.reservations() == []


def test_limits_a_job_does_not_draw_on_never_refuse_it(ledger: Ledger) -> None:
    ledger.set_quota(Quota(account="lab", cpu_hours=100, accelerator_hours={"ascend": 10}), "admin")
    ledger.record([rec(1, account="lab", kind="ascend", acc_s=12 * 3600.0)])  # overdrawn by plain sbatch jobs
    ledger.admit(job_id="cpu-only", cluster="c1", account="lab", user="u1", est=est())
    with pytest.raises(QuotaExceeded, match="ascend accelerator-hours"):
        ledger.admit(job_id="npu", cluster="c1", account="lab", user="u1", est=est(acc="ascend:1"))


def test_quota_show_lists_quotas_not_in_force(ledger: Ledger) -> None:
    ledger.set_quota(Quota(account="lab", period="total", start="2099-01-01", end="2099-02-01", cpu_hours=5), "a")
    [c] = ledger.quota_status()
    assert c.window == "not in force (2099-01-01..2099-02-01)" and c.limit == 5


def test_usage_written_from_another_time_zone_still_counts(ledger: Ledger) -> None:
    """A record's month is its writer's local month; a reader elsewhere must still find it in its window."""
    ledger.set_quota(Quota(account="lab", cpu_hours=100), "admin")
    lt = time.localtime()
    t = time.mktime((lt.tm_year, lt.tm_mon, 1, 1, 0, 0, 0, 0, -1))  # 01:00 on the 1st here, which was
    prev = time.strftime("%Y-%m-%d", time.localtime(t - 2 * 3600))  # still last month two hours west
    r = rec(1, account="lab", cpu_s=7200.0, end=t)
    r.booked_day = prev  # as if written where it was still last month
    ledger.record([r])
    [c] = ledger.quota_status()
    assert c.used == pytest.approx(2.0)


def test_status_does_not_wait_long_for_a_busy_sqlite_ledger(client: Any, home: Path) -> None:
    """SQLite only: another process holding its write lock (PostgreSQL has no such file lock)."""
    ledger = Ledger(None, home)
    ledger.set_quota(Quota(account="lab", cpu_hours=10), "admin")
    job = client.submit(["true"], account="lab", time="1h")
    deadline = time.time() + 30
    while not (home / "jobs" / job.id / "state.json").exists() or '"COMPLETED"' not in \
            (home / "jobs" / job.id / "state.json").read_text():
        assert time.time() < deadline
        time.sleep(0.1)
    holder = Ledger(None, home)
    with holder.db.transaction(lock="hold"):
        t0 = time.monotonic()
        assert job.status().value == "COMPLETED"
        assert time.monotonic() - t0 < 3
    holder.close()
    assert [r["job_id"] for r in ledger.reservations()] == [job.id]  # not booked yet: kept, retried later
    client.submit(["true"], time="1m").wait(timeout=60)  # the next job that ends retries it
    assert ledger.reservations() == []
    ledger.close()


def test_cli_odd_inputs_give_one_clear_line(home: Path) -> None:
    r = run_cli("submit", "-A", "lab", "-t", "1h", "--", "true", env={"SUANLI_LEDGER_URL": "postgresql://u@[bad"})
    assert r.returncode == 4 and "the URL is malformed" in r.stderr and "Traceback" not in r.stderr
    # A job without an account has no quota to check: an unreachable ledger does not stop it.
    r = run_cli("submit", "--", "true", env={"SUANLI_LEDGER_URL": "postgresql://nobody@127.0.0.1:9/none"})
    assert r.returncode == 0, r.stderr
    r = run_cli("usage", "--cluster", "nope")
    assert r.returncode == 2 and "--cluster 'nope' is neither configured nor in the ledger" in r.stderr
    assert run_cli("usage", "--since", "7d", "--json").returncode == 0


def test_postgres_users_cannot_lower_booked_usage(pg_db: str, home: Path) -> None:
    admin = Ledger(_pg_url("suanli_admin", pg_db), home)
    admin.set_quota(Quota(account="lab", cpu_hours=3), "suanli_admin")
    with admin.db.transaction() as tx:
        tx.execute("GRANT suanli_user TO alice")
    alice = Ledger(_pg_url("alice", pg_db), home)
    alice.record([rec(1, account="lab", user="alice", cpu_s=3 * 3600.0)])
    alice.record([rec(1, account="lab", user="alice", cpu_s=0.0)])  # the same record again, lowered: ignored
    assert admin.totals()["cpu_seconds"] == 3 * 3600.0
    with pytest.raises(LedgerPermissionError), alice.db.transaction() as tx:
        tx.execute("DELETE FROM usage_records WHERE user_name = 'alice'")
    with pytest.raises(QuotaExceeded):
        alice.admit(job_id="j", cluster="c1", account="lab", user="alice", est=est())
    # Her own sync of the local registry works (its mark is hers).
    r = run_cli("accounting", "sync", "--cluster", "local", env={"SUANLI_LEDGER_URL": _pg_url("alice", pg_db)})
    assert r.returncode == 0, r.stderr
    alice.close()
    admin.close()
