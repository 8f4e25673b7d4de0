"""The sbatch options HPC users reach for (issue 11, item 7): typed ones (exclusive, reservation, mail,
mem_per_cpu, other GRES, node lists, export), the checked ``extra`` pass-through, and per-job stdin/stdout/stderr
paths. The argv is checked on dry-run plans; what Slurm does with each is checked on the real single-node test
cluster (node ``vm``, 8 CPUs); bad values and backends that cannot honour an option are refused with exit 2
before anything is recorded."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
from conftest import run_cli, wait_until

from suanli import Job, Resources
from suanli.errors import UsageError
from suanli.jobs.spec import Command, JobSpec, SchedulerOptions

#: How long slurmdbd may take to write a finished job's row (it lags the controller while it is busy).
SACCT_LAG_S = 300.0


def sacct(native: str, fields: str) -> dict[str, str]:
    """One job's allocation line from sacct (-X), as field -> value."""
    out = subprocess.run(["sacct", "-X", "-n", "-P", "-j", native, "-o", fields], capture_output=True, text=True,
                         timeout=60).stdout.strip().splitlines()
    return dict(zip(fields.split(","), out[0].split("|"), strict=True)) if out else {}


def native_of(client: Any, job_id: str) -> str:
    row = client.store.get(job_id)
    assert row is not None and row.native_id
    return str(row.native_id)


def registry_size(client: Any) -> int:
    return len(client.store.query())


# ---------------------------------------------------------------- argv (dry-run plans)
@pytest.mark.slurm
def test_each_option_is_one_argv_item_on_the_sbatch_command_line(slurm: Any, tmp_path: Path) -> None:
    spec = JobSpec(Command(["true"]), stdin="in.txt", stdout=str(tmp_path / "o-%j.out"),
                   stderr=str(tmp_path / "e-%j.err"),
                   scheduler=SchedulerOptions(exclusive=True, reservation="maint_1", mail_type="end,fail",
                                              mail_user="ada@example.org", mem_per_cpu="2G", gres="dcu:2",
                                              nodelist=["vm", "n[1-3]"], exclude="n9", export="ALL,OMP=4",
                                              extra={"begin": "now+1hour", "hold": True, "nice": 5}))
    plan, _ = slurm.plan(spec)
    argv = plan.argv
    for item in ("--exclusive", "--reservation=maint_1", "--mail-type=END,FAIL", "--mail-user=ada@example.org",
                 "--mem-per-cpu=2048M", "--gres=dcu:2", "--nodelist=vm,n[1-3]", "--exclude=n9",
                 "--export=ALL,OMP=4", "--begin=now+1hour", "--hold", "--nice=5",
                 f"--input={Path.cwd() / 'in.txt'}", f"--output={tmp_path}/o-%j.out",
                 f"--error={tmp_path}/e-%j.err"):
        assert item in argv, item
    assert argv[-1].endswith("/job.sh")  # the script stays last: nothing user-given follows it
    assert "#SBATCH" not in (plan.script or "")
    assert "export SLURM_EXPORT_ENV=ALL" in (plan.script or "")  # srun inside passes the script's environment
    assert "<&0 &" in (plan.script or "")  # the background launch keeps --input's file as its stdin
    assert plan.details["layout"]["stdio"] == {"stdout": f"{tmp_path}/o-%j.out", "stderr": f"{tmp_path}/e-%j.err"}
    # exclusive=user and the accelerators' GRES merged with other GRES into one --gres
    plan2, _ = slurm.plan(JobSpec(Command(["true"]), partition="ai",
                                  scheduler=SchedulerOptions(exclusive="user", gres=["dcu:1"]),
                                  resources=Resources(accelerators="ascend:2")))
    assert "--exclusive=user" in plan2.argv and "--gres=npu:2,dcu:1" in plan2.argv
    assert sum(a.startswith("--gres") for a in plan2.argv) == 1


@pytest.mark.slurm
def test_without_options_the_plan_is_unchanged(slurm: Any) -> None:
    plan, _ = slurm.plan(JobSpec(Command(["true"])))
    assert not any(a.startswith(("--exclusive", "--export", "--input", "--mail")) for a in plan.argv)
    assert "SLURM_EXPORT_ENV" not in (plan.script or "") and "stdio" not in plan.details["layout"]
    assert "<&0" not in (plan.script or "")


