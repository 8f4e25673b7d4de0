"""Heterogeneous jobs (``JobSpec.components``): several parts, each with its own command, resources and
partition, in ONE Slurm allocation (sbatch ``... : ...``, ``srun --het-group=N``). On the 3-node cluster a CPU
component on ``cpu`` runs beside an accelerator component on ``npu`` (its npu GRES): one job, one status
(the worst of the components), one cancel, and usage booked per component equal to sacct's."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import run_cli, wait_until

from suanli import Command, Component, JobSpec, JobState, Resources
from suanli.compute.slurm.sacct import parse_sacct_runs
from suanli.errors import ConfigError, UsageError
from suanli.jobs.specfile import load_spec_file

#: Each component writes what it sees: its het group, the hetjob's id and size, its node and its devices.
PROBE = ('import json, os, sys; k = ["SUANLI_HET_GROUP", "SLURM_JOB_ID", "SLURM_HET_SIZE", "SLURMD_NODENAME", '
         '"ASCEND_RT_VISIBLE_DEVICES", "SUANLI_ACCELERATOR_IDS", "SUANLI_ADAPTER", "SUANLI_JOB_ID"]; '
         'json.dump({n: os.environ.get(n, "") for n in k}, open(sys.argv[1], "w")); sys.exit(int(sys.argv[2]))')


def probe(out: Path, name: str, rc: int = 0) -> Command:
    import sys

    return Command([sys.executable, "-c", PROBE, str(out / f"{name}.json"), str(rc)])


def het_spec(out: Path, rc1: int = 0, name: str = "prep-train") -> JobSpec:
    return JobSpec(name=name, resources=Resources(time="5m"), components=[
        Component(probe(out, "c0"), Resources(cpus_per_task=1), partition="cpu"),
        Component(probe(out, "c1", rc1), Resources(accelerators=2), partition="npu"),
    ])


def sacct_rows(native: str, conf: str) -> list[list[str]]:
    proc = subprocess.run(["sacct", "-X", "-n", "-P", "-j", native, "-o", "JobID,State,CPUTimeRAW,AllocTRES"],
                          capture_output=True, text=True, env=dict(os.environ, SLURM_CONF=conf), timeout=30)
    return [line.split("|") for line in proc.stdout.splitlines() if line]


# ---------------------------------------------------------------- on the 3-node cluster
@pytest.mark.multinode
@pytest.mark.slurm
def test_cpu_and_npu_components_run_in_one_job(slurm_multi: Any, slurm_multi_conf: str, tmp_path: Path) -> None:
    """Both components run at once in one hetjob, each on its own partition's node with its own allocation
    (the npu component sees its 2 npu indices, the CPU one none); the job COMPLETED; the ledger holds one
    record per component whose CPU and npu seconds equal sacct's."""
    out = tmp_path / "out"
    out.mkdir()
    plan, _ = slurm_multi.plan(het_spec(out))
    assert ":" in plan.argv and not any(line.startswith("#SBATCH") for line in plan.script.splitlines())
    job = slurm_multi.submit(het_spec(out))
    assert job.wait(timeout=180) is JobState.COMPLETED, job.logs("stderr")[-3000:]
    c0, c1 = (json.loads((out / f"c{i}.json").read_text()) for i in (0, 1))
    native = job.info().native_id
    assert (c0["SUANLI_HET_GROUP"], c1["SUANLI_HET_GROUP"]) == ("0", "1")
    assert c0["SLURM_JOB_ID"] == c1["SLURM_JOB_ID"] == native and c0["SLURM_HET_SIZE"] == c1["SLURM_HET_SIZE"] == "2"
    assert c1["SLURMD_NODENAME"] in ("n2", "n3")  # the npu partition's nodes
    assert c1["SUANLI_ADAPTER"] == "ascend" and c0["SUANLI_ADAPTER"] == "cpu"
    assert len(c1["ASCEND_RT_VISIBLE_DEVICES"].split(",")) == 2 == len(c1["SUANLI_ACCELERATOR_IDS"].split(","))
    assert c0["ASCEND_RT_VISIBLE_DEVICES"] == "" and c0["SUANLI_ACCELERATOR_IDS"] == ""
    assert c0["SUANLI_JOB_ID"] == c1["SUANLI_JOB_ID"] == job.id
    rows = sacct_rows(native, slurm_multi_conf)
    assert [r[0] for r in rows] == [f"{native}+0", f"{native}+1"] and {r[1] for r in rows} == {"COMPLETED"}
    # Usage: one record per component (each its own allocation and TRES), adding up to sacct's.
    db = slurm_multi.accounts.ledger.db

    def booked() -> list[tuple[Any, ...]]:
        with db.transaction() as tx:
            return list(tx.all("SELECT record_id, cpu_seconds, accelerators, partition_name, job_id FROM "
                               "usage_records WHERE native_id = ? ORDER BY record_id", (native,)))

    recs = wait_until(lambda: len(booked()) == 2 and booked(), "both components booked", timeout=60, every=0.5)
    assert [r[0].split("|")[1] for r in recs] == [f"{native}+0", f"{native}+1"]
    assert [r[3] for r in recs] == ["cpu", "npu"] and [r[2] for r in recs] == [0, 2]
    assert {r[4] for r in recs} == {job.id}
    assert sum(float(r[1]) for r in recs) == sum(float(r[2]) for r in sacct_rows(native, slurm_multi_conf))


