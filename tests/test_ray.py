"""The Ray backend against the real single-node head that tests/ray/head.sh starts (2 CPUs, NPU: 4).

scripts/test.sh starts the head and exports SUANLI_TEST_RAY_ADDRESS; under CI=true a missing head fails these
tests instead of skipping them. By hand: bash tests/ray/head.sh start /tmp/rh && export $(cat /tmp/rh/env).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, rank_probe, run_cli, two_ranks

from suanli import JobSpec, JobState, Resources, Training
from suanli.errors import BackendError

pytestmark = pytest.mark.ray

RAY_ADDRESS = os.environ.get("SUANLI_TEST_RAY_ADDRESS", "")


@pytest.fixture(scope="session")
def ray_address() -> str:
    if not RAY_ADDRESS:
        if os.environ.get("CI") == "true":
            pytest.fail("no Ray test head (SUANLI_TEST_RAY_ADDRESS): scripts/test.sh starts it; under CI this is a "
                        "failure, not a skip")
        pytest.skip("no Ray test head; run scripts/test.sh, or bash tests/ray/head.sh start DIR")
    with urllib.request.urlopen(f"{RAY_ADDRESS}/api/version", timeout=10) as resp:
        assert resp.status == 200
    return RAY_ADDRESS


@pytest.fixture
def ray(home: Path, ray_address: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A Client whose default cluster is the test Ray head."""
    cfg = tmp_path / "clusters"
    cfg.mkdir()
    (cfg / "testray.yaml").write_text(
        f"name: testray\nbackend: ray\nray: {{address: '{ray_address}'}}\n"
        "partitions:\n"
        "  - {name: cpu, adapter: cpu, nodes: 1, cpus_per_node: 2}\n"
        "  - {name: npu, adapter: ascend, nodes: 1, cpus_per_node: 2, accelerators_per_node: 2}\n"
        # The config claims 8 NPUs per node; the live head has 4.
        "  - {name: bignpu, adapter: ascend, nodes: 1, cpus_per_node: 2, accelerators_per_node: 8}\n"
        "  - {name: gpu, adapter: nvidia, nodes: 1, cpus_per_node: 2, accelerators_per_node: 1}\n"
    )
    (cfg / "deadray.yaml").write_text(
        "name: deadray\nbackend: ray\nray: {address: 'http://127.0.0.1:9'}\npartitions:\n  - {name: cpu}\n")
    (cfg / "settings.yaml").write_text("default_cluster: testray\nstatus_poll_max_s: 1\n")
    monkeypatch.setenv("SUANLI_CONFIG", str(cfg))
    monkeypatch.setenv("RAY_AUTH_MODE", os.environ.get("RAY_AUTH_MODE", "disabled"))
    from suanli.api import Client

    c = Client()
    yield c
    open_rows = [r for r in c.store.query(only_open=True) if r.native_id]
    if open_rows:
        try:
            c.cancel_many([(r, None) for r in open_rows])
        except BackendError:
            pass
    c.store.close()


def jobs_client(address: str) -> Any:
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(address)