# ---------------------------------------------------------------- validation (exit 2, nothing submitted)
BAD = [
    (["--extra", "partition=x"], "extra.partition: --partition cannot go through extra; use partition"),
    (["--extra", "wrap=echo hi"], "extra.wrap:"),
    (["--extra", "output=/tmp/x"], "use stdout instead"),
    (["--extra", "no-such-option=1"], "is not an sbatch option"),
    (["--extra", "hold=1"], "takes no value"),
    (["--extra", "begin"], "needs a value"),
    (["--mail-type", "END,SOMETIMES"], "mail_type: 'SOMETIMES' is not a Slurm mail type"),
    (["--mail-user", "a b@c"], "mail_user:"),
    (["--nodelist", "vm;rm -rf"], "nodelist:"),
    (["--exclude", "n[1-"], "exclude:"),
    (["--gres", "dcu"], "gres: 'dcu' is not name:N"),
    (["--gres", "dcu:0"], "gres:"),
    (["--export", "NONE,FOO"], "export: NONE stands alone"),
    (["--export", "1BAD=x"], "export:"),
    (["--mem-per-cpu", "lots"], "mem_per_cpu:"),
    (["--mem-per-cpu", "1G", "--mem", "4G"], "mem_per_cpu: Slurm takes one of --mem and --mem-per-cpu"),
    (["--exclusive=sometimes"], "exclusive:"),
    (["--reservation", "a b"], "reservation:"),
    (["--stdout", "out-%N.txt"], "stdout: %N is not a pattern"),
    (["--stdout", "out-%a.txt"], "stdout: %a names an array task"),
    (["--array", "0-1", "--stderr", "e-%j.txt"], "stderr: %j differs per array task"),
]


@pytest.mark.slurm
@pytest.mark.parametrize(("flags", "message"), BAD, ids=[" ".join(f) for f, _ in BAD])
def test_bad_values_are_refused_with_exit_2_and_nothing_submitted(slurm: Any, flags: list[str],
                                                                   message: str) -> None:
    r = run_cli("submit", *flags, "--", "true")
    assert r.returncode == 2, r.stdout + r.stderr
    err = r.stderr.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert registry_size(slurm) == 0


def test_the_api_refuses_bad_values_too() -> None:
    with pytest.raises(UsageError, match="extra.time: --time cannot go through extra; use resources.time"):
        SchedulerOptions(extra={"time": "10"})
    with pytest.raises(UsageError, match="gres: 'dcu' is asked for twice"):
        SchedulerOptions(gres=["dcu:1", "dcu:2"])
    with pytest.raises(UsageError, match="extra: 65 options"):
        SchedulerOptions(extra={f"opt{i}": "1" for i in range(65)})
    with pytest.raises(UsageError, match="longer than 4096"):
        SchedulerOptions(nodelist="n" * 5000)
    assert SchedulerOptions(extra={"--begin": "now", "use_min_nodes": True}).extra == {
        "begin": "now", "use-min-nodes": True}


@pytest.mark.slurm
def test_an_accelerator_gres_twice_is_refused(slurm: Any) -> None:
    r = run_cli("submit", "-p", "ai", "--accelerators", "ascend:1", "--gres", "npu:1", "--", "true")
    assert r.returncode == 2 and "gres: 'npu:1' names the accelerators" in r.stderr, r.stderr
    assert registry_size(slurm) == 0


def test_the_local_backend_refuses_sbatch_only_options(client: Any) -> None:
    for flags, name in ((["--exclusive"], "exclusive"), (["--reservation", "r"], "reservation"),
                        (["--extra", "begin=now+1hour"], "extra"), (["--mem-per-cpu", "1G"], "mem_per_cpu"),
                        (["--nodelist", "vm"], "nodelist"), (["--export", "NONE"], "export")):
        r = run_cli("submit", *flags, "--", "true")
        assert r.returncode == 2, r.stderr
        assert r.stderr.startswith(f"suanli: error: {name}: cluster 'local' (backend local) cannot run sbatch "
                                   "options"), r.stderr
    with pytest.raises(UsageError, match="cannot run sbatch options"):
        client.submit(["true"], gres="dcu:1")
    assert registry_size(client) == 0