@pytest.mark.multinode
@pytest.mark.slurm
def test_one_failing_component_fails_the_job_and_cancel_cancels_all(slurm_multi: Any, slurm_multi_conf: str,
                                                                    tmp_path: Path) -> None:
    """The npu component exits 3: the job is FAILED with that code although the CPU one completed. A second
    hetjob cancelled while it runs is CANCELLED in every component (one scancel of the hetjob)."""
    out = tmp_path / "out"
    out.mkdir()
    marker = tmp_path / "running"
    long = JobSpec(name="long", resources=Resources(time="5m"), components=[
        Component(Command(["bash", "-c", f"touch {marker}; sleep 120"]), partition="cpu"),
        Component(Command(["sleep", "120"]), Resources(accelerators=1), partition="npu"),
    ])
    # Both at once: Slurm starts hetjobs from its backfill pass only, so each start may take a while.
    job2 = slurm_multi.submit(long)
    job = slurm_multi.submit(het_spec(out, rc1=3, name="fails"))
    wait_until(lambda: marker.exists(), "the first component running", timeout=120, every=0.2)
    # slurmdbd records the start a moment after the component runs
    wait_until(lambda: job2.status() is JobState.RUNNING, "the hetjob RUNNING", timeout=120, every=0.2)
    job2.cancel()
    assert job2.wait(timeout=120) is JobState.CANCELLED
    assert job.wait(timeout=180) is JobState.FAILED, job.logs("stderr")[-3000:]
    assert job.info().exit_code == 3
    assert json.loads((out / "c0.json").read_text())["SUANLI_HET_GROUP"] == "0"  # the other one still ran
    native = job2.info().native_id
    rows = wait_until(lambda: (r := sacct_rows(native, slurm_multi_conf)) and len(r) == 2
                      and all(x[1].startswith("CANCELLED") for x in r) and r, "both components cancelled",
                      timeout=60, every=0.5)
    assert [r[0] for r in rows] == [f"{native}+0", f"{native}+1"]


# ---------------------------------------------------------------- no cluster needed
def test_component_validation() -> None:
    """Bad component specs fail with a one-line error naming the field and the fix."""
    c = Component(Command(["true"]), partition="cpu")
    cases = [
        (dict(components=[c]), "components: 1 given"),
        (dict(components=[c] * 17), "components: 17 given"),
        (dict(components=[c, Component(Command(["true"]), Resources(time="1h"))]), "components[1].resources.time"),
        (dict(components=[c, c], workload=Command(["ls"])), "workload: a job with components"),
        (dict(components=[c, c], resources=Resources(nodes=2)), "resources: a job with components"),
        (dict(components=[c, c], partition="npu"), "partition: a job with components"),
        (dict(components=[c, c], array="0-3"), "array: a job with components"),
        (dict(components=[c, c], max_restarts=1), "requeue: a job with components"),
        (dict(components=["echo", c]), "components[0]"),
    ]
    for kwargs, message in cases:
        with pytest.raises(UsageError) as exc:
            JobSpec(**kwargs)  # type: ignore[arg-type]
        assert str(exc.value).startswith(message) and "\n" not in str(exc.value), (kwargs, exc.value)
    with pytest.raises(UsageError, match="^workload: .* is not a Command"):
        Component("echo hi")  # type: ignore[arg-type]
    npu = Component(Command(["echo", "x"]), Resources(accelerators=1), partition="npu")
    spec = JobSpec(components=[c, npu], resources=Resources(time="5m"))
    assert spec.workload == c.workload and spec.partition == "cpu" and spec.resources.time_limit is not None