def count_list_jobs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many list_jobs calls the backend makes (the real call still runs)."""
    from ray.job_submission import JobSubmissionClient

    calls: list[int] = []
    real = JobSubmissionClient.list_jobs

    def counting(self: Any) -> Any:
        calls.append(1)
        return real(self)

    monkeypatch.setattr(JobSubmissionClient, "list_jobs", counting)
    return calls


def sq(x: int) -> int:
    return x * x


def boom(msg: str) -> None:
    raise RuntimeError(msg)


def where_am_i() -> dict[str, Any]:
    from suanli.runtime import environment

    e = environment()
    return {"launcher": e.launcher, "job_id": e.job_id, "rank": e.rank, "world": e.world_size}


HOSTILE = "a'b \"c\" $(touch /tmp/suanli-pwned) `id` ; | & > * \\ \n ${HOME}|$HOME|${PATH:-x} end"


def test_command_job_end_to_end(ray: Any, ray_address: str) -> None:
    job = ray.submit(["sh", "-c", 'printf "%s|%s" "$1" "$EVIL"; echo err >&2', "sh", HOSTILE],
                     env={"EVIL": HOSTILE}, time="5m")
    failing = ray.submit(["sh", "-c", "exit 3"], time="5m")
    assert job.wait(timeout=60) is JobState.COMPLETED, job.logs("stderr")
    assert job.logs() == f"{HOSTILE}|{HOSTILE}" and job.logs("stderr") == "err\n"
    assert not Path("/tmp/suanli-pwned").exists()
    info = job.info()
    assert info.backend == "ray" and info.native_id == job.id and info.exit_code == 0
    assert info.started_at and info.ended_at and info.ended_at >= info.started_at
    assert failing.wait(timeout=60) is JobState.FAILED
    assert failing.info().exit_code == 3 and failing.info().reason == "NonZeroExitCode"
    # Ray keeps what was asked for only in the metadata: strings, with the request.
    d = jobs_client(ray_address).get_job_info(job.id)
    assert d.submission_id == job.id and d.metadata["suanli_job_id"] == job.id
    assert json.loads(d.metadata["suanli_resources"])["cpus_per_task"] == 1
    assert json.loads(d.metadata["suanli_ray_request"])["entrypoint"] == {"entrypoint_num_cpus": 1.0}


def test_function_result_and_remote_exception(ray: Any) -> None:
    ok = ray.submit(sq, 9, time="5m")
    bad = ray.submit(boom, "kaput", time="5m")
    assert ok.result(timeout=120) == 81
    with pytest.raises(RuntimeError, match="kaput") as exc:
        bad.result(timeout=120)
    assert "in boom" in str(exc.value.__cause__)
    assert bad.info().state is JobState.FAILED and "kaput" in bad.logs("stderr")


def test_map_of_100_with_one_list_jobs_per_poll(ray: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = count_list_jobs(monkeypatch)
    arr = ray.map(sq, range(100), time="5m", max_concurrent=50)
    assert arr.results(timeout=180) == [i * i for i in range(100)]
    infos = arr.infos()
    assert len(infos) == 100 and all(i.state is JobState.COMPLETED and i.exit_code == 0 for i in infos)
    before = len(calls)
    ray.refresh(ray.store.query(only_open=True) or [])
    second = ray.submit(["sleep", "30"], time="5m")
    ray.refresh([ray._row(second.id)])
    assert len(calls) - before == 1  # one poll, one call, whatever the number of jobs
    second.cancel()


def test_training_two_workers_on_two_cpus(ray: Any, tmp_path: Path) -> None:
    if importlib.util.find_spec("torch") is None:
        pytest.skip("torch not installed")
    probe, out = rank_probe(tmp_path)
    job = ray.submit(JobSpec(Training(script=str(probe), args=(str(out),), nproc_per_node=2),
                             resources=Resources(tasks_per_node=2, time="10m")))
    assert job.wait(timeout=150) is JobState.COMPLETED, job.logs("stderr")[-3000:]
    ranks = two_ranks(out)
    assert {r["launcher"] for r in ranks} == {"ray"}


def test_status_logs_cancel_through_the_cli(ray: Any) -> None:
    r = run_cli("submit", "--json", "--time", "5m", "--", "sh", "-c", "echo started; sleep 60")
    assert r.returncode == 0, r.stderr
    job_id = json.loads(r.stdout)["id"]
    deadline = time.time() + 60
    while "started" not in run_cli("logs", job_id).stdout:
        assert time.time() < deadline, run_cli("logs", job_id).stderr
        time.sleep(0.5)
    rows = json.loads(run_cli("status", job_id, "--json").stdout)
    assert rows[0]["state"] == "RUNNING" and rows[0]["backend"] == "ray"
    assert run_cli("cancel", job_id).returncode == 0
    w = run_cli("wait", "--timeout", "30", job_id)
    assert w.returncode == 1 and "CANCELLED" in w.stdout
    assert json.loads(run_cli("status", job_id, "--json").stdout)[0]["state"] == "CANCELLED"


def test_cancel_while_pending_and_time_limit(ray: Any, tmp_path: Path) -> None:
    """Ray runs a job that was stopped while it waited for resources; suanli's driver then ends at once."""
    marker = tmp_path / "ran"
    hog = ray.submit(["sleep", "60"], cpus_per_task=2, time="3s")  # both CPUs, until its time limit
    waiting = ray.submit(["touch", str(marker)], cpus_per_task=2, time="5m")
    deadline = time.time() + 30
    while waiting.info().reason != "WaitingForResources":
        assert time.time() < deadline, waiting.info()
        time.sleep(0.3)
    waiting.cancel()
    assert waiting.status() is JobState.CANCELLED
    assert hog.wait(timeout=60) is JobState.TIMEOUT
    assert hog.info().reason == "TimeLimit"
    # Ray may still start a job stopped while it waited. Once a later job that needs the same CPUs has run, the
    # cancelled one had its chance: its driver sees the cancel marker and ends without running the command.
    later = ray.submit(["true"], cpus_per_task=2, time="5m")
    assert later.wait(timeout=120) is JobState.COMPLETED
    assert not marker.exists()