def test_ray_and_psij_refuse_stdio_paths_and_sbatch_options() -> None:
    from suanli.compute.backends import backend_class
    from suanli.compute.fit import check_capabilities

    spec = JobSpec(Command(["true"]), stdout="/tmp/x.out")
    for name in ("ray", "psij"):
        caps = backend_class(name).capabilities
        assert "stdio_paths" not in caps and "sbatch_options" not in caps
        with pytest.raises(UsageError, match=r"^stdout: .* cannot run custom stdin/stdout/stderr paths"):
            check_capabilities(spec, caps, name)
    assert {"sbatch_options", "stdio_paths"} <= backend_class("slurm").capabilities
    assert "stdio_paths" in backend_class("local").capabilities
    assert "sbatch_options" not in backend_class("local").capabilities


# ---------------------------------------------------------------- JOB.yaml
def test_job_yaml_keys_and_file_line_errors(tmp_path: Path) -> None:
    from suanli.errors import ConfigError
    from suanli.jobs.specfile import load_spec_file

    good = tmp_path / "job.yaml"
    good.write_text("command: [true]\nexclusive: true\nreservation: maint\nmail_type: [END, FAIL]\n"
                    "mail_user: ada\nmem_per_cpu: 2G\ngres: [dcu:2]\nnodelist: n[1-2]\nexclude: n3\n"
                    "export: NONE\nextra: {begin: now+1hour, hold: true, nice: 10}\n"
                    "stdin: in.txt\nstdout: logs/out-%j.txt\nstderr: logs/err-%j.txt\n")
    spec = load_spec_file(str(good))
    s = spec.scheduler
    assert (s.exclusive, s.reservation, s.mail_type, s.mail_user, s.mem_per_cpu_mb) == (
        True, "maint", ("END", "FAIL"), "ada", 2048)
    assert (s.gres, s.nodelist, s.exclude, s.export) == (("dcu:2",), "n[1-2]", "n3", "NONE")
    assert s.extra == {"begin": "now+1hour", "hold": True, "nice": "10"}
    assert (spec.stdin, spec.stdout, spec.stderr) == ("in.txt", "logs/out-%j.txt", "logs/err-%j.txt")
    cases = [
        ("command: [true]\nname: x\nextra:\n  partition: big\n", 4, "extra.partition: --partition cannot go"),
        ("command: [true]\nmail_type: END\nmail_user: x\nnodelist: 'a b'\n", 4, "nodelist:"),
        ("command: [true]\ngres:\n  - dcu\n", 2, "gres: 'dcu' is not name:N"),
        ("command: [true]\n\nstdout: out-%N\n", 3, "stdout: %N is not a pattern"),
        ("command: [true]\nextra: [begin]\n", 2, "extra: expected a mapping"),
        ("command: [true]\nexport: NONE,X\n", 2, "export: NONE stands alone"),
    ]
    for i, (text, line, message) in enumerate(cases):
        f = tmp_path / f"bad{i}.yaml"
        f.write_text(text)
        with pytest.raises(ConfigError) as exc:
            load_spec_file(str(f))
        assert str(exc.value).startswith(f"{f}:{line}: ") and message in str(exc.value), str(exc.value)


@pytest.mark.slurm
def test_cli_flags_and_job_yaml_keys_reach_sbatch(slurm: Any, tmp_path: Path) -> None:
    f = tmp_path / "job.yaml"
    f.write_text("command: [true]\nextra: {begin: now+1hour}\nstdout: a.txt\nmail_type: END\n")
    r = run_cli("submit", str(f), "--dry-run", "--json", "--stdout", str(tmp_path / "b.txt"),
                "--extra", "comment=hi", "--extra", "hold", "--gres", "dcu:1", "--gres", "gpu:1", "-w", "vm")
    assert r.returncode == 0, r.stderr
    argv = json.loads(r.stdout)["plan"]["argv"]
    for item in ("--begin=now+1hour", "--comment=hi", "--hold", "--mail-type=END", f"--output={tmp_path}/b.txt",
                 "--gres=dcu:1,gpu:1", "--nodelist=vm"):
        assert item in argv, (item, argv)
    assert registry_size(slurm) == 0


