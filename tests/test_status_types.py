"""The status path's records (issue 12: fewer, named types) and its fast paths (issue 16: `status --all --json`
and `status ARRAY_ID` of a big map), which must print exactly what the plain code prints."""

from __future__ import annotations

import json
import random
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import run_cli

from suanli.compute.base import NativeStatus
from suanli.compute.store import JobRow, Store, TaskRow
from suanli.jobs.record import JobInfo, infos_json
from suanli.jobs.state import JobState

if sys.platform != "linux":  # pragma: no cover
    pytestmark = pytest.mark.skip("the registry tests need Linux")

#: Values a name, reason or account may hold: quotes, backslashes, controls, non-ASCII, bidi marks, emoji.
ODD_TEXT = ["plain", 'say "hi"', "back\\slash", "tab\there", "new\nline", "caf\u00e9", "\u4e2d\u6587", "\u202eevil",
            "\x7fdel", "\x1b[31mred", "emoji \U0001f600", "", " lead", "a/b", "=1+2"]


def _row(jid: str, at: float, **kw: Any) -> JobRow:
    values: dict[str, Any] = dict(id=jid, name=f"n-{jid}", cluster="local", backend="local", native_id=jid,
                                  kind="command", partition="local", account=None, user="u", submitted_at=at,
                                  job_dir=f"/x/{jid}", meta={}, done=False)
    values.update(kw)
    return JobRow(**values)


def _odd_registry(home: Path, n: int = 300, seed: int = 3) -> Store:
    """Jobs and arrays with every kind of value the registry can hold, including what suanli never writes
    (a state it does not know, an exit code stored as text, a time before 1970 or as an integer)."""
    rng = random.Random(seed)
    store = Store(home)
    base = 1_790_000_000.0
    for i in range(n):
        at = base + rng.choice([0.0, 0.999, 1.5, rng.uniform(-3e9, 3e9)])  # ties on submitted_at too
        tasks: list[int | None] = [None] if i % 3 else list(range(rng.randint(1, 4)))
        store.insert(_row(f"j{i:04d}", at, name=rng.choice(ODD_TEXT) or "x", account=rng.choice([None, *ODD_TEXT]),
                          partition=rng.choice([None, "p", "\u00fcber"]), user=rng.choice([None, "u\u00df"])),
                     tasks, JobState.PENDING, rng.choice([None, *ODD_TEXT]))
        updates = []
        for t in tasks:
            st = rng.choice(list(JobState))
            started = rng.choice([None, at + 1, at + 0.25])
            updates.append(((f"j{i:04d}", t), NativeStatus(
                st, reason=rng.choice([None, *ODD_TEXT]), exit_code=rng.choice([None, 0, 1, -9, 2**40]),
                started_at=started, ended_at=None if started is None else started + rng.uniform(0, 9e4),
                restarts=rng.choice([0, 1, 7]), native_id=rng.choice([None, "", f"{i}_{t}"]))))
        store.update_tasks(updates)
    with store._write() as c:  # what only another writer (or an older suanli) leaves behind
        c.execute("UPDATE tasks SET state = 'BOGUS' WHERE job_id = 'j0001'")
        c.execute("UPDATE tasks SET exit_code = '3' WHERE job_id = 'j0002'")
        c.execute("UPDATE tasks SET started_at = 5, ended_at = -86400.5 WHERE job_id = 'j0004'")
        c.execute("UPDATE tasks SET restarts = 1.5 WHERE job_id = 'j0005'")
    return store


# ---------------------------------------------------------------- the types
def test_tasks_are_named_rows_with_none_for_a_plain_job(home: Path) -> None:
    store = Store(home)
    store.insert(_row("plain", 1.0), [None], JobState.PENDING, "Submitting")
    store.insert(_row("arr", 2.0), [0, 5], JobState.PENDING, None)
    tasks = store.tasks(["plain", "arr", "missing"])
    (plain,) = tasks["plain"]
    assert isinstance(plain, TaskRow) and plain.task is None and plain.state is JobState.PENDING
    assert plain.reason == "Submitting" and plain.restarts == 0 and plain.started_at is None
    assert [t.task for t in tasks["arr"]] == [0, 5] and tasks["missing"] == []