def test_impossible_requests_are_refused_before_submission(ray: Any, ray_address: str) -> None:
    before = len(jobs_client(ray_address).list_jobs())
    r = run_cli("submit", "--partition", "bignpu", "--accelerators", "ascend:6", "--", "true")
    assert r.returncode == 4 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "NPU 6" in r.stderr and "NPU 4" in r.stderr
    r = run_cli("submit", "--partition", "gpu", "--accelerators", "nvidia:1", "--", "true")
    assert r.returncode == 4 and "no GPU resource" in r.stderr, r.stderr
    r = run_cli("submit", "--cluster", "deadray", "--", "true")
    assert r.returncode == 4 and "http://127.0.0.1:9" in r.stderr and "suanli ray up" in r.stderr, r.stderr
    assert json.loads(run_cli("status", "--json", "--all").stdout) == []
    assert len(jobs_client(ray_address).list_jobs()) == before
    assert not any((ray.store.root / "jobs").glob("*")) if (ray.store.root / "jobs").exists() else True


def test_ascend_request_reaches_the_job(ray: Any, ray_address: str) -> None:
    job = ray.submit(["sh", "-c", 'echo "$ASCEND_RT_VISIBLE_DEVICES"'], partition="npu", accelerators="ascend:2",
                     time="5m")
    assert job.wait(timeout=60) is JobState.COMPLETED, job.logs("stderr")
    devices = job.logs().strip().split(",")
    assert len(devices) == 2 and all(d.isdigit() for d in devices)
    d = jobs_client(ray_address).get_job_info(job.id)
    asked = json.loads(d.metadata["suanli_ray_request"])["entrypoint"]
    assert asked == {"entrypoint_num_cpus": 1.0, "entrypoint_resources": {"NPU": 2.0}}
    assert job.info().partition == "npu"


def test_environment_inside_a_ray_job_says_ray(ray: Any) -> None:
    fn = ray.submit(where_am_i, time="5m")
    cmd = ray.submit(["python", "-c", "from suanli.runtime import environment as e; print(e().launcher)"],
                     time="5m")
    got = fn.result(timeout=60)
    assert got["launcher"] == "ray" and got["job_id"] == fn.id and got["world"] == 1
    assert cmd.wait(timeout=60) is JobState.COMPLETED, cmd.logs("stderr")
    assert cmd.logs().strip() == "ray"