# ---------------------------------------------------------------- stdio on the local backend
def test_local_stdio_paths_and_logs_read_them(client: Any, tmp_path: Path) -> None:
    (tmp_path / "in.txt").write_text("from-stdin\n")
    logs = tmp_path / "logs"
    logs.mkdir()
    r = run_cli("submit", "--wait", "--json", "--stdin", str(tmp_path / "in.txt"), "--stdout",
                str(logs / "out-%j.txt"), "--stderr", str(logs / "err.txt"), "--",
                "sh", "-c", "cat; echo oops >&2")
    assert r.returncode == 0, r.stderr
    job = json.loads(r.stdout)[0]["id"]
    assert (logs / f"out-{job}.txt").read_text() == "from-stdin\n"
    assert (logs / "err.txt").read_text() == "oops\n"
    default = Path(client.store.root) / "jobs" / job / "job.out"
    assert not default.exists() or default.read_text() == ""
    out = run_cli("logs", job)
    assert out.stdout == "from-stdin\n" and out.stderr == "oops\n"
    # an array: %a per task, and `suanli logs JOB_1` reads task 1's file
    arr = client.submit(["sh", "-c", "echo task-$SUANLI_ARRAY_TASK_ID"], array="0-1",
                        stdout=str(logs / "arr-%A-%a.txt"))
    assert arr.wait(timeout=60).value == "COMPLETED"
    assert (logs / f"arr-{arr.id}-1.txt").read_text() == "task-1\n"
    assert run_cli("logs", f"{arr.id}_1").stdout == "task-1\n"


def test_local_refuses_a_missing_stdin_or_output_folder(client: Any, tmp_path: Path) -> None:
    r = run_cli("submit", "--stdin", str(tmp_path / "nope.txt"), "--", "cat")
    assert r.returncode == 2 and "stdin: no file" in r.stderr
    r = run_cli("submit", "--stdout", str(tmp_path / "no" / "dir.txt"), "--", "true")
    assert r.returncode == 2 and "stdout: the folder" in r.stderr and "does not exist" in r.stderr
    assert registry_size(client) == 0


# ---------------------------------------------------------------- the real Slurm cluster
@pytest.mark.slurm
def test_slurm_honours_exclusive_mem_per_cpu_nodelist_and_begin(slurm: Any) -> None:
    """Submitted together, waited on together: --exclusive holds all 8 CPUs, --mem-per-cpu shows in ReqTRES,
    --nodelist=vm runs on vm, and extra begin=now+1hour leaves the job pending with reason BeginTime."""
    excl = slurm.submit(["true"], time="5m", exclusive=True)
    mem = slurm.submit(["true"], time="5m", cpus_per_task=2, mem_per_cpu="300M")
    node = slurm.submit(["true"], time="5m", nodelist="vm")
    later = slurm.submit(["true"], time="5m", extra={"begin": "now+1hour"})
    wait_until(lambda: later.info().reason == "BeginTime", "the begin=now+1hour job pending on BeginTime",
               SACCT_LAG_S, 0.5)
    assert later.info().state.value == "PENDING"
    later.cancel()
    for job in (excl, mem, node):
        assert job.wait(timeout=180).value == "COMPLETED"
    # slurmdbd may write these rows minutes late (its hourly roll-up, a burst of records from earlier tests).
    alloc = wait_until(lambda: sacct(native_of(slurm, excl.id), "AllocCPUS").get("AllocCPUS"), "sacct AllocCPUS",
                       SACCT_LAG_S, 0.5)
    assert alloc == "8"
    req = wait_until(lambda: sacct(native_of(slurm, mem.id), "ReqTRES").get("ReqTRES"), "sacct ReqTRES",
                     SACCT_LAG_S, 0.5)
    assert "mem=600M" in req, req
    assert wait_until(lambda: sacct(native_of(slurm, node.id), "NodeList").get("NodeList"), "NodeList",
                      SACCT_LAG_S, 0.5) == "vm"


@pytest.mark.slurm
def test_slurm_status_from_the_controller_while_slurmdbd_lags(slurm: Any, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A job slurmdbd has not recorded yet (sacct lists nothing: here a fake sacct on PATH, in front of the real
    squeue) shows the controller's live state instead of the state it was submitted with."""
    later = slurm.submit(["true"], time="5m", extra={"begin": "now+1hour"})
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "sacct").write_text("#!/bin/sh\nexit 0\n")
    (fake / "sacct").chmod(0o755)
    real_path = os.environ["PATH"]
    monkeypatch.setenv("PATH", f"{fake}:{real_path}")
    from suanli.api import Client

    lagging = Client()  # its Slurm backend runs its commands with the fake sacct first on PATH
    monkeypatch.setenv("PATH", real_path)
    lagged = lagging.get_job(later.id)
    assert isinstance(lagged, Job)
    info = lagged.info()
    assert (info.state.value, info.reason) == ("PENDING", "BeginTime")
    lagging.close()
    later.cancel()
    assert later.wait(timeout=SACCT_LAG_S).value == "CANCELLED"