def test_update_tasks_takes_what_status_many_answers(home: Path) -> None:
    """No third record of a task's state: the registry takes the backend's own ``NativeStatus`` keyed as
    ``status_many`` keys it, and still never overwrites a final state."""
    import suanli.compute.store as store_module

    assert not hasattr(store_module, "TaskUpdate")
    store = Store(home)
    store.insert(_row("a", 1.0), [0, 1], JobState.PENDING, None)
    store.update_tasks([(("a", 0), NativeStatus(JobState.COMPLETED, exit_code=0, started_at=5.0, ended_at=9.0,
                                                attempts=({"state": "FAILED", "started_at": 1.0},))),
                        (("a", 1), NativeStatus(JobState.RUNNING, started_at=6.0, native_id="77_1"))])
    first, second = store.tasks(["a"])["a"]
    assert (first.state, first.exit_code, first.ended_at) == (JobState.COMPLETED, 0, 9.0)
    assert (second.state, second.native_id) == (JobState.RUNNING, "77_1")
    assert store.attempts(["a"]) == {("a", 0): [{"state": "FAILED", "started_at": 1.0}]}
    assert not store.get("a").done  # type: ignore[union-attr]
    store.update_tasks([(("a", 0), NativeStatus(JobState.RUNNING)),  # an older answer: ignored
                        (("a", 1), NativeStatus(JobState.FAILED, exit_code=3, ended_at=10.0))])
    assert [t.state for t in store.tasks(["a"])["a"]] == [JobState.COMPLETED, JobState.FAILED]
    assert store.get("a").done  # type: ignore[union-attr]


def test_job_info_is_a_light_named_record(home: Path) -> None:
    store = Store(home)
    store.insert(_row("arr", 2.0, native_id="90"), [3], JobState.PENDING, None)
    (info,) = store.infos([store.get("arr")])  # type: ignore[list-item]
    assert isinstance(info, JobInfo) and info.task_id == "arr_3" and info.state is JobState.PENDING
    assert info.native_id == "90" and info._replace(array_task=None).task_id == "arr"
    assert JobInfo(**{**info._asdict(), "state": JobState.FAILED}).state is JobState.FAILED


# ---------------------------------------------------------------- the fast paths print what the plain code prints
def test_infos_json_is_json_dumps_byte_for_byte(home: Path) -> None:
    store = _odd_registry(home)
    infos = store.infos(store.query())
    assert len(infos) > 300 and {i.state for i in infos} >= {JobState.UNKNOWN, JobState.COMPLETED}
    assert infos_json(infos) == json.dumps([i.to_json() for i in infos], default=str)
    assert infos_json([]) == "[]"


def test_one_joined_query_lists_what_rows_and_tasks_give(home: Path) -> None:
    """``infos_where`` (no JobRow built) equals ``infos(query(...))`` for every filter, in the same order, ties
    on the submit time included."""
    store = _odd_registry(home)
    now = 1_790_000_000.0
    filters: list[dict[str, Any]] = [{}, {"cluster": "local"}, {"cluster": "other"}, {"since": now},
                                     {"open_or_since": now + 0.5}]
    for kw in filters:
        assert store.infos_where(**kw) == store.infos(store.query(**kw)), kw


def test_the_listing_query_sorts_only_jobs_submitted_together(home: Path) -> None:
    """``status --all`` reads jobs in submission order through the index and each job's tasks by key: SQLite
    sorts only ties on the submit time (left to itself it scanned the tasks and sorted everything)."""
    store = _odd_registry(home, n=50)
    statements: list[str] = []
    conn = store._connect()
    conn.set_trace_callback(statements.append)
    store.infos_where()
    conn.set_trace_callback(None)
    (sql,) = [s for s in statements if "FROM jobs" in s]
    plan = " | ".join(r[-1] for r in conn.execute("EXPLAIN QUERY PLAN " + sql))
    assert "SCAN j USING INDEX jobs_by_time" in plan and "SEARCH t USING PRIMARY KEY" in plan, plan
    assert "TEMP B-TREE FOR ORDER BY" not in plan, plan  # "... FOR RIGHT PART OF ORDER BY" (ties) is fine