def test_dependency_waits_for_the_first_job(ray: Any, tmp_path: Path) -> None:
    marker = tmp_path / "first"
    first = ray.submit(["sh", "-c", f"sleep 2; echo done > {marker}"], time="5m")
    second = ray.submit(["sh", "-c", f"cat {marker}"], after=first, time="5m")
    assert second.wait(timeout=90) is JobState.COMPLETED, second.logs("stderr")
    assert second.logs() == "done\n"


def test_waiting_for_a_dependency_is_pending_and_not_timed(ray: Any) -> None:
    """The wait is neither run time (PENDING, no start time) nor counted against the time limit."""
    first = ray.submit(["sleep", "6"], time="5m")
    second = ray.submit(["echo", "ran"], after=first, time="4s")
    deadline = time.time() + 30
    while second.info().reason != "Dependency":
        assert time.time() < deadline, second.info()
        time.sleep(0.3)
    assert second.status() is JobState.PENDING
    assert second.wait(timeout=90) is JobState.COMPLETED, second.logs("stderr")
    assert second.info().started_at >= first.info().ended_at - 1


def test_task_limits_count_from_the_start_on_a_worker(ray: Any) -> None:
    """4 tasks of 2.5 s on 2 CPUs with a 4 s limit each: the queued two must not time out while they wait."""
    arr = ray.map(_nap, range(4), time="4s")
    assert arr.results(timeout=120) == [0, 1, 2, 3]
    env_job = ray.submit(_env, "EVIL", env={"EVIL": HOSTILE}, time="1m")
    assert env_job.result(timeout=60) == HOSTILE  # a Function's env arrives verbatim too


def _nap(i: int) -> int:
    time.sleep(2.5)
    return i


def _env(name: str) -> str:
    return os.environ[name]


def test_time_limit_stops_grandchildren_and_cancel_after_end_keeps_the_state(ray: Any) -> None:
    token = f"{171700 + os.getpid() % 97}"
    job = ray.submit(["sh", "-c", f"sleep {token}; echo after"], time="3s")
    assert job.wait(timeout=60) is JobState.TIMEOUT
    deadline = time.time() + 10
    while subprocess.run(["pgrep", "-f", f"sleep {token}"], capture_output=True).returncode == 0:
        assert time.time() < deadline, "the job's grandchild outlived its time limit"
        time.sleep(0.3)
    failed = ray.submit(["sh", "-c", "exit 3"], time="1m")
    assert failed.wait(timeout=60) is JobState.FAILED
    failed.cancel()
    assert failed.status() is JobState.FAILED and failed.info().exit_code == 3


def test_status_survives_an_unreachable_cluster(ray: Any) -> None:
    """A job on a cluster that is gone keeps its last state; the other clusters' jobs are still listed."""
    from suanli.compute.store import JobRow

    row = JobRow(id="zgone001", name="gone", cluster="deadray", backend="ray", native_id="zgone001",
                 kind="command", partition="cpu", account=None, user="u", submitted_at=time.time(),
                 job_dir=str(Path(ray.store.root) / "jobs" / "zgone001"), meta={}, done=False)
    ray.store.insert(row, [None], JobState.RUNNING, None)
    live = ray.submit(["true"], time="1m")
    r = run_cli("status", "--json")
    assert r.returncode == 0, r.stderr
    states = {i["id"]: i["state"] for i in json.loads(r.stdout)}
    assert states["zgone001"] == "RUNNING" and live.id in states
    assert "cluster deadray: states not refreshed" in r.stderr
    ray.store.delete("zgone001")