@pytest.mark.slurm
def test_slurm_refuses_excluding_its_only_node(slurm: Any) -> None:
    r = run_cli("submit", "--exclude", "vm", "--", "true")
    assert r.returncode == 4 and "sbatch refused" in r.stderr, r.stderr
    assert registry_size(slurm) == 0


@pytest.mark.slurm
def test_slurm_runs_a_job_in_a_real_reservation(slurm: Any) -> None:
    name = f"suanli_t_{uuid.uuid4().hex[:8]}"
    made = subprocess.run(["scontrol", "create", "reservation", f"ReservationName={name}", "Users=root",
                           "Nodes=vm", "CoreCnt=1", "StartTime=now", "Duration=10"],
                          capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    try:
        job = slurm.submit(["true"], time="5m", reservation=name)
        assert job.wait(timeout=180).value == "COMPLETED"
        # sacct leaves the name out of a job that started in its reservation's first second (Slurm 22.05):
        # compare the reservation's id as slurmdbd recorded it.
        got = wait_until(lambda: sacct(native_of(slurm, job.id), "ReservationId").get("ReservationId"),
                         "sacct ReservationId", SACCT_LAG_S, 0.5)
        assert got == wait_until(lambda: subprocess.run(
            ["sacctmgr", "-n", "-P", "show", "reservation", f"names={name}", "format=id"],
            capture_output=True, text=True, timeout=60).stdout.strip(), "the reservation in slurmdbd", SACCT_LAG_S, 0.5)
        r = run_cli("submit", "--reservation", f"{name}_missing", "--", "true")
        assert r.returncode == 4 and "sbatch refused" in r.stderr, r.stderr
    finally:
        subprocess.run(["scontrol", "delete", f"ReservationName={name}"], capture_output=True, timeout=60)


@pytest.mark.slurm
def test_slurm_export_none_hides_the_submitters_variables(slurm: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUANLI_T_SECRET", "leaked")
    probe = ["/bin/sh", "-c", 'echo "${SUANLI_T_SECRET:-hidden} $SUANLI_JOB_ID"']
    hidden = slurm.submit(probe, time="5m", export="NONE")
    shown = slurm.submit(probe, time="5m")
    named = slurm.submit(probe, time="5m", export="SUANLI_T_SECRET")
    for job in (hidden, shown, named):
        assert job.wait(timeout=180).value == "COMPLETED", job.logs("stderr")
    assert hidden.logs().split() == ["hidden", hidden.id]  # suanli's own variables still reach the job
    assert shown.logs().split() == ["leaked", shown.id]
    assert named.logs().split() == ["leaked", named.id]


@pytest.mark.slurm
def test_slurm_stdio_paths_and_logs_read_them(slurm: Any, tmp_path: Path) -> None:
    (tmp_path / "in.txt").write_text("from-stdin\n")
    r = run_cli("submit", "--wait", "--json", "--stdin", str(tmp_path / "in.txt"), "--stdout",
                str(tmp_path / "out-%j.txt"), "--stderr", str(tmp_path / "err-%j.txt"), "--",
                "sh", "-c", "cat; echo oops >&2")
    assert r.returncode == 0, r.stderr
    job = json.loads(r.stdout)[0]["id"]
    native = native_of(slurm, job)
    assert (tmp_path / f"out-{native}.txt").read_text() == "from-stdin\n"
    assert (tmp_path / f"err-{native}.txt").read_text() == "oops\n"
    out = run_cli("logs", job)
    assert out.stdout == "from-stdin\n" and out.stderr == "oops\n"
    arr = slurm.submit(["sh", "-c", "echo task-$SUANLI_ARRAY_TASK_ID"], array="0-1", time="5m",
                       stdout=str(tmp_path / "arr-%A_%a.txt"))
    assert arr.wait(timeout=180).value == "COMPLETED"
    master = native_of(slurm, arr.id)
    assert (tmp_path / f"arr-{master}_1.txt").read_text() == "task-1\n"
    assert run_cli("logs", f"{arr.id}_0").stdout == "task-0\n"


@pytest.mark.slurm
def test_stdio_on_an_array_split_over_several_slurm_arrays_is_refused(slurm: Any, tmp_path: Path) -> None:
    r = run_cli("submit", "--cluster", "testslurm-small", "--array", "0-15", "--stdout",
                str(tmp_path / "o-%A_%a"), "--", "true")
    assert r.returncode == 2 and "spans several Slurm arrays" in r.stderr, r.stderr
    assert registry_size(slurm) == 0