def test_spec_file_components(tmp_path: Path) -> None:
    """A YAML job with components parses to the same spec; a bad component names its file:line and key."""
    f = tmp_path / "job.yaml"
    f.write_text("name: prep-train\nresources: {time: 10m}\ncomponents:\n"
                 "  - {partition: cpu, command: [python, prep.py], resources: {cpus_per_task: 2}}\n"
                 "  - partition: npu\n    resources: {accelerators: 2, nodes: 2}\n    command: [python, train.py]\n")
    spec = load_spec_file(str(f))
    assert [c.partition for c in spec.components] == ["cpu", "npu"]
    assert spec.components[1].resources.nodes == 2 and spec.components[1].resources.accelerators == 2
    assert spec.resources.cpus_per_task == 2 and spec.workload == Command(["python", "prep.py"])
    f.write_text("components:\n  - {command: [a]}\n  - {command: [b], resources: {gpus: 1}}\n")
    with pytest.raises(ConfigError, match=r"job.yaml:3: components\[1\]\.resources\.gpus: unknown key"):
        load_spec_file(str(f))
    f.write_text("command: [a]\ncomponents:\n  - {command: [a]}\n  - {command: [b]}\n")
    with pytest.raises(ConfigError, match=r"job.yaml:1: command: a job with components"):
        load_spec_file(str(f))
    f.write_text("components: []\n")
    with pytest.raises(ConfigError, match=r"components: no components"):
        load_spec_file(str(f))


def test_local_backend_refuses_components(home: Path, tmp_path: Path) -> None:
    """The local backend cannot run a hetjob: exit 2, one line naming components and the fix, nothing recorded."""
    f = tmp_path / "job.yaml"
    f.write_text("components:\n  - {command: ['true']}\n  - {command: ['true']}\n")
    r = run_cli("submit", str(f))
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("suanli: error: components:") and "slurm" in r.stderr, r.stderr
    assert run_cli("list", "--json").stdout.strip() in ("[]", "")


def test_sacct_components_combine_into_one_state() -> None:
    """sacct lists a hetjob as 123+0 and 123+1: one job whose state is the worst of them, never a restart; a
    component slurmdbd has not written yet keeps the job open (the backend compares with its component count)."""
    fields = "JobID|JobIDRaw|State|ExitCode|Start|End|Reason"
    t = "2026-11-30T07:07:54"
    rows = [f"33+0|33|COMPLETED|0:0|{t}|{t}|None", f"33+0.batch|33.batch|COMPLETED|0:0|{t}|{t}|",
            f"33+1|34|FAILED|3:0|{t}|{t}|None"]
    (run,) = parse_sacct_runs("\n".join(rows), fields.split("|"), with_steps=True)
    ts = run.state
    assert (ts.job, ts.task, ts.state, ts.exit_code, ts.restarts, ts.components) == ("33", None, JobState.FAILED, 3,
                                                                                    0, 2)
    (run,) = parse_sacct_runs("\n".join(rows[:2]), fields.split("|"))
    assert run.state.state is JobState.COMPLETED and run.state.components == 1
    cancelled = [f"40+0|40|CANCELLED by 0|0:0|{t}|{t}|None", f"40+0.batch|40.batch|CANCELLED|0:15|{t}|{t}|",
                 f"40+1|41|CANCELLED by 0|0:0|{t}|{t}|None"]
    (run,) = parse_sacct_runs("\n".join(cancelled), fields.split("|"), with_steps=True)
    assert (run.state.state, run.state.exit_code) == (JobState.CANCELLED, 143)
    running = [f"50+0|50|RUNNING|0:0|{t}|Unknown|None", f"50+1|51|COMPLETED|0:0|{t}|{t}|None"]
    (run,) = parse_sacct_runs("\n".join(running), fields.split("|"))
    assert run.state.state is JobState.RUNNING and run.state.ended_at is None