def test_status_all_json_prints_json_dumps_of_every_task(home: Path) -> None:
    store = _odd_registry(home)
    with store._write() as c:
        c.execute("UPDATE jobs SET done = 1")  # nothing to ask a backend about
    expected = json.dumps([i.to_json() for i in store.infos(store.query())], default=str) + "\n"
    store.close()
    out = run_cli("status", "--all", "--json")
    assert out.returncode == 0, out.stderr
    assert out.stdout == expected
    out = run_cli("status", "--all", "--json", "--state", "unknown,completed")
    assert out.returncode == 0, out.stderr
    assert {j["state"] for j in json.loads(out.stdout)} == {"UNKNOWN", "COMPLETED"}


def _plain_status_table(infos: list[JobInfo], per_task: bool) -> str:
    """The table as the plain code builds it: every cell through the generic ``table``."""
    from suanli.cli.commands import _combined
    from suanli.cli.output import duration, local_time, short, table

    rows: list[list[object]] = []
    groups: dict[str, list[JobInfo]] = {}
    for i in infos:
        groups.setdefault(i.id, []).append(i)
    for group in groups.values():
        ended = sum(1 for g in group if g.state.is_terminal)
        for e in group if per_task and len(group) > 1 else [_combined(group)]:
            tasks = ""
            if group[0].array_task is not None:
                tasks = f"{ended}/{len(group)}" if e.array_task is None else str(e.array_task)
            rows.append([e.task_id, short(e.name), e.cluster, e.partition, e.state.value, short(e.reason, 28), tasks,
                         e.restarts or "", local_time(e.submitted_at), duration(e.elapsed),
                         "" if e.exit_code is None else e.exit_code])
    return table(("ID", "NAME", "CLUSTER", "PARTITION", "STATE", "REASON", "TASKS", "RESTARTS", "SUBMITTED",
                  "ELAPSED", "EXIT"), rows)


def test_status_table_is_the_plain_table(home: Path) -> None:
    store = _odd_registry(home)
    with store._write() as c:  # ended tasks only: an elapsed time that runs on would differ by the clock
        c.execute("UPDATE tasks SET ended_at = COALESCE(ended_at, started_at + 3) WHERE started_at IS NOT NULL")
    infos = store.infos(store.query())
    from suanli.cli.commands import _status_table

    for per_task in (False, True):
        assert _status_table(infos, per_task) == _plain_status_table(infos, per_task)
    assert "\x1b" not in _status_table(infos, True) and "\u202e" not in _status_table(infos, True)


def test_status_of_a_big_array_prints_every_task(home: Path) -> None:
    store = Store(home)
    store.insert(_row("big", time.time() - 60, done=True), list(range(2000)), JobState.PENDING, None)
    store.update_tasks((("big", t), NativeStatus(JobState.COMPLETED if t % 7 else JobState.FAILED,
                                                   exit_code=0 if t % 7 else 2, started_at=100.0 + t,
                                                   ended_at=160.0 + t)) for t in range(2000))
    store.close()
    out = run_cli("status", "big")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 2001 and lines[1].split()[:5] == ["big_0", "n-big", "local", "local", "FAILED"]
    assert lines[2].split()[:2] == ["big_1", "n-big"] and " COMPLETED " in lines[2]
    one = run_cli("status", "big_7", "--json")
    assert one.returncode == 0 and [(j["array_task"], j["state"], j["exit_code"]) for j in json.loads(one.stdout)] \
        == [(7, "FAILED", 2)]


def test_old_registry_rows_read_the_same(home: Path) -> None:
    """A task row written with task -1 (every registry) reads as task None through each path."""
    store = Store(home)
    store.insert(_row("p", 1.0, done=True), [None], JobState.PENDING, None)
    raw = sqlite3.connect(store.path).execute("SELECT task FROM tasks WHERE job_id = 'p'").fetchall()
    assert raw == [(-1,)]
    assert store.tasks(["p"])["p"][0].task is None
    assert store.infos_where()[0].array_task is None and store.infos(store.query())[0].array_task is None