def test_head_pids_never_match_a_longer_folder_name(tmp_path: Path) -> None:
    from suanli.compute.ray.cluster import head_pids

    other = subprocess.Popen(["sh", "-c", "sleep 30", "sh", f"{tmp_path}/head-ab/session"])
    try:
        time.sleep(0.2)
        assert other.pid not in head_pids(f"{tmp_path}/head-a")
        assert other.pid in head_pids(f"{tmp_path}/head-ab")
    finally:
        other.kill()
        other.wait()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_ray_up_and_down(home: Path, tmp_path: Path, ray_address: str) -> None:
    """A second head on other ports, from a config that declares an ascend partition's NPUs."""
    from suanli.cli import ray_cmd

    dash = _free_port()
    cfg = tmp_path / "up.yaml"
    cfg.write_text(f"name: upray\nbackend: ray\nray: {{address: 'http://127.0.0.1:{dash}'}}\n"
                   "partitions:\n  - {name: npu, adapter: ascend, nodes: 1, accelerators_per_node: 3}\n")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config")
    parser = argparse.ArgumentParser()
    ray_cmd.register(parser.add_subparsers(dest="verb"), common)

    def run(*argv: str) -> int:
        return ray_cmd.cmd_ray(parser.parse_args([*argv, "--config", str(cfg)]))

    temp = f"/tmp/srt-up-{os.getpid()}"
    up = ["ray", "up", "--cluster", "upray", "--num-cpus", "1", "--port", str(_free_port()), "--client-port",
          str(_free_port()), "--object-store-memory", "100M", "--temp-dir", temp]
    try:
        assert run(*up) == 0
        with urllib.request.urlopen(f"http://127.0.0.1:{dash}/api/v0/nodes?detail=1", timeout=10) as resp:
            nodes = json.loads(resp.read())["data"]["result"]["result"]
        assert nodes[0]["resources_total"]["NPU"] == 3.0 and nodes[0]["resources_total"]["CPU"] == 1.0
    finally:
        assert run("ray", "down", "--cluster", "upray") == 0
    from suanli.compute.ray.cluster import head_pids

    assert head_pids(temp) == [] and not os.path.exists(temp)  # `down` removes the folder `up` made
    with urllib.request.urlopen(f"{ray_address}/api/version", timeout=10):
        pass  # the test head is untouched


def test_ray_cli_is_import_light() -> None:
    r = run_cli("--help")
    assert r.returncode == 0
    src = (REPO / "suanli" / "cli" / "ray_cmd.py").read_text()
    assert "\nimport ray" not in src and "\nfrom ray" not in src


def test_a_ray_job_whose_submitter_died_is_found_or_lost(ray: Any, tmp_path: Path) -> None:
    """The submission id is the suanli id: a submitter killed after submit_job leaves a job that `status` adopts
    (and sees end); one killed before it leaves a row that ends FAILED SubmitLost, not PENDING forever."""
    from test_trust_local import killed_submit

    adopted = killed_submit(tmp_path, "after-submit", "-t", "2m", "--", "true")
    lost = killed_submit(tmp_path, "after-insert", "-t", "2m", "--", "true")
    r = run_cli("wait", "--timeout", "120", adopted, timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    r = run_cli("status", "--json", adopted, lost)
    assert r.returncode == 0, r.stderr
    got = {i["id"]: (i["state"], i["reason"], i["native_id"]) for i in json.loads(r.stdout)}
    assert got[adopted] == ("COMPLETED", None, adopted)
    assert got[lost][:2] == ("FAILED", "SubmitLost")


def test_requeue_on_ray_is_refused_not_ignored(home: Path, tmp_path: Path) -> None:
    """Ray restarts nothing and suanli does not resubmit there: --requeue is exit 2 before anything runs
    (the backend's capabilities), where it used to be accepted and silently dropped."""
    cfg = tmp_path / "ray.yaml"
    cfg.write_text("name: r\nbackend: ray\nray: {address: http://127.0.0.1:9}\npartitions:\n  - {name: cpu}\n")
    r = run_cli("--config", str(cfg), "submit", "--cluster", "r", "--requeue", "2", "--", "true")
    assert r.returncode == 2 and "restarts" in r.stderr and "backend ray" in r.stderr, r.stderr
    assert not (home / "jobs").exists() or not any((home / "jobs").iterdir())
