"""The Slurm backend against the real single-node cluster that tests/slurm/cluster.sh starts.

scripts/test.sh starts the cluster and exports SUANLI_TEST_SLURM_CONF; under CI=true a missing cluster fails
these tests instead of skipping them.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import rank_probe, run_cli, two_ranks, wait_releasing_requeued

from suanli import MPI, JobSpec, JobState, Resources, Training
from suanli.errors import BackendError, JobFailedError

pytestmark = pytest.mark.slurm

def record_slurm_calls(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Every Slurm command the backend runs, in order (the real commands still run)."""
    from suanli.compute.slurm import backend as sb

    calls: list[list[str]] = []
    real_run = sb.SlurmBackend.run

    def counting(self: Any, argv: list[str], what: str, input_text: str | None = None) -> Any:
        calls.append(argv)
        return real_run(self, argv, what, input_text)

    monkeypatch.setattr(sb.SlurmBackend, "run", counting)
    return calls


def sq(x: int) -> int:
    return x * x


def usr2_once_started(job: Any, marker: Path, slurm_conf: str) -> None:
    """Wait until the function wrote its marker, then send the batch shell the pre-timeout SIGUSR2."""
    deadline = time.time() + 120
    while not marker.exists():
        assert time.time() < deadline, job.logs("stderr")
        time.sleep(0.3)
    env = dict(os.environ, SLURM_CONF=slurm_conf)
    subprocess.run(["scancel", "--signal=USR2", "--batch", job.info().native_id], check=True, env=env)


class Resumable:
    """Checkpointable in submitit's sense: on SIGUSR2 the job requeues itself with ``resumed=True``."""

    def __call__(self, marker: str, resumed: bool = False) -> str:
        if resumed:
            return "resumed"
        Path(marker).write_text("started")
        time.sleep(300)
        return "ran to the end"

    def checkpoint(self, marker: str, resumed: bool = False) -> tuple[Any, tuple[Any, ...], dict[str, Any]]:
        return self, (marker,), {"resumed": True}


def boom(msg: str) -> None:
    raise RuntimeError(msg)


def test_command_job_runs_on_slurm(slurm: Any) -> None:
    job = slurm.submit(["sh", "-c", "echo on $SLURM_JOB_PARTITION; echo err >&2"], time="5m")
    assert job.wait(timeout=120) is JobState.COMPLETED, job.logs("stderr")
    assert job.logs() == "on debug\n" and job.logs("stderr") == "err\n"
    info = job.info()
    assert info.backend == "slurm" and info.native_id and info.native_id.isdigit()
    assert info.exit_code == 0 and info.account == "acct-a"


def test_function_result_and_exception(slurm: Any) -> None:
    assert slurm.submit(sq, 9, time="5m").result(timeout=120) == 81
    with pytest.raises(RuntimeError, match="kaput") as exc:
        slurm.submit(boom, "kaput", time="5m").result(timeout=120)
    assert "boom" in str(exc.value.__cause__)