CLUSTER = """name: hetslurm
backend: slurm
default_account: acct-a
slurm: {conf: /nonexistent/slurm.conf, max_array_size: 1001}
partitions:
  - {name: cpu, adapter: cpu, nodes: 3, cpus_per_node: 2, memory_per_node: 2000M}
  - {name: npu, adapter: ascend, nodes: 2, cpus_per_node: 2, accelerators_per_node: 4, max_time: 2h}
"""


def test_slurm_plan_checks_each_component_against_its_partition(home: Path, tmp_path: Path) -> None:
    """The sbatch line holds one ``:`` group per further component with its own partition, nodes and GRES;
    a component that does not fit its partition is refused naming it (exit 2, nothing submitted)."""
    cfg = tmp_path / "clusters"
    cfg.mkdir()
    (cfg / "hetslurm.yaml").write_text(CLUSTER)
    env = {"SUANLI_CONFIG": str(cfg)}
    job = tmp_path / "job.yaml"
    job.write_text("name: pt\nresources: {time: 30m}\ncomponents:\n  - {partition: cpu, command: [prep]}\n"
                   "  - {partition: npu, command: [train], resources: {accelerators: 2, nodes: 2}}\n")
    r = run_cli("submit", "--cluster", "hetslurm", "--dry-run", str(job), env=env)
    assert r.returncode == 0, r.stderr
    line = next(x for x in r.stdout.splitlines() if x.startswith("# command: sbatch"))
    groups = line.removeprefix("# command: ").split(" : ")
    assert len(groups) == 2 and "--partition=cpu" in groups[0] and "--gres" not in groups[0]
    assert groups[1].split()[:3] == ["--partition=npu", "--nodes=2", "--ntasks-per-node=1"]
    assert "--gres=npu:2" in groups[1] and "--time=0-00:30:00" in groups[1]
    assert "srun --het-group=1" in r.stdout and "#SBATCH" not in r.stdout
    bad = [
        ("{partition: npu, command: [t], resources: {accelerators: 8}}", "components[1].accelerators: asked for 8"),
        ("{partition: gpu, command: [t]}", "components[1].partition"),
        ("{partition: npu, command: [t], resources: {cpus_per_task: 3}}", "components[1].cpus: asked for"),
    ]
    for comp, message in bad:
        job.write_text(f"components:\n  - {{partition: cpu, command: [p]}}\n  - {comp}\n")
        r = run_cli("submit", "--cluster", "hetslurm", "--dry-run", str(job), env=env)
        assert r.returncode == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    job.write_text("components:\n  - {partition: cpu, command: [p], resources: {memory: 1G}}\n"
                   "  - {partition: npu, command: [t]}\n")
    r = run_cli("submit", "--cluster", "hetslurm", "--dry-run", str(job), env=env)
    assert r.returncode == 2 and "components[1].resources.memory" in r.stderr, r.stderr


def test_the_worst_case_adds_up_every_component(home: Path, tmp_path: Path) -> None:
    """Quotas see the whole job: the estimate counts each component's CPUs and accelerators at its partition's
    rates, not only component 0's."""
    cfg = tmp_path / "clusters"
    cfg.mkdir()
    (cfg / "hetslurm.yaml").write_text(
        CLUSTER.replace("2000M}", "2000M, charge: {cpu_hour: 2}}")
        .replace("max_time: 2h}", "max_time: 2h, charge: {cpu_hour: 1, accelerator_hour: 3}}"))
    job = tmp_path / "job.yaml"
    job.write_text("name: pt\nresources: {time: 30m}\ncomponents:\n  - {partition: cpu, command: [prep]}\n"
                   "  - {partition: npu, command: [train], resources: {accelerators: 2, nodes: 2}}\n")
    r = run_cli("submit", "--cluster", "hetslurm", "--dry-run", "--json", str(job), env={"SUANLI_CONFIG": str(cfg)})
    assert r.returncode == 0, r.stderr
    est = json.loads(r.stdout)["estimate"]
    assert (est["cpus"], est["accelerators"], est["accelerator_kind"]) == (3, 4, "ascend"), est
    assert est["cpu_hours"] == pytest.approx(1.5) and est["accelerator_hours"] == pytest.approx(2.0)
    # component 0: 1 CPU x 0.5 h x 2; component 1: 2 CPUs x 0.5 h x 1 + 4 NPUs x 0.5 h x 3
    assert est["charge"] == pytest.approx(1.0 + 1.0 + 6.0)


