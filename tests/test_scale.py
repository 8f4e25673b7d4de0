"""The "Scale" issue: polls that cost per sacct row (not per task), an accurate and configurable submission
throttle, and `suanli status` that reads only the jobs it shows. No test here times anything."""

from __future__ import annotations

import json
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import run_cli

from suanli.compute.slurm import parse
from suanli.compute.slurm.backend import DEFAULT_SUBMIT_RATE, SUBMIT_BURST, TokenBucket
from suanli.compute.store import Store
from suanli.jobs.state import JobState


# ---------------------------------------------------------------- the throttle
class FakeTime:
    """A clock that moves only when told (sleeping moves it), so the bucket's spacing is exact to check."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.slept.append(s)
        self.now += s


@pytest.mark.parametrize("call_s", [0.0, 0.004, 0.015])
def test_token_bucket_sustains_its_rate_exactly(call_s: float) -> None:
    t = FakeTime()
    bucket = TokenBucket(rate=50.0, capacity=20.0, clock=t.clock, sleep=t.sleep)
    for _ in range(20):  # the burst passes at once
        bucket.take()
    assert t.slept == []
    start = t.now
    for _ in range(500):
        bucket.take()
        t.now += call_s  # the sbatch call itself
    # 500 calls at 50/s take 10 s (the burst's refill while the calls ran is the only slack), never ~5 s:
    # the old bucket counted each sleep again as refill and ran at twice its rate.
    elapsed = t.now - start
    assert 10.0 - 20 / 50 - 1e-6 <= elapsed <= 10.0 + 2 * call_s + 1e-6, elapsed
    assert all(s <= 1 / 50 + 1e-9 for s in t.slept)


def test_token_bucket_refills_after_a_pause_but_no_more_than_its_capacity() -> None:
    t = FakeTime()
    bucket = TokenBucket(rate=10.0, capacity=5.0, clock=t.clock, sleep=t.sleep)
    for _ in range(5):
        bucket.take()
    t.now += 3600  # an hour idle refills the burst, not 36,000 tokens
    for _ in range(5):
        bucket.take()
    assert t.slept == []
    bucket.take()
    assert t.slept == [pytest.approx(0.1)]


def write_cluster(cfg: Path, name: str, slurm_extra: str) -> Path:
    cfg.mkdir(exist_ok=True)
    path = cfg / f"{name}.yaml"
    path.write_text(f"name: {name}\nbackend: slurm\nslurm:\n  conf: /nonexistent/slurm.conf\n{slurm_extra}"
                    "partitions:\n  - {name: debug, nodes: 1, cpus_per_node: 4}\n")
    (cfg / "settings.yaml").write_text(f"default_cluster: {name}\n")
    return path


def test_submit_rate_comes_from_the_cluster_config(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "cfg"
    write_cluster(cfg, "slow", "  submit_rate: 2.5\n")
    write_cluster(cfg, "plain", "")
    (cfg / "settings.yaml").write_text("default_cluster: plain\n")
    monkeypatch.setenv("SUANLI_CONFIG", str(cfg))
    from suanli.api import Client

    client = Client()
    slow = client.backend("slow", "slurm")
    plain = client.backend("plain", "slurm")
    assert slow.bucket.rate == 2.5  # type: ignore[attr-defined]
    assert plain.bucket.rate == DEFAULT_SUBMIT_RATE >= 50  # type: ignore[attr-defined]
    assert slow.bucket is not plain.bucket  # type: ignore[attr-defined]
    # Every client of the process shares a cluster's bucket: two loops cannot each take the whole rate.
    assert Client().backend("slow", "slurm").bucket is slow.bucket  # type: ignore[attr-defined]
    assert plain.bucket.capacity == SUBMIT_BURST  # type: ignore[attr-defined]


@pytest.mark.parametrize("value", ["fast", "0", "-3", "5000", "true", ".nan"])
def test_bad_submit_rate_exits_2_naming_file_and_line(home: Path, tmp_path: Path, value: str) -> None:
    cfg = tmp_path / "cfg"
    path = write_cluster(cfg, "bad", f"  submit_rate: {value}\n")
    r = run_cli("submit", "--", "true", env={"SUANLI_CONFIG": str(cfg)})
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{path}:5:" in lines[0] and "submit_rate" in lines[0], r.stderr
    assert not (home / "registry.db").exists() or not Store(home).query()


# ---------------------------------------------------------------- polling
def test_a_pending_range_stays_one_run() -> None:
    text = ("123_[0-49999%1]|123|PENDING|0:0|Unknown|Unknown|JobHeldUser\n"
            "124_7|124|RUNNING|0:0|2026-11-27T10:00:00|Unknown|None\n"
            "124_[0-6,8-20]|124|PENDING|0:0|Unknown|Unknown|Priority\n"
            "124_3|124|COMPLETED|0:0|2026-11-27T10:00:00|2026-11-27T10:01:00|None\n")
    runs = parse.parse_sacct_runs(text)
    spans = sorted((r.state.job, r.lo, r.hi, r.state.state.value) for r in runs)
    assert spans == [("123", 0, 49999, "PENDING"), ("124", 0, 2, "PENDING"), ("124", 3, 3, "COMPLETED"),
                     ("124", 4, 6, "PENDING"), ("124", 7, 7, "RUNNING"), ("124", 8, 20, "PENDING")]
    # The expanded form is what it always was.
    states = {(s.job, s.task): s.state for s in parse.parse_sacct(text)}
    assert len(states) == 50000 + 21 and states[("124", 3)] is JobState.COMPLETED


def test_polling_a_split_array_reads_no_task_rows(slurm: Any) -> None:
    """A poll hands sacct's ranges to SQLite, which compares and writes them: not one task row is read into
    Python (the old poll read every task and tested each against a tuple of all live tasks)."""
    job = slurm.submit(["sleep", "300"], array="0-24%1", time="5m", cluster="testslurm-small")
    try:
        rows = slurm.store.query(ids=[job.id])
        assert len(rows[0].native_id.split(",")) == 3  # MaxArraySize 10 there: three Slurm arrays
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # until sacct lists the arrays (slurmdbd lags behind sbatch)
            infos = slurm.list_infos(slurm.store.query(ids=[job.id]))
            if any(i.state is JobState.RUNNING for i in infos):
                break
            time.sleep(0.3)
        statements: list[str] = []
        conn = slurm.store._connect()
        conn.set_trace_callback(statements.append)
        try:
            slurm.refresh(slurm.store.query(ids=[job.id]))
        finally:
            conn.set_trace_callback(None)
        reads = [s for s in statements if s.lstrip().upper().startswith("SELECT") and " FROM tasks" in s]
        assert reads == [], reads
        infos = slurm.store.infos(slurm.store.query(ids=[job.id]))
        assert [i.array_task for i in infos] == list(range(25))
        assert {i.state for i in infos} <= {JobState.PENDING, JobState.RUNNING}
        pending = [i for i in infos if i.state is JobState.PENDING]
        assert len(pending) >= 22 and all(i.reason != "Submitting" for i in pending), pending[:3]
    finally:
        job.cancel()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        infos = slurm.list_infos(slurm.store.query(ids=[job.id]))
        if all(i.state.is_terminal for i in infos):
            break
        time.sleep(0.5)
    assert {i.state for i in infos} == {JobState.CANCELLED}
    assert slurm.store.query(ids=[job.id])[0].done


# ---------------------------------------------------------------- status over a large registry
def fill(home: Path, old: int, recent: int) -> None:
    store = Store(home)
    now = time.time()
    with store._write() as c:
        for i in range(old + recent):
            at = now - (3 * 86400 if i < old else 60) + i
            c.execute("INSERT INTO jobs (id, name, cluster, backend, native_id, kind, submitted_at, job_dir, meta, "
                      "done) VALUES (?,?,?,?,?,?,?,?,?,1)", (f"j{i:05d}", f"job{i}", "local", "local", f"j{i:05d}",
                                                              "command", at, "/x", "{}"))
            c.execute("INSERT INTO tasks (job_id, task, state, started_at, ended_at, exit_code) "
                      "VALUES (?,-1,'COMPLETED',?,?,0)", (f"j{i:05d}", at + 1, at + 2))
    store.close()


def test_default_status_finds_recent_jobs_by_index(home: Path) -> None:
    fill(home, 300, 3)
    store = Store(home)
    statements: list[str] = []
    conn = store._connect()
    conn.set_trace_callback(statements.append)
    rows = store.query(open_or_since=time.time() - 86400)
    conn.set_trace_callback(None)
    assert [r.id for r in rows] == ["j00300", "j00301", "j00302"]
    (sql,) = [s for s in statements if "FROM jobs" in s]
    plan = " | ".join(r[-1] for r in conn.execute("EXPLAIN QUERY PLAN " + sql))
    # Every step is an index search: no pass over all jobs or all tasks (the old OR scanned both).
    assert "SCAN jobs" not in plan and "SCAN tasks" not in plan, plan
    assert "tasks_ended" in plan, plan
    out = run_cli("status", "--json")
    assert out.returncode == 0, out.stderr
    assert [j["id"] for j in json.loads(out.stdout)] == ["j00300", "j00301", "j00302"]


def test_an_older_registry_gets_the_new_index_in_place(home: Path) -> None:
    from suanli.compute import store_schema as st

    home.mkdir(parents=True)
    conn = sqlite3.connect(home / "registry.db")
    for v in (1, 2):
        conn.executescript(st._MIGRATIONS[v])
    conn.execute("PRAGMA user_version = 2")
    conn.execute("INSERT INTO jobs (id, name, cluster, backend, kind, submitted_at, job_dir, meta) "
                 "VALUES ('old1', 'o', 'local', 'local', 'command', 1.0, '/x', '{\"a\": 1}')")
    conn.commit()
    conn.close()
    store = Store(home)
    (row,) = store.query()
    assert row.id == "old1" and row.meta.get("a") == 1 and dict(row.meta) == {"a": 1}
    c = store._connect()
    assert c.execute("PRAGMA user_version").fetchone()[0] == st.SCHEMA_VERSION >= 3
    assert c.execute("SELECT 1 FROM sqlite_master WHERE name = 'tasks_ended'").fetchone()


def test_metadata_is_decoded_only_when_read(home: Path) -> None:
    fill(home, 0, 2)
    store = Store(home)
    rows = store.query()
    assert all(r.meta._data is None for r in rows)  # type: ignore[attr-defined]
    assert rows[0].meta.get("missing", 7) == 7 and rows[0].meta._data is None  # type: ignore[attr-defined]
    assert dict(rows[0].meta) == {} and rows[0].meta._data == {}  # type: ignore[attr-defined]


if sys.platform != "linux":  # pragma: no cover
    pytestmark = pytest.mark.skip("the registry tests need Linux")


def test_iso_times_match_datetime_to_the_second() -> None:
    """The fast ``iso`` of ``status --json`` agrees with datetime's formatting, before 1970 and after 2038 too."""
    import random
    from datetime import datetime, timezone

    from suanli.jobs.record import iso

    rng = random.Random(7)
    samples = [0.0, -0.5, 86399.999, 1796000764.2254, 2**31 + 0.5, -86400.0 * 365]
    samples += [rng.uniform(-2e9, 4e9) for _ in range(2000)]
    for ts in samples:
        assert iso(ts) == datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), ts
    assert iso(None) is None