def test_map_of_200_is_one_array_and_one_sbatch(slurm: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = record_slurm_calls(monkeypatch)
    arr = slurm.map(sq, range(200), time="5m")
    assert sum(1 for c in calls if c[0] == "sbatch") == 1
    assert arr.results(timeout=600) == [i * i for i in range(200)]
    polls = [c for c in calls if c[0] == "sacct"]
    assert polls and all(len(c[c.index("-j") + 1].split(",")) == 1 for c in polls)  # one call per poll


def test_training_two_ranks_with_gloo(slurm: Any, tmp_path: Path) -> None:
    if importlib.util.find_spec("torch") is None:
        pytest.skip("torch not installed")
    probe, out = rank_probe(tmp_path)
    job = slurm.submit(JobSpec(Training(script=str(probe), args=(str(out),), nproc_per_node=2),
                               resources=Resources(tasks_per_node=2, time="10m")))
    assert job.wait(timeout=300) is JobState.COMPLETED, job.logs("stderr")[-3000:]
    ranks = two_ranks(out)
    assert {r["launcher"] for r in ranks} == {"slurm"}
    assert ranks[0]["MASTER_PORT"] == str(20000 + int(job.info().native_id) % 20000)


@pytest.mark.parametrize("cluster", ["testslurm", "testslurm-mpirun"])
def test_mpi4py_job(slurm: Any, tmp_path: Path, cluster: str) -> None:
    if importlib.util.find_spec("mpi4py") is None:
        pytest.skip("mpi4py not installed")
    prog = tmp_path / "ranks.py"
    prog.write_text("import sys\nfrom mpi4py import MPI\nc = MPI.COMM_WORLD\ns = c.allreduce(c.Get_rank() + 1)\n"
                    "open(f'{sys.argv[1]}/{c.Get_rank()}', 'w').write(f'{c.Get_size()} {s}')\n")
    out = tmp_path / "out"
    out.mkdir()
    job = slurm.submit(JobSpec(MPI([sys.executable, str(prog), str(out)], ranks=2), cluster=cluster,
                               resources=Resources(tasks_per_node=2, time="10m")))
    assert job.wait(timeout=300) is JobState.COMPLETED, job.logs("stderr")[-3000:]
    assert sorted(p.read_text() for p in out.iterdir()) == ["2 3", "2 3"]


def test_dependency_chain_and_never_satisfied(slurm: Any, tmp_path: Path) -> None:
    a = slurm.submit(["sh", "-c", f"sleep 1; date +%s.%N > {tmp_path}/a"], time="5m")
    b = slurm.submit(["sh", "-c", f"date +%s.%N > {tmp_path}/b"], after=a, time="5m")
    c = slurm.submit(["sh", "-c", f"date +%s.%N > {tmp_path}/c"], after=b, time="5m")
    assert c.wait(timeout=180) is JobState.COMPLETED
    times = [float((tmp_path / n).read_text()) for n in "abc"]
    assert times == sorted(times)
    bad = slurm.submit(["false"], time="5m")
    never = slurm.submit(["true"], after=bad, time="5m")
    assert never.wait(timeout=180) is JobState.CANCELLED


def test_cancel_and_time_limit(slurm: Any) -> None:
    job = slurm.submit(["sleep", "300"], time="5m")
    deadline = time.time() + 60
    while job.status() is not JobState.RUNNING:
        assert time.time() < deadline
        time.sleep(0.5)
    job.cancel()
    assert job.wait(timeout=120) is JobState.CANCELLED
    slow = slurm.submit(["sleep", "300"], time="1m")  # Slurm's time limits have a one-minute granularity
    assert slow.wait(timeout=240) is JobState.TIMEOUT


def test_requeue_until_success(slurm: Any, tmp_path: Path, slurm_conf: str) -> None:
    counter = tmp_path / "count"
    code = (f"import os; p={str(counter)!r}; n=int(open(p).read()) if os.path.exists(p) else 0; "
            "open(p,'w').write(str(n+1)); raise SystemExit(0 if n >= 1 else 3)")
    job = slurm.submit([sys.executable, "-c", code], requeue=2, time="5m")
    assert wait_releasing_requeued(job, slurm_conf, 300) is JobState.COMPLETED, job.logs("stderr")
    assert counter.read_text() == "2"
    assert job.info().restarts == 1


def test_npu_gres_reaches_the_job(slurm: Any, slurm_conf: str) -> None:
    job = slurm.submit(["sleep", "20"], partition="ai", accelerators="ascend:2", time="5m")
    deadline = time.time() + 60
    while job.status() is not JobState.RUNNING:
        assert time.time() < deadline
        time.sleep(0.5)
    detail = subprocess.run(["scontrol", "show", "job", "-d", job.info().native_id], capture_output=True,
                            text=True, env=dict(os.environ, SLURM_CONF=slurm_conf)).stdout
    job.cancel()
    assert "npu:2" in detail


def test_hostile_name_env_and_args_arrive_verbatim(slurm: Any, tmp_path: Path) -> None:
    hostile = ["it's", 'a "q"', "$(touch pwn)", "`touch pwn2`", "x; touch pwn3", "l1\nl2"]
    env = {f"H{i}": v for i, v in enumerate(hostile)}
    name = "bad\nname $(touch pwn4) 'q'"
    code = ("import json, os, sys; json.dump({'argv': sys.argv[1:], 'env': {k: os.environ[k] for k in "
            f"{sorted(env)!r}" "}}, open('out.json', 'w'))")
    job = slurm.submit([sys.executable, "-c", code, *hostile], env=env, name=name, workdir=str(tmp_path),
                       time="5m")
    assert job.wait(timeout=120) is JobState.COMPLETED, job.logs("stderr")
    got = json.loads((tmp_path / "out.json").read_text())
    assert got["argv"] == hostile and got["env"] == env
    assert job.info().name == name
    assert not any((tmp_path / p).exists() for p in ("pwn", "pwn2", "pwn3", "pwn4"))


def test_sbatch_refusals_are_clear_and_nothing_is_recorded(slurm: Any) -> None:
    with pytest.raises(BackendError, match="(?i)account"):
        slurm.submit(["true"], account="no-such-account", time="5m")
    assert slurm.store.query() == []


def test_cli_against_slurm(slurm: Any) -> None:
    r = run_cli("submit", "--json", "--", "sh", "-c", "echo cli")
    assert r.returncode == 0, r.stderr
    job = json.loads(r.stdout)
    assert job["backend"] == "slurm" and job["native_id"].isdigit()
    w = run_cli("wait", "--timeout", "120", job["id"])
    assert w.returncode == 0, w.stdout + w.stderr
    assert run_cli("logs", job["id"]).stdout == "cli\n"
    r = run_cli("submit", "--account", "no-such-account", "--", "true")
    assert r.returncode == 4 and "sbatch" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    dry = run_cli("submit", "--dry-run", "--partition", "ai", "--accelerators", "ascend:2", "--time", "1h", "--",
                  "python", "train.py")
    assert dry.returncode == 0 and "--gres=npu:2" in dry.stdout and "charge 3 units" in dry.stdout


def test_function_killed_by_the_limit_reports_no_result(slurm: Any) -> None:
    def forever() -> None:
        time.sleep(600)

    job = slurm.submit(forever, time="1m")
    with pytest.raises(JobFailedError):
        job.result(timeout=240)


def test_checkpointable_function_requeues_on_usr2(slurm: Any, tmp_path: Path, slurm_conf: str) -> None:
    marker = tmp_path / "started"
    job = slurm.submit(Resumable(), str(marker), time="10m")
    usr2_once_started(job, marker, slurm_conf)
    assert wait_releasing_requeued(job, slurm_conf, 300) is JobState.COMPLETED, job.logs("stderr")
    assert job.result() == "resumed"
    assert job.info().restarts == 1


def test_arrays_beyond_max_array_size_are_split_transparently(slurm: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = record_slurm_calls(monkeypatch)
    arr = slurm.map(sq, range(25), cluster="testslurm-small", time="5m")
    assert sum(1 for c in calls if c[0] == "sbatch") == 3
    assert len(arr.infos()[0].native_id.split(",")) == 3
    assert arr.results(timeout=300) == [i * i for i in range(25)]
    cmd = slurm.submit(["sh", "-c", 'echo "task $SUANLI_ARRAY_TASK_ID"'], cluster="testslurm-small",
                       array="5-14,23", time="5m")
    assert cmd.wait(timeout=300) is JobState.COMPLETED
    assert cmd[10].logs() == "task 23\n" and cmd[0].logs() == "task 5\n" and cmd[5].logs() == "task 10\n"
    dependent = slurm.submit(["true"], cluster="testslurm-small", after=arr.id, time="5m")
    assert dependent.wait(timeout=120) is JobState.COMPLETED


def test_ascend_job_gets_its_npus_as_ascend_rt_visible_devices(slurm: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ASCEND_RT_VISIBLE_DEVICES", "7")  # the submitter's value must not leak into the job
    code = 'echo "$ASCEND_RT_VISIBLE_DEVICES"; sleep 3'
    jobs = [slurm.submit(["sh", "-c", code], partition="ai", accelerators="ascend:3", time="5m") for _ in range(2)]
    seen = []
    for job in jobs:
        assert job.wait(timeout=180) is JobState.COMPLETED, job.logs("stderr")
        ids = job.logs().strip().split(",")
        assert len(ids) == 3 and all(i.isdigit() and 0 <= int(i) < 8 for i in ids), ids
        seen.append(set(ids))
    assert not seen[0] & seen[1]  # two jobs at once got different NPUs
    row = slurm.store.get(jobs[0].id)
    assert "HCCL_CONNECT_TIMEOUT" in (Path(row.job_dir) / "job.sh").read_text()


def test_runtime_environment_under_a_real_slurm_step(slurm: Any, tmp_path: Path) -> None:
    prog = tmp_path / "env_probe.py"
    prog.write_text(
        "import json, os, sys\nfrom suanli.runtime import environment\ne = environment()\n"
        "open(os.path.join(sys.argv[1], str(e.rank)), 'w').write(json.dumps([e.launcher, e.rank, e.world_size, "
        "e.local_rank, e.job_id]))\n")
    out = tmp_path / "out"
    out.mkdir()
    job = slurm.submit([sys.executable, str(prog), str(out)], tasks_per_node=2, time="5m")
    assert job.wait(timeout=120) is JobState.COMPLETED, job.logs("stderr")
    got = sorted(json.loads(p.read_text()) for p in out.iterdir())
    assert got == [["slurm", 0, 2, 0, job.id], ["slurm", 1, 2, 1, job.id]]


class SubmititResumable:
    """Written for submitit: checkpoint() returns a submitit DelayedSubmission."""

    def __call__(self, marker: str, resumed: bool = False) -> str:
        if resumed:
            return "resumed via submitit"
        Path(marker).write_text("started")
        time.sleep(300)
        return "ran to the end"

    def checkpoint(self, marker: str, resumed: bool = False) -> Any:
        import submitit

        return submitit.helpers.DelayedSubmission(self, marker, resumed=True)


def test_submitit_checkpointable_callable_works_unchanged(slurm: Any, tmp_path: Path, slurm_conf: str) -> None:
    pytest.importorskip("submitit")
    marker = tmp_path / "started"
    job = slurm.submit(SubmititResumable(), str(marker), time="10m")
    usr2_once_started(job, marker, slurm_conf)
    assert wait_releasing_requeued(job, slurm_conf, 300) is JobState.COMPLETED, job.logs("stderr")
    assert job.result() == "resumed via submitit"


def test_unreachable_controller_is_a_bounded_clear_error(slurm: Any, slurm_conf: str, tmp_path: Path) -> None:
    import re

    conf = re.sub(r"(?m)^SlurmctldPort=.*$", "SlurmctldPort=9", Path(slurm_conf).read_text())
    dead = tmp_path / "dead-slurm.conf"
    dead.write_text(conf)
    cfg = Path(os.environ["SUANLI_CONFIG"]) / "dead.yaml"
    cfg.write_text(f"name: dead\nbackend: slurm\nslurm: {{conf: {dead}}}\npartitions:\n  - {{name: debug}}\n")
    t0 = time.monotonic()
    r = run_cli("submit", "--cluster", "dead", "--", "true", env={"SLURM_CONF": str(dead)})
    assert r.returncode == 4, r.stderr
    assert "sbatch" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert time.monotonic() - t0 < 180
    assert json.loads(run_cli("status", "--json", "--all").stdout) == []