# ---------------------------------------------------------------- review fixes
@pytest.mark.multinode
@pytest.mark.slurm
def test_a_failing_component_stops_the_others_and_component_0_reads_stdin(slurm_multi: Any, tmp_path: Path) -> None:
    """The job's stdin reaches component 0 (a background srun would read /dev/null); when component 1 fails
    the long-running component 0 is stopped, so the job ends FAILED with component 1's code long before
    component 0's sleep would end."""
    got = tmp_path / "stdin.txt"
    src = tmp_path / "input.txt"
    src.write_text("hello het\n")
    spec = JobSpec(name="stops", resources=Resources(time="5m"), stdin=str(src), components=[
        Component(Command(["bash", "-c", f"cat > {got}.tmp && mv {got}.tmp {got}; sleep 300"]), partition="cpu"),
        Component(Command(["bash", "-c", f"until [ -s {got} ]; do sleep 0.2; done; exit 3"]),
                  Resources(accelerators=1), partition="npu"),
    ])
    job = slurm_multi.submit(spec)
    assert job.wait(timeout=150) is JobState.FAILED, job.logs("stderr")[-3000:]
    assert job.info().exit_code == 3
    assert got.read_text() == "hello het\n"


def test_squeue_components_combine_into_one_state() -> None:
    """Without an accounting database status reads squeue, which lists a hetjob as ``123+0``, ``123+1``: the
    rows combine like sacct's (a failed component 1 fails the job; the count of listed components is kept)."""
    from suanli.compute.slurm.parse import parse_squeue

    (ts,) = parse_squeue("70+0|COMPLETED|None\n70+1|FAILED|NonZeroExitCode\n")
    assert (ts.job, ts.task, ts.state, ts.components, ts.reason) == ("70", None, JobState.FAILED, 2,
                                                                      "NonZeroExitCode")
    (ts,) = parse_squeue("71+0|PENDING|Resources\n71+1|PENDING|Resources\n")
    assert (ts.state, ts.reason, ts.components) == (JobState.PENDING, "Resources", 2)
    (ts,) = parse_squeue("72+0|COMPLETED|None\n")
    assert ts.components == 1
    plain = parse_squeue("73|RUNNING|None\n74_[1-2]|PENDING|Priority\n")
    assert [(t.job, t.task, t.components) for t in plain] == [("73", None, 0), ("74", 1, 0), ("74", 2, 0)]


def _backend(tmp_path: Path, answers: dict[str, str | Exception]) -> Any:
    """A SlurmBackend whose Slurm commands answer with captured text: a fake only for what the real test
    cluster cannot be made to do on demand (run without slurmdbd; have slurmdbd lag one component behind)."""
    import subprocess as sp

    from suanli.compute.config import load_configs
    from suanli.compute.slurm.backend import SlurmBackend

    cfg = tmp_path / "clusters"
    cfg.mkdir(exist_ok=True)
    (cfg / "hetslurm.yaml").write_text(CLUSTER)
    backend = SlurmBackend(load_configs(str(cfg)).cluster("hetslurm"))

    def run(argv: list[str], what: str, input_text: str | None = None) -> sp.CompletedProcess[str]:
        answer = answers[argv[0]]
        if isinstance(answer, Exception):
            raise answer
        return sp.CompletedProcess(argv, 0, answer, "")

    backend.run = run  # type: ignore[method-assign]
    return backend


def _het_ref(native: str = "80") -> Any:
    from suanli.compute.base import JobRef

    return JobRef("j1", native, "/nonexistent", (None,), {"components": 2})


