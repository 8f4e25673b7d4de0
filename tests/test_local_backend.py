"""The local backend end to end: real detached processes, real files, the real registry."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import suanli
from suanli import Command, JobSpec, JobState, Resources
from suanli.errors import JobFailedError, UsageError

HOSTILE = [
    "it's", 'say "hi"', "$(touch pwned)", "`touch pwned2`", "a; touch pwned3", "line1\nline2", "tab\tx", "ü 算力",
]


def assert_gone(pid: int, what: str, timeout: float = 5.0) -> None:
    """The process must disappear within ``timeout`` seconds."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    pytest.fail(what)


def square(x: int) -> int:
    return x * x


def fail_with(msg: str) -> None:
    raise KeyError(msg)


def test_command_runs_and_logs(client: Any) -> None:
    job = client.submit(["sh", "-c", "echo out; echo err >&2; exit 0"], name="echo")
    assert job.wait(timeout=30) is JobState.COMPLETED
    assert job.logs() == "out\n"
    assert job.logs("stderr") == "err\n"
    info = job.info()
    assert info.exit_code == 0 and info.started_at is not None and info.ended_at >= info.started_at


def test_exit_code_and_failed_state(client: Any) -> None:
    job = client.submit(["sh", "-c", "exit 7"])
    assert job.wait(timeout=30) is JobState.FAILED
    assert job.info().exit_code == 7


def test_function_result_and_exception(client: Any) -> None:
    assert client.submit(square, 12).result(timeout=60) == 144
    job = client.submit(fail_with, "boom")
    with pytest.raises(KeyError) as exc:
        job.result(timeout=60)
    assert "boom" in str(exc.value)
    assert "fail_with" in str(exc.value.__cause__)  # the remote traceback names the function
    assert job.status() is JobState.FAILED


def test_map_results_in_input_order(client: Any) -> None:
    items = [5, 3, 9, 1, 7, 2]
    arr = client.map(square, items)
    assert len(arr) == len(items)
    assert arr.results(timeout=120) == [x * x for x in items]
    assert [j.id for j in arr] == [f"{arr.id}_{i}" for i in range(len(items))]


def test_map_failure_raises_or_returns(client: Any) -> None:
    def maybe(x: int) -> int:
        if x == 2:
            raise ValueError("two")
        return x

    arr = client.map(maybe, [1, 2, 3])
    with pytest.raises(ValueError, match="two"):
        arr.results(timeout=120)
    res = arr.results(return_exceptions=True)
    assert res[0] == 1 and res[2] == 3 and isinstance(res[1], ValueError)
    assert arr.status() is JobState.FAILED


def test_hostile_values_arrive_verbatim(client: Any, tmp_path: Path) -> None:
    env = {f"V{i}": v for i, v in enumerate(HOSTILE)}
    script = (
        "import json, os, sys; json.dump({'argv': sys.argv[1:], 'env': {k: os.environ[k] for k in "
        f"{sorted(env)!r}" "}}, open('out.json', 'w'))"
    )
    name = "n'a\"m$(e)\n;x"
    job = client.submit([sys.executable, "-c", script, *HOSTILE], env=env, name=name, workdir=str(tmp_path))
    assert job.wait(timeout=30) is JobState.COMPLETED, job.logs("stderr")
    got = json.loads((tmp_path / "out.json").read_text())
    assert got["argv"] == HOSTILE
    assert got["env"] == env
    assert job.info().name == name
    assert not any(Path(p).exists() for p in ("pwned", "pwned2", "pwned3", tmp_path / "pwned"))


def test_setup_lines_run_before_the_workload(client: Any) -> None:
    job = client.submit(["sh", "-c", 'echo "$FROM_SETUP"'], setup=["export FROM_SETUP=ready"])
    job.wait(timeout=30)
    assert job.logs() == "ready\n"


def test_time_limit_kills_and_reports_timeout(client: Any) -> None:
    t0 = time.monotonic()
    job = client.submit(["sleep", "60"], time="2s")
    assert job.wait(timeout=40) is JobState.TIMEOUT
    assert time.monotonic() - t0 < 30


def test_cancel_stops_the_process_group(client: Any, tmp_path: Path) -> None:
    marker = tmp_path / "child.pid"
    job = client.submit(["sh", "-c", f"sleep 300 & echo $! > {marker}; wait"])
    deadline = time.time() + 20
    while not marker.exists() or not marker.read_text().strip():
        assert time.time() < deadline, "job did not start"
        time.sleep(0.05)
    child = int(marker.read_text())
    job.cancel()
    assert job.wait(timeout=30) is JobState.CANCELLED
    assert_gone(child, "the job's child process survived the cancel")


