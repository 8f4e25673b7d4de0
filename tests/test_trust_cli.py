"""Trust items of the CLI: spec files followed by flags, YAML bombs, exit codes, bad input as one-line usage
errors, a read-only or missing SUANLI_HOME, array follow, cancel of ended jobs, hostile names in tables/CSV.
Every test runs the real CLI in a subprocess (or the real parser on a captured sacct output)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from conftest import run_cli

FIX = Path(__file__).parent / "fixtures" / "sacct"


def jobs_in_registry() -> list[dict[str, Any]]:
    r = run_cli("status", "--json", "--all")
    assert r.returncode == 0, r.stderr
    rows: list[dict[str, Any]] = json.loads(r.stdout)
    return rows


def one_line_error(r: subprocess.CompletedProcess[str], code: int, *needles: str) -> None:
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr, r.stderr
    for n in needles:
        assert n in r.stderr, (n, r.stderr)


# ---------------------------------------------------------------- item 3: spec file followed by flags
def test_flags_after_a_spec_file_are_applied_and_dry_run_never_submits(home: Path, tmp_path: Path) -> None:
    spec = tmp_path / "job.yaml"
    spec.write_text("name: from-file\ncommand: [sh, -c, 'echo \"$X\"']\n")
    r = run_cli("submit", str(spec), "--dry-run")
    assert r.returncode == 0, r.stderr
    assert "nothing was submitted" in r.stdout
    r = run_cli("submit", str(spec), "--dry-run", "--json", "--env", "X=flag-after", "--name", "renamed")
    assert r.returncode == 0, r.stderr
    plan = json.loads(r.stdout)["plan"]
    assert "renamed" in json.dumps(plan) and "flag-after" in json.dumps(plan)
    r = run_cli("submit", "sh", "-c", "true", "--dry-run")  # a command without --: ambiguous, refused
    one_line_error(r, 2, "--dry-run")
    assert jobs_in_registry() == []
    r = run_cli("submit", str(spec), "--wait", "--json", "--env", "X=ran")
    assert r.returncode == 0, r.stderr
    job = json.loads(r.stdout)[0]
    assert job["name"] == "from-file" and run_cli("logs", job["id"]).stdout == "ran\n"


def test_spec_file_typos_and_stray_arguments_exit_2(home: Path, tmp_path: Path) -> None:
    spec = tmp_path / "job.yaml"
    spec.write_text("command: [true]\n")
    one_line_error(run_cli("submit", "jbo.yaml"), 2, "no spec file 'jbo.yaml'", "suanli submit -- jbo.yaml")
    one_line_error(run_cli("submit", "missing.yml", "--wait"), 2, "no spec file")
    one_line_error(run_cli("submit", str(spec), "extra"), 2, "'extra' after the spec file")
    one_line_error(run_cli("submit", str(spec), "--bogus"), 2, "--bogus", "--help")
    one_line_error(run_cli("submit", "--wait", str(spec), "--follow"), 2, "--wait and --follow")
    assert jobs_in_registry() == []


def test_after_double_dash_a_yaml_name_is_a_command(home: Path, tmp_path: Path) -> None:
    prog = tmp_path / "run.yaml"
    prog.write_text("#!/bin/sh\necho ran-as-program\n")
    prog.chmod(0o755)
    r = run_cli("submit", "--wait", "--json", "--", str(prog))
    assert r.returncode == 0, r.stderr
    assert run_cli("logs", json.loads(r.stdout)[0]["id"]).stdout == "ran-as-program\n"


# ---------------------------------------------------------------- item 4: YAML bombs and bounds
BOMB = "".join(
    [f"l0: &l0 [{','.join(['lol'] * 9)}]\n"]
    + [f"l{i}: &l{i} [{','.join([f'*l{i - 1}'] * 9)}]\n" for i in range(1, 9)]
    + ["command: [true]\n"]
)


@pytest.mark.parametrize("kind", ["spec", "cluster", "settings"])
def test_alias_bombs_are_refused_at_once(home: Path, tmp_path: Path, kind: str) -> None:
    f = tmp_path / ("job.yaml" if kind == "spec" else "settings.yaml" if kind == "settings" else "c.yaml")
    if kind == "spec":
        f.write_text(BOMB)
        argv: tuple[str, ...] = ("submit", "--dry-run", str(f))
    else:
        cfg = tmp_path / "cfg"
        cfg.mkdir()
        f = cfg / f.name
        f.write_text(BOMB.replace("command: [true]\n", "name: x\n"))
        argv = ("--config", str(cfg), "clusters")
    t0 = time.monotonic()
    r = run_cli(*argv, timeout=30)
    elapsed = time.monotonic() - t0
    one_line_error(r, 2, f"{f}:1", "aliases")
    assert elapsed < 5, elapsed  # a process start; the bomb itself never expands


def test_duplicate_keys_deep_nesting_and_huge_files_exit_2(home: Path, tmp_path: Path) -> None:
    dup = tmp_path / "dup.yaml"
    dup.write_text("command: [echo, a]\nname: x\ncommand: [echo, b]\n")
    one_line_error(run_cli("submit", "--dry-run", str(dup)), 2, f"{dup}:3", "duplicate key 'command'")
    deep = tmp_path / "deep.yaml"
    deep.write_text("command: [true]\nenv: " + "[" * 40 + "]" * 40 + "\n")
    one_line_error(run_cli("submit", "--dry-run", str(deep)), 2, f"{deep}:2", "nested more than 32")
    huge = tmp_path / "huge.yaml"
    huge.write_text("command: [true]\n" + "# padding\n" * 120_000)
    one_line_error(run_cli("submit", "--dry-run", str(huge)), 2, str(huge), "limit")


# ---------------------------------------------------------------- item 5: exit codes
def test_waited_job_exit_codes_stay_out_of_suanlis_range(home: Path) -> None:
    for code in (2, 3, 4):
        r = run_cli("submit", "--wait", "--", "sh", "-c", f"exit {code}")
        assert r.returncode == 1 and f"(exit code {code})" in r.stderr, (code, r.stderr)
    r = run_cli("submit", "--wait", "--json", "--", "sh", "-c", "exit 3")
    assert r.returncode == 1 and json.loads(r.stdout)[0]["exit_code"] == 3
    assert "(exit code 3)" in r.stderr
    r = run_cli("submit", "--exit-code", "--", "sh", "-c", "exit 3")  # implies --wait, as srun
    assert r.returncode == 3


def test_registry_faults_are_one_line_with_a_way_out(home: Path) -> None:
    home.mkdir(parents=True)
    (home / "registry.db").write_bytes(b"this is not a database at all" * 200)
    one_line_error(run_cli("status"), 2, str(home / "registry.db"), "damaged", "mv ")
    os.remove(home / "registry.db")
    assert run_cli("submit", "--wait", "--", "true").returncode == 0
    db = home / "registry.db"
    with sqlite3.connect(db) as c:  # fold the WAL in, so the damage below is in the file that is read
        c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data = bytearray(db.read_bytes())
    for page in range(1, len(data) // 4096):
        data[page * 4096: page * 4096 + 100] = b"\xff" * 100
    db.write_bytes(bytes(data))
    one_line_error(run_cli("status", "--all"), 2, str(db), "malformed")


def test_registry_fault_messages_and_codes() -> None:
    from suanli.errors import registry_error

    locked = registry_error("/h/registry.db", sqlite3.OperationalError("database is locked"))
    assert locked.exit_code == 4 and "try again" in str(locked)
    ro = registry_error("/h/registry.db", sqlite3.OperationalError("attempt to write a readonly database"))
    assert ro.exit_code == 2 and "read-only file system" in str(ro)
    bad = registry_error("/h/registry.db", sqlite3.DatabaseError("database disk image is malformed"))
    assert bad.exit_code == 2 and "mv /h/registry.db /h/registry.db.broken" in str(bad)
    assert "\n" not in str(locked) + str(ro) + str(bad)


def test_slurm_timeout_and_cancel_show_the_batch_steps_signal() -> None:
    from suanli.compute.slurm.parse import parse_sacct
    from suanli.jobs.state import JobState

    header, *rows = (FIX / "tdhock-slurm__sacct-manyfields.txt").read_text().splitlines()
    (timeout,) = parse_sacct("\n".join(rows), header.split("|"))
    assert timeout.state is JobState.TIMEOUT and timeout.exit_code == 128 + 15  # the .batch step's 0:15
    text = ("1|1|CANCELLED by 0|0:0|||None\n1.batch|1.batch|CANCELLED|0:15|||\n"
            "1.extern|1.extern|COMPLETED|0:0|||\n2|2|FAILED|3:0|||None\n2.batch|2.batch|FAILED|3:0|||\n"
            "3|3|CANCELLED by 0|0:0|||None\n"  # 3 never started: no step, no code to show
            "4|4|CANCELLED by 0|0:0|||None\n4.batch|4.batch|FAILED|15:0|||\n")  # slurmstepd's form of SIGTERM
    got = {s.job: s.exit_code for s in parse_sacct(text)}
    assert got == {"1": 143, "2": 3, "3": 0, "4": 143}


@pytest.mark.slurm
def test_a_cancelled_slurm_job_shows_signal_15(slurm: Any) -> None:
    from suanli.jobs.state import JobState

    job = slurm.submit(["sleep", "300"], time="5m")
    deadline = time.time() + 60
    while job.status() is not JobState.RUNNING:
        assert time.time() < deadline
        time.sleep(0.5)
    r = run_cli("cancel", job.id)
    assert r.returncode == 0 and "cancel requested" in r.stderr
    assert job.wait(timeout=120) is JobState.CANCELLED
    deadline = time.time() + 60
    while True:  # the batch step's record reaches slurmdbd a moment after the job's
        row = json.loads(run_cli("status", "--json", job.id).stdout)[0]
        if row["exit_code"] == 143 or time.time() > deadline:
            break
        time.sleep(0.5)
        slurm.store.close()
    assert row["state"] == "CANCELLED" and row["exit_code"] == 143, row


# ---------------------------------------------------------------- item 6: bad input is exit 2, one line
BAD_SPECS = [
    ("command: 5\n", "command"),
    ("command: {a: 1}\n", "command"),
    ("command: [true]\nafter: [[1]]\n", "after[0]"),
    ("command: [true]\nrequeue: abc\n", "requeue"),
    ("command: [true]\nrequeue: .inf\n", "requeue"),
    ("function: {call: 'os:getcwd', args: 5}\n", "function.args"),
    ("function: {call: 'os:getcwd', kwargs: [1, 2]}\n", "function.kwargs"),
    ("command: [true]\nsetup: {a: 1}\n", "setup"),
    ("command: [true]\nenv: {A: {b: 1}}\n", "env.A"),
    ("command: [true]\nworkdir: 5\n", "workdir"),
    ("command: [true]\nname: [a]\n", "name"),
    ("command: [true]\narray: {a: 1}\n", "array"),
    ("training: {script: 5}\n", "training.script"),
    ("command: [true]\naccount: \"x\\e[31m\"\n", "account"),
    ("command: [true]\naccount: '=HYPERLINK(1)'\n", "account"),
]


@pytest.mark.parametrize(("text", "field"), BAD_SPECS)
def test_wrong_types_in_a_spec_file_name_the_field_and_line(home: Path, tmp_path: Path, text: str,
                                                            field: str) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    r = run_cli("submit", str(f))
    one_line_error(r, 2, f"{f}:", f"{field}:")
    assert jobs_in_registry() == []


def test_numeric_after_is_a_native_job_id_not_a_crash(home: Path, tmp_path: Path) -> None:
    f = tmp_path / "after.yaml"
    f.write_text("command: [true]\nafter: 12345\n")
    one_line_error(run_cli("submit", str(f)), 2, "no job '12345'")


def test_other_bad_inputs_exit_2_with_one_line(home: Path) -> None:
    one_line_error(run_cli("usage", "--plot", "u.txt", "--by", "day"), 2, "u.txt", ".png")
    assert not Path("u.txt").exists()
    one_line_error(run_cli("logs", "JOB_99999999999999999999"), 2, "out of range")
    one_line_error(run_cli("status", "--bogus"), 2, "--bogus", "--help")
    one_line_error(run_cli("submit", "--nodes", "two", "--", "true"), 2, "--nodes", "--help")
    one_line_error(run_cli("frobnicate"), 2, "frobnicate")


# ---------------------------------------------------------------- item 7: read-only or missing SUANLI_HOME
@contextmanager
def read_only(path: Path) -> Iterator[None]:
    """``path`` on a read-only bind mount (root ignores chmod, a read-only file system it cannot)."""
    if os.geteuid() != 0:
        pytest.skip("making a read-only file system needs root (mount --bind)")
    subprocess.run(["mount", "--bind", str(path), str(path)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(path)], check=True)
        yield
    finally:
        subprocess.run(["umount", str(path)], check=True)


def test_read_verbs_work_on_a_read_only_home(home: Path) -> None:
    r = run_cli("submit", "--wait", "--json", "--", "sh", "-c", "echo kept")
    assert r.returncode == 0, r.stderr
    job_id = json.loads(r.stdout)[0]["id"]
    with read_only(home):
        with pytest.raises(OSError):
            (home / "probe").touch()
        r = run_cli("status", "--json", "--all")
        assert r.returncode == 0, r.stderr
        assert [row["id"] for row in json.loads(r.stdout)] == [job_id]
        assert run_cli("logs", job_id).stdout == "kept\n"
        assert run_cli("clusters").returncode == 0
        r = run_cli("usage", "--json")
        assert r.returncode == 0 and json.loads(r.stdout)[0]["jobs"] == 1, r.stderr
        r = run_cli("submit", "--", "true")
        one_line_error(r, 2, "read-only file system")
    assert [row["id"] for row in jobs_in_registry()] == [job_id]


def test_read_verbs_on_a_missing_home_create_nothing(home: Path) -> None:
    assert not home.exists()
    r = run_cli("status", "--all")
    assert r.returncode == 0 and "no jobs" in r.stdout, r.stderr
    assert json.loads(run_cli("status", "--json").stdout) == []
    one_line_error(run_cli("logs", "abcdefgh"), 2, "no job")
    assert run_cli("clusters").returncode == 0
    assert not home.exists()


# ---------------------------------------------------------------- item 9
def test_follow_an_array_streams_every_task(home: Path) -> None:
    r = run_cli("submit", "--follow", "--array", "0-2", "--", "sh", "-c",
                'echo "out $SUANLI_ARRAY_TASK_ID"; echo "err $SUANLI_ARRAY_TASK_ID" >&2')
    assert r.returncode == 0, r.stderr
    assert sorted(r.stdout.splitlines()) == ["[0] out 0", "[1] out 1", "[2] out 2"]
    assert {"[0] err 0", "[1] err 1", "[2] err 2"} <= set(r.stderr.splitlines())


def test_cancel_of_an_ended_job_says_it_had_ended(home: Path) -> None:
    r = run_cli("submit", "--wait", "--json", "--", "true")
    job_id = json.loads(r.stdout)[0]["id"]
    r = run_cli("cancel", job_id)
    assert r.returncode == 0 and r.stderr.strip() == f"job {job_id} had already ended (COMPLETED)"
    r = run_cli("cancel", "--json", job_id)
    assert json.loads(r.stdout) == [{"id": job_id, "cancel_requested": False, "already_ended": "COMPLETED"}]
    assert json.loads(run_cli("status", "--json", job_id).stdout)[0]["state"] == "COMPLETED"


def test_hostile_names_are_kept_but_never_reach_the_terminal_raw(home: Path) -> None:
    name = "evil\x1b]0;pwned\x07\x1b[2J\u202ename"
    r = run_cli("submit", "--wait", "--json", "--name", name, "--", "true")
    assert r.returncode == 0, r.stderr
    job_id = json.loads(r.stdout)[0]["id"]
    assert json.loads(run_cli("status", "--json", job_id).stdout)[0]["name"] == name  # verbatim in the registry
    table = run_cli("status", job_id).stdout
    assert job_id in table and "evil" in table
    assert not any(c in table for c in "\x1b\x07\u202e"), repr(table)


def test_csv_cells_never_start_a_formula() -> None:
    from suanli.cli.output import clean, csv_cell

    assert [csv_cell(v) for v in ("=SUM(A1)", "+1", "-x", "@cmd", "\tx", "ok", -1.5, None)] == [
        "'=SUM(A1)", "'+1", "'-x", "'@cmd", "'\tx", "ok", -1.5, ""]
    assert clean("a\x1b[31mb\nc") == "a?[31mb c"


def test_a_stopped_job_is_not_final_until_its_batch_step_is_recorded() -> None:
    """slurmdbd writes a cancelled job's row before its batch step's: read in between, the job would be cached
    as final with exit code 0 for good. It stays "completing" until the step is there (at most a minute)."""
    from suanli.compute.slurm.parse import BATCH_STEP_GRACE_S, parse_sacct_runs
    from suanli.jobs.state import JobState

    text = "7|7|CANCELLED by 0|0:0|2026-11-30T10:00:00|2026-11-30T10:00:30|None\n"
    ended = datetime.fromisoformat("2026-11-30T10:00:30").timestamp()
    [run] = parse_sacct_runs(text, with_steps=True, now=ended + 1)
    assert (run.state.state, run.state.reason, run.state.exit_code) == (JobState.RUNNING, "Completing", None)
    [run] = parse_sacct_runs(text, with_steps=True, now=ended + BATCH_STEP_GRACE_S + 1)
    assert (run.state.state, run.state.exit_code) == (JobState.CANCELLED, 0)  # the step never came: give up
    [run] = parse_sacct_runs(text + "7.batch|7.batch|CANCELLED|0:15|||\n", with_steps=True, now=ended + 1)
    assert (run.state.state, run.state.exit_code) == (JobState.CANCELLED, 143)
    [run] = parse_sacct_runs(text, now=ended + 1)  # -X: no steps asked for, nothing to wait for
    assert run.state.state is JobState.CANCELLED
    never_ran = "8|8|CANCELLED by 0|0:0|None|2026-11-30T10:00:30|None\n"
    [run] = parse_sacct_runs(never_ran, with_steps=True, now=ended + 1)
    assert run.state.state is JobState.CANCELLED
    running_step = text + "7.batch|7.batch|RUNNING|0:0|2026-11-30T10:00:00|Unknown|\n"
    [run] = parse_sacct_runs(running_step, with_steps=True, now=ended + 1)
    assert run.state.state is JobState.RUNNING  # the step's end (and signal) is not recorded yet
    zero_first = text + "7.batch|7.batch|CANCELLED|0:0|2026-11-30T10:00:00|2026-11-30T10:00:30|\n"
    [run] = parse_sacct_runs(zero_first, with_steps=True, now=ended + 1)
    assert run.state.state is JobState.RUNNING  # slurmdbd writes the step's 0:15 a moment later