def test_status_without_accounting_combines_squeue_components(tmp_path: Path) -> None:
    """No accounting database: the squeue fallback ends a hetjob when every component has (FAILED when
    component 1 failed), never holding it "Completing" for good."""
    from suanli.errors import BackendError

    no_db = BackendError("sacct: Slurm accounting storage is disabled")
    backend = _backend(tmp_path, {"sacct": no_db, "squeue": "80+0|COMPLETED|None\n80+1|FAILED|NonZeroExitCode\n"})
    st = backend.status_many([_het_ref()])[("j1", None)]
    assert st.state is JobState.FAILED and st.native_id is None
    backend = _backend(tmp_path, {"sacct": no_db, "squeue": "80+0|COMPLETED|None\n80+1|COMPLETED|None\n"})
    assert backend.status_many([_het_ref()])[("j1", None)].state is JobState.COMPLETED
    backend = _backend(tmp_path, {"sacct": no_db, "squeue": "80+0|RUNNING|None\n80+1|COMPLETED|None\n"})
    assert backend.status_many([_het_ref()])[("j1", None)].state is JobState.RUNNING


def test_status_waits_for_every_component_in_sacct(tmp_path: Path) -> None:
    """sacct lists only ``+0`` COMPLETED (slurmdbd has not written component 1): RUNNING "Completing", never
    COMPLETED; with both listed, their combination. Only ``+1`` listed: the job's own id stays its native id."""
    t = "2026-11-30T07:07:54"
    c0 = f"80+0|80|COMPLETED|0:0|{t}|{t}|None\n80+0.batch|80.batch|COMPLETED|0:0|{t}|{t}|\n"
    for status in ("status_many", "status_runs"):
        backend = _backend(tmp_path, {"sacct": c0, "squeue": ""})
        got = getattr(backend, status)([_het_ref()])
        st = got[("j1", None)] if status == "status_many" else got[0][3]
        assert (st.state, st.reason, st.ended_at) == (JobState.RUNNING, "Completing", None), status
    backend = _backend(tmp_path, {"sacct": c0 + f"80+1|81|FAILED|3:0|{t}|{t}|None\n", "squeue": ""})
    st = backend.status_many([_het_ref()])[("j1", None)]
    assert (st.state, st.exit_code, st.native_id) == (JobState.FAILED, 3, None)
    backend = _backend(tmp_path, {"sacct": c0 + f"80+1|81|COMPLETED|0:0|{t}|{t}|None\n", "squeue": ""})
    assert backend.status_many([_het_ref()])[("j1", None)].state is JobState.COMPLETED
    backend = _backend(tmp_path, {"sacct": f"80+1|81|RUNNING|0:0|{t}|Unknown|None\n", "squeue": ""})
    st = backend.status_many([_het_ref()])[("j1", None)]
    assert st.state is JobState.RUNNING and st.native_id is None  # not component 1's raw id 81


def test_spec_file_component_partition_is_its_own(tmp_path: Path) -> None:
    """A component's partition is read from its own key: a numeric name is kept as written there (not the
    top-level partition's text), and a bad value names the component's line."""
    f = tmp_path / "job.yaml"
    f.write_text("partition: cpu\ncomponents:\n  - {command: [a]}\n  - command: [b]\n    partition: 0755\n")
    spec = load_spec_file(str(f))
    assert [c.partition for c in spec.components] == [None, "0755"] and spec.partition == "cpu"
    f.write_text("partition: cpu\ncomponents:\n  - {command: [a]}\n  - command: [b]\n    partition: [x]\n")
    with pytest.raises(ConfigError, match=r"job.yaml:5: components\[1\]\.partition: expected a string"):
        load_spec_file(str(f))
    f.write_text("components:\n" + "  - {command: [a]}\n" * 17)
    with pytest.raises(ConfigError, match=r"job.yaml:1: components: 17 given"):
        load_spec_file(str(f))


def _groups(r: subprocess.CompletedProcess[str]) -> list[str]:
    assert r.returncode == 0, r.stderr
    line = next(x for x in r.stdout.splitlines() if x.startswith("# command: sbatch"))
    return line.removeprefix("# command: ").split(" : ")