def test_array_tasks_get_their_index_and_respect_the_limit(client: Any, tmp_path: Path) -> None:
    log = tmp_path / "running"
    code = (
        "import os, sys, time, fcntl\n"
        f"p = {str(log)!r}\n"
        "def bump(d):\n"
        "    with open(p, 'a+') as f:\n"
        "        fcntl.flock(f, fcntl.LOCK_EX); f.seek(0); n = int(f.read() or 0) + d; f.seek(0); f.truncate();"
        " f.write(str(n))\n"
        "        return n\n"
        "n = bump(1); print(os.environ['SUANLI_ARRAY_TASK_ID'], n); time.sleep(0.3); bump(-1)\n"
    )
    arr = client.submit([sys.executable, "-c", code], array="0-5%2")
    assert arr.wait(timeout=60) is JobState.COMPLETED
    seen = {}
    for job in arr:
        idx, concurrent = job.logs().split()
        seen[int(idx)] = int(concurrent)
    assert sorted(seen) == [0, 1, 2, 3, 4, 5]
    assert max(seen.values()) <= 2


def test_dependency_afterok_waits_and_never_satisfied_cancels(client: Any, tmp_path: Path) -> None:
    first = client.submit(["sh", "-c", f"sleep 1; date +%s.%N > {tmp_path}/a"])
    second = client.submit(["sh", "-c", f"date +%s.%N > {tmp_path}/b"], after=first)
    assert second.wait(timeout=60) is JobState.COMPLETED
    assert float((tmp_path / "b").read_text()) >= float((tmp_path / "a").read_text())
    bad = client.submit(["false"])
    never = client.submit(["true"], after=bad.id)
    anyway = client.submit(["true"], after=f"afterany:{bad.id}")
    assert never.wait(timeout=60) is JobState.CANCELLED
    assert never.info().reason == "DependencyNeverSatisfied"
    assert anyway.wait(timeout=60) is JobState.COMPLETED


def test_requeue_restarts_until_the_limit(client: Any, tmp_path: Path) -> None:
    counter = tmp_path / "count"
    code = f"p={str(counter)!r}; import os; n=int(open(p).read()) if os.path.exists(p) else 0; " \
           "open(p,'w').write(str(n+1)); raise SystemExit(0 if n >= 2 else 1)"
    job = client.submit([sys.executable, "-c", code], requeue=3)
    assert job.wait(timeout=60) is JobState.COMPLETED
    assert job.info().restarts == 2
    assert counter.read_text() == "3"
    limited = client.submit(["false"], requeue=1)
    assert limited.wait(timeout=60) is JobState.FAILED
    assert limited.info().restarts == 1


def test_job_outlives_the_submitting_process(home: Path) -> None:
    code = ("import suanli; j = suanli.submit(['sh', '-c', 'sleep 1; echo survived']); print(j.id)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    job_id = proc.stdout.strip()
    job = suanli.get_job(job_id)
    assert isinstance(job, suanli.Job)
    assert job.wait(timeout=60) is JobState.COMPLETED
    assert job.logs() == "survived\n"


def test_get_job_reattaches_to_arrays_and_tasks(client: Any) -> None:
    arr = client.map(square, [2, 3])
    arr.wait(timeout=60)
    again = client.get_job(arr.id)
    assert isinstance(again, suanli.JobArray) and again.results() == [4, 9]
    assert client.get_job(f"{arr.id}_1").result() == 9


def test_result_of_a_killed_function_is_a_clear_error(client: Any) -> None:
    def slow() -> None:
        time.sleep(60)

    job = client.submit(slow, time="1s")
    with pytest.raises(JobFailedError, match="TIMEOUT without a result"):
        job.result(timeout=60)


def test_wait_timeout_raises(client: Any) -> None:
    job = client.submit(["sleep", "30"])
    with pytest.raises(TimeoutError):
        job.wait(timeout=0.3)
    job.cancel()
    assert job.wait(timeout=30) is JobState.CANCELLED


def test_requests_larger_than_the_node_are_refused_before_submission(client: Any) -> None:
    cores = os.cpu_count() or 1
    with pytest.raises(UsageError, match="cpus"):
        client.submit(["true"], cpus_per_task=cores + 1)
    with pytest.raises(UsageError, match="has 1 node"):
        client.submit(JobSpec(Command(["true"]), resources=Resources(nodes=2)))
    with pytest.raises(UsageError, match="accelerators"):
        client.submit(["true"], accelerators="ascend:1")
    assert client.store.query() == []  # nothing recorded


def test_unpicklable_function_is_refused_and_nothing_recorded(client: Any) -> None:
    import threading

    lock = threading.Lock()
    with pytest.raises(UsageError, match="cannot pickle"):
        client.submit(lambda: lock)
    assert client.store.query() == []


def test_concurrent_submitters_share_the_registry(home: Path) -> None:
    code = "import suanli\nfor _ in range(5): print(suanli.submit(['true']).id)"
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) for _ in range(4)]
    ids = []
    for p in procs:
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0
        ids += out.split()
    assert len(set(ids)) == 20
    from suanli.api import Client

    c = Client()
    rows = c.store.query()
    assert {r.id for r in rows} == set(ids)
    for i in ids:
        assert c.get_job(i).wait(timeout=120) is JobState.COMPLETED


