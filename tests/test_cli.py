"""The CLI through real subprocesses: what a user in a new shell sees, exit codes included."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from conftest import run_cli


def submit_json(*args: str) -> dict[str, object]:
    r = run_cli("submit", "--json", *args)
    assert r.returncode == 0, r.stderr
    data: dict[str, object] = json.loads(r.stdout)
    return data


def test_status_in_a_new_process_sees_jobs_from_python(home: Path) -> None:
    import suanli

    job = suanli.submit(["sh", "-c", "exit 0"], name="from-python")
    job.wait(timeout=30)
    r = run_cli("status", "--json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert [row["id"] for row in rows] == [job.id]
    row = rows[0]
    assert row["name"] == "from-python" and row["state"] == "COMPLETED" and row["exit_code"] == 0
    expected = ["id", "name", "cluster", "backend", "native_id", "array_task", "state", "reason", "restarts",
                "partition", "account", "user", "submitted_at", "started_at", "ended_at", "exit_code"]
    assert list(row) == expected
    assert row["submitted_at"].endswith("Z")
    table = run_cli("status")
    assert job.id in table.stdout and "COMPLETED" in table.stdout


def test_submit_json_then_wait_logs_and_exit_codes(home: Path) -> None:
    ok = submit_json("--", "sh", "-c", "echo hello")
    assert set(ok) >= {"id", "cluster", "backend", "native_id", "state"}
    assert ok["cluster"] == "local" and ok["backend"] == "local"
    bad = submit_json("--", "sh", "-c", "echo oops >&2; exit 3")
    r = run_cli("wait", "--timeout", "60", str(ok["id"]))
    assert r.returncode == 0, r.stdout + r.stderr
    r = run_cli("wait", "--timeout", "60", str(ok["id"]), str(bad["id"]))
    assert r.returncode == 1
    logs = run_cli("logs", str(ok["id"]))
    assert logs.returncode == 0 and logs.stdout == "hello\n"
    errs = run_cli("logs", str(bad["id"]), "--stream", "stderr")
    assert errs.stderr == "oops\n" and errs.stdout == ""


def test_submit_wait_and_follow_exit_1_unless_completed_and_exit_code_opts_in(home: Path) -> None:
    r = run_cli("submit", "--wait", "--", "sh", "-c", "exit 5")
    assert r.returncode == 1 and "(exit code 5)" in r.stderr
    r = run_cli("submit", "--wait", "--exit-code", "--", "sh", "-c", "exit 5")
    assert r.returncode == 5
    r = run_cli("submit", "--follow", "--exit-code", "--", "sh", "-c", "echo one; sleep 0.5; echo two; exit 4")
    assert r.returncode == 4
    assert r.stdout.splitlines()[-2:] == ["one", "two"]
    r = run_cli("submit", "--wait", "--", "true")
    assert r.returncode == 0


def test_plain_submit_returns_at_once_with_the_id(home: Path) -> None:
    t0 = time.monotonic()
    r = run_cli("submit", "--", "sleep", "30")
    assert r.returncode == 0 and time.monotonic() - t0 < 10
    job_id = r.stdout.strip()
    assert f"submitted job {job_id}" in r.stderr
    rows = json.loads(run_cli("status", "--json", job_id).stdout)
    assert rows[0]["state"] in ("PENDING", "RUNNING")
    assert run_cli("cancel", job_id).returncode == 0


def test_wait_timeout_exits_1_and_cancel_stops(home: Path) -> None:
    job = submit_json("--", "sleep", "60")
    r = run_cli("wait", "--timeout", "0.5", str(job["id"]))
    assert r.returncode == 1 and "still running" in r.stderr
    r = run_cli("cancel", str(job["id"]))
    assert r.returncode == 0
    r = run_cli("wait", "--timeout", "30", "--json", str(job["id"]))
    assert r.returncode == 1
    assert json.loads(r.stdout)[0]["state"] == "CANCELLED"


def test_array_status_rows_per_task_and_task_logs(home: Path) -> None:
    job = submit_json("--array", "0-3", "--", "sh", "-c", 'echo "task $SUANLI_ARRAY_TASK_ID"')
    r = run_cli("wait", "--timeout", "60", str(job["id"]))
    assert r.returncode == 0, r.stdout + r.stderr
    rows = json.loads(run_cli("status", "--json", str(job["id"])).stdout)
    assert [row["array_task"] for row in rows] == [0, 1, 2, 3]
    assert run_cli("logs", f"{job['id']}_2").stdout == "task 2\n"
    one = json.loads(run_cli("status", "--json", f"{job['id']}_1").stdout)
    assert len(one) == 1 and one[0]["array_task"] == 1


def test_status_filters(home: Path) -> None:
    a = submit_json("--", "true")
    b = submit_json("--", "false")
    run_cli("wait", "--timeout", "30", str(a["id"]), str(b["id"]))
    failed = json.loads(run_cli("status", "--json", "--state", "FAILED").stdout)
    assert [row["id"] for row in failed] == [b["id"]]
    assert json.loads(run_cli("status", "--json", "--since", "2099-01-01").stdout) == []
    assert len(json.loads(run_cli("status", "--json", "--since", "1h").stdout)) == 2
    r = run_cli("status", "--state", "BOGUS")
    assert r.returncode == 2 and "BOGUS" in r.stderr


def test_dry_run_prints_the_script_and_submits_nothing(home: Path) -> None:
    r = run_cli("submit", "--dry-run", "--name", "x$(y)", "--env", "A=b c", "--time", "10m", "--", "echo", "a'b")
    assert r.returncode == 0, r.stderr
    assert "#!/bin/bash" in r.stdout and "export A='b c'" in r.stdout
    assert "exec echo 'a'\"'\"'b'" in r.stdout
    assert "may cost" in r.stdout and "nothing was submitted" in r.stdout
    assert json.loads(run_cli("status", "--json", "--all").stdout) == []
    r = run_cli("submit", "--dry-run", "--json", "--", "true")
    plan = json.loads(r.stdout)
    assert plan["plan"]["backend"] == "local" and plan["estimate"]["tasks"] == 1


def test_bad_inputs_exit_2_with_one_line(home: Path, tmp_path: Path) -> None:
    cases = [
        (["submit", "--cluster", "nope", "--", "true"], "valid clusters: local"),
        (["submit", "--partition", "gpu", "--", "true"], "valid partitions: local"),
        (["submit", "--time", "2 hours", "--", "true"], "time"),
        (["submit", "--mem", "lots", "--", "true"], "memory"),
        (["submit", "--accelerators", "tpu:4", "--", "true"], "valid kinds: ascend, nvidia"),
        (["submit", "--cpus-per-task", "100000", "--", "true"], "cpus"),
        (["submit", "--env", "NOEQUALS", "--", "true"], "KEY=VALUE"),
        (["submit", "--array", "5-1", "--", "true"], "array"),
        (["submit"], "give a command"),
        (["logs", "zzzzzzzz"], "no job"),
        (["status", "--since", "yesterday-ish"], "--since"),
    ]
    for argv, needle in cases:
        r = run_cli(*argv)
        assert r.returncode == 2, (argv, r.returncode, r.stderr)
        assert needle in r.stderr, (argv, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1, (argv, r.stderr)
        assert "Traceback" not in r.stderr
    assert json.loads(run_cli("status", "--json", "--all").stdout) == []


def test_spec_file_submit_and_file_line_errors(home: Path, tmp_path: Path) -> None:
    good = tmp_path / "job.yaml"
    good.write_text("name: from-file\ncommand: [sh, -c, 'echo \"$GREETING\"']\nenv:\n  GREETING: hi there\n"
                    "resources:\n  time: 5m\n")
    r = run_cli("submit", "--wait", "--json", str(good))
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert rows[0]["name"] == "from-file" and rows[0]["state"] == "COMPLETED"
    assert run_cli("logs", rows[0]["id"]).stdout == "hi there\n"
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ncommand: [true]\nresources:\n  nodes: 1\n  time: soon\n")
    r = run_cli("submit", str(bad))
    assert r.returncode == 2 and f"{bad}:5" in r.stderr and "resources" in r.stderr
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: x\ncommand: [true\nenv: {}\n")
    r = run_cli("submit", str(broken))
    assert r.returncode == 2 and str(broken) in r.stderr and "YAML" in r.stderr
    literal = tmp_path / "literal.yaml"
    literal.write_text("command: [printf, '%s|', true, 0755, 1e3, yes]\n")
    r = run_cli("submit", "--wait", "--json", str(literal))
    assert r.returncode == 0, r.stderr
    assert run_cli("logs", json.loads(r.stdout)[0]["id"]).stdout == "true|0755|1e3|yes|"


def test_clusters_lists_local_and_config_files(home: Path, tmp_path: Path) -> None:
    r = run_cli("clusters", "--json")
    assert r.returncode == 0
    clusters = json.loads(r.stdout)
    assert [c["name"] for c in clusters] == ["local"]
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "name: hpc\nbackend: slurm\npartitions:\n  - name: kp\n    adapter: kunpeng\n    cpus_per_node: 128\n"
    )
    r = run_cli("--config", str(cfg), "clusters")
    assert r.returncode == 0 and "hpc" in r.stdout and "kunpeng" in r.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: hpc\nbackend: slurm\npartitions:\n  - name: kp\n    adapter: sparc\n")
    r = run_cli("clusters", "--config", str(bad))
    assert r.returncode == 2 and f"{bad}:5" in r.stderr and "valid adapters" in r.stderr


def test_repository_cluster_configs_are_valid() -> None:
    repo = Path(__file__).resolve().parents[1]
    r = run_cli("clusters", "--json", cwd=repo)
    assert r.returncode == 0, r.stderr
    names = {c["name"] for c in json.loads(r.stdout)}
    assert {"hpc-center", "ray-ai", "local"} <= names
    adapters = {p["adapter"] for c in json.loads(r.stdout) for p in c["partitions"]}
    assert {"phytium", "kunpeng", "ascend", "nvidia"} <= adapters


def test_unreachable_ray_cluster_exits_4(home: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("name: ai\nbackend: ray\nray: {address: 'http://127.0.0.1:9'}\npartitions:\n  - name: cpu\n")
    r = run_cli("--config", str(cfg), "submit", "--cluster", "ai", "--", "true")
    assert r.returncode == 4 and "ray" in r.stderr
    assert json.loads(run_cli("status", "--json", "--all").stdout) == []


def test_completion_and_help(home: Path) -> None:
    r = run_cli("completion", "bash")
    assert r.returncode == 0 and "complete -F _suanli suanli" in r.stdout and "--accelerators" in r.stdout
    check = subprocess_bash_syntax(r.stdout)
    assert check == 0
    h = run_cli("--help")
    assert h.returncode == 0 and "exit codes" in h.stdout
    assert run_cli().returncode == 2


def subprocess_bash_syntax(text: str) -> int:
    import subprocess

    return subprocess.run(["bash", "-n"], input=text, text=True).returncode


def test_python_dash_m_and_console_script_agree(home: Path) -> None:
    exe = Path(sys.executable).with_name("suanli")
    if not exe.exists():
        import pytest

        pytest.skip("console script not installed in this environment")
    import subprocess

    r = subprocess.run([str(exe), "status", "--json"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and json.loads(r.stdout) == []
    time.sleep(0)