def test_each_component_gets_the_users_or_its_own_partitions_qos(home: Path, tmp_path: Path) -> None:
    """The user's qos and constraint reach every component; without them each component gets its own
    partition's QoS (not component 0's). A component whose partition has no QoS while component 0 runs with
    one (which sbatch would carry on) is refused naming components[1].partition (exit 2)."""
    cfg = tmp_path / "clusters"
    cfg.mkdir()
    env = {"SUANLI_CONFIG": str(cfg)}
    job = tmp_path / "job.yaml"
    body = ("components:\n  - {partition: cpu, command: [prep]}\n"
            "  - {partition: npu, command: [train], resources: {accelerators: 1}}\n")
    (cfg / "hetslurm.yaml").write_text(CLUSTER.replace("2000M}", "2000M, qos: cpuq}")
                                       .replace("max_time: 2h}", "max_time: 2h, qos: npuq}"))
    job.write_text(body)
    g0, g1 = _groups(run_cli("submit", "--cluster", "hetslurm", "--dry-run", str(job), env=env))
    assert "--qos=cpuq" in g0.split() and "--qos=npuq" in g1.split() and "--qos=cpuq" not in g1.split()
    job.write_text("qos: mine\nconstraint: fast\n" + body)
    g0, g1 = _groups(run_cli("submit", "--cluster", "hetslurm", "--dry-run", str(job), env=env))
    assert {"--qos=mine", "--constraint=fast"} <= set(g0.split()) & set(g1.split())
    (cfg / "hetslurm.yaml").write_text(CLUSTER.replace("2000M}", "2000M, qos: cpuq}"))
    job.write_text(body)
    r = run_cli("submit", "--cluster", "hetslurm", "--dry-run", str(job), env=env)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "components[1].partition: partition 'npu' sets no QoS" in r.stderr and "--qos" in r.stderr, r.stderr
    job.write_text("qos: mine\n" + body)
    g0, g1 = _groups(run_cli("submit", "--cluster", "hetslurm", "--dry-run", str(job), env=env))
    assert "--qos=mine" in g1.split()


def test_stdin_reaches_component_0_in_the_script(home: Path, tmp_path: Path) -> None:
    """With stdin, component 0's srun reads the job's input (``<&0``): in the background it would read
    /dev/null. The other components do not."""
    cfg = tmp_path / "clusters"
    cfg.mkdir()
    (cfg / "hetslurm.yaml").write_text(CLUSTER)
    (tmp_path / "in.txt").write_text("x\n")
    job = tmp_path / "job.yaml"
    job.write_text(f"stdin: {tmp_path / 'in.txt'}\ncomponents:\n  - {{partition: cpu, command: [prep]}}\n"
                   "  - {partition: npu, command: [train]}\n")
    r = run_cli("submit", "--cluster", "hetslurm", "--dry-run", str(job), env={"SUANLI_CONFIG": str(cfg)})
    assert r.returncode == 0, r.stderr
    srun = [x.strip() for x in r.stdout.splitlines() if x.strip().startswith("srun --het-group=")]
    assert len(srun) == 2 and srun[0].endswith(" <&0 &") and not srun[1].endswith("<&0 &"), srun


def test_jobspec_without_a_workload_says_what_to_give() -> None:
    """JobSpec() names the kinds of workload and components, not 'None is not a Command'."""
    with pytest.raises(UsageError) as exc:
        JobSpec()
    assert str(exc.value) == ("workload: give a Command, Function, Map, Training or MPI (or components=[...] for a "
                              "heterogeneous job)")


def test_changing_components_of_a_spec() -> None:
    """``dataclasses.replace`` keeps the old component 0's workload: its error says how to change components;
    ``with_components`` does it."""
    import dataclasses

    from suanli.jobs.components import with_components

    a, b = Component(Command(["a"]), partition="cpu"), Component(Command(["b"]), Resources(cpus_per_task=2))
    spec = JobSpec(name="x", resources=Resources(time="5m"), components=[a, b])
    with pytest.raises(UsageError, match=r"^workload: .*with_components"):
        dataclasses.replace(spec, components=[b, a])
    new = with_components(spec, [b, a])
    assert new.workload == b.workload and new.resources.cpus_per_task == 2 and new.partition is None
    assert new.resources.time_limit == spec.resources.time_limit and new.name == "x"