def test_follow_keeps_split_characters_and_crlf_whole(tmp_path: Path) -> None:
    import threading

    from suanli.api import follow_files

    path = tmp_path / "log"
    done = threading.Event()

    def writer() -> None:
        data = "算力\r\nok\n".encode()
        with open(path, "ab") as fh:
            for i in range(0, len(data), 2):  # split inside characters and between \r and \n
                fh.write(data[i:i + 2])
                fh.flush()
                time.sleep(0.03)
        done.set()

    path.touch()
    t = threading.Thread(target=writer)
    t.start()
    lines = [line for _, line in follow_files([path], done.is_set, check_every=0.05)]
    t.join()
    assert lines == ["算力\r\n", "ok\n"]


def test_cancel_while_waiting_for_a_dependency_is_cancelled(client: Any) -> None:
    first = client.submit(["sleep", "30"])
    second = client.submit(["true"], after=first)
    second.cancel()
    assert second.wait(timeout=30) is JobState.CANCELLED
    first.cancel()
    assert first.wait(timeout=30) is JobState.CANCELLED


def test_a_killed_runner_fails_the_job_and_stops_its_task(client: Any, tmp_path: Path) -> None:
    import signal

    marker = tmp_path / "pid"
    job = client.submit(["sh", "-c", f"echo $$ > {marker}; exec sleep 300"])
    deadline = time.time() + 20
    while not marker.exists() or not marker.read_text().strip():
        assert time.time() < deadline
        time.sleep(0.05)
    task_pid = int(marker.read_text())
    runner_pid = int((Path(client.store.get(job.id).job_dir) / "runner.pid").read_text().split()[0])
    os.kill(runner_pid, signal.SIGKILL)
    assert job.wait(timeout=30) is JobState.FAILED
    assert job.info().reason == "RunnerLost"
    assert_gone(task_pid, "the task of a lost runner kept running")


def test_background_children_end_with_their_task(client: Any, tmp_path: Path) -> None:
    marker = tmp_path / "bg"
    job = client.submit(["sh", "-c", f"sleep 300 & echo $! > {marker}"])
    assert job.wait(timeout=30) is JobState.COMPLETED
    child = int(marker.read_text())
    assert_gone(child, "a finished task's background child survived")


def test_threads_share_one_client_safely(client: Any) -> None:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(8) as pool:
        jobs = list(pool.map(lambda _: client.submit(["true"]), range(32)))
    assert len({j.id for j in jobs}) == 32
    rows = client.store.query()
    assert len(rows) == 32 and all(r.native_id for r in rows)
    with ThreadPoolExecutor(8) as pool:
        states = list(pool.map(lambda j: j.wait(timeout=120), jobs))
    assert set(states) == {JobState.COMPLETED}


def test_threads_share_one_client_with_a_ledger(client: Any, home: Path) -> None:
    """Admission and booking through one Client's ledger connection from many threads at once: one transaction
    at a time on it, every job admitted, booked once and its reservation released."""
    from concurrent.futures import ThreadPoolExecutor

    from suanli.accounting.ledger import Ledger
    from suanli.accounting.quota import Quota

    ledger = Ledger(None, home)
    ledger.set_quota(Quota(account="lab", cpu_hours=1000), "admin")
    with ThreadPoolExecutor(8) as pool:
        jobs = list(pool.map(lambda _: client.submit(["true"], time="10m", account="lab"), range(24)))
        states = list(pool.map(lambda j: j.wait(timeout=120), jobs))
        list(pool.map(lambda _: client.store.query(), range(64)))
    assert set(states) == {JobState.COMPLETED}
    client.accounts.sync("local")
    assert ledger.totals()["records"] == 24 and ledger.reservations() == []
    ledger.close()


def test_a_final_state_is_never_overwritten(client: Any) -> None:
    from suanli.compute.base import NativeStatus

    job = client.submit(["true"])
    assert job.wait(timeout=30) is JobState.COMPLETED
    client.store.update_tasks([((job.id, None), NativeStatus(JobState.RUNNING))])  # a slow poller's old answer
    info = client.store.infos([client.store.get(job.id)])[0]
    assert info.state is JobState.COMPLETED and client.store.get(job.id).done
