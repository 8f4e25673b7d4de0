"""Slurm output parsers on real captured outputs (tests/fixtures/README.md names each source)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from suanli.compute.slurm.backend import slurm_name
from suanli.compute.slurm.parse import (
    expand_brackets,
    parse_exit,
    parse_sacct,
    parse_sbatch,
    parse_squeue,
)
from suanli.jobs.state import JobState

FIX = Path(__file__).parent / "fixtures" / "sacct"


def load(name: str) -> list:  # type: ignore[type-arg]
    header, *rows = (FIX / name).read_text().splitlines()
    return parse_sacct("\n".join(rows), header.split("|"))


def test_steps_are_skipped_and_tasks_kept() -> None:
    states = load("tdhock-slurm__sacct-multistep.txt")
    lines = (FIX / "tdhock-slurm__sacct-multistep.txt").read_text().splitlines()[1:]
    running = {ln.split("|")[0] for ln in lines if "." not in ln.split("|")[0] and "[" not in ln}
    pending = {f"26735347_{t}" for t in range(76, 1000)}  # the file's 26735347_[76-999] row
    assert {f"{s.job}_{s.task}" for s in states} == running | pending
    assert all(s.state is JobState.RUNNING for s in states if f"{s.job}_{s.task}" in running)
    assert all(s.state is JobState.PENDING for s in states if f"{s.job}_{s.task}" in pending)


def test_pending_range_expands_to_its_tasks() -> None:
    states = load("tdhock-slurm__sacct-PENDING.txt")
    assert sorted((s.job, s.task, s.state) for s in states) == [
        ("18246458", 1, JobState.PENDING), ("18246458", 2, JobState.PENDING)]


def test_mixed_finished_and_pending() -> None:
    states = {(s.job, s.task): s for s in load("tdhock-slurm__sacct-multitype.txt")}
    assert states[("13937810", 25)].state is JobState.COMPLETED and states[("13937810", 25)].exit_code == 0
    assert [states[("14022192", t)].state for t in (1, 2, 3)] == [JobState.PENDING] * 3


def test_out_of_memory_job_is_failed_with_its_code() -> None:
    (job,) = load("tdhock-slurm__sacct-oom.txt")
    assert job.job == "7585175" and job.state is JobState.FAILED and job.exit_code == 1


def test_pending_range_that_lags_does_not_hide_running_tasks() -> None:
    states = {s.task: s for s in load("testcluster__sacct-pending-array.txt")}
    assert states[2].state is JobState.RUNNING and states[3].state is JobState.RUNNING
    assert states[2].raw_id == "226" and states[2].restarts == 0
    assert states[0].state is JobState.COMPLETED and states[0].ended_at is not None
    assert {t for t, s in states.items() if s.state is JobState.PENDING} == set(range(4, 21))


def test_many_jobs_parse_quickly_and_completely() -> None:
    states = load("tdhock-slurm__sacct-multiuser.txt")
    lines = [ln for ln in (FIX / "tdhock-slurm__sacct-multiuser.txt").read_text().splitlines()[1:]
             if "." not in ln.split("|")[0] and "[" not in ln]
    assert len(states) >= len(lines)
    assert {s.state for s in states} <= {JobState.RUNNING, JobState.PENDING, JobState.COMPLETED}


def test_requeued_attempts_count_as_restarts() -> None:
    text = ("5|5|REQUEUED|0:0|2026-11-27T10:23:36|2026-11-27T10:23:36|None\n"
            "5|5|REQUEUED|0:0|2026-11-27T10:25:40|2026-11-27T10:25:41|None\n"
            "5|5|COMPLETED|0:0|2026-11-27T10:27:45|2026-11-27T10:27:46|None\n")
    (s,) = parse_sacct(text)
    assert s.state is JobState.COMPLETED and s.restarts == 2


def test_unknown_state_is_unknown_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="suanli"):
        (s,) = parse_sacct("9|9|WIBBLE|0:0|Unknown|Unknown|None\n")
    assert s.state is JobState.UNKNOWN and "WIBBLE" in caplog.text


def test_exit_codes_and_brackets_and_sbatch() -> None:
    assert parse_exit("0:0") == 0 and parse_exit("3:0") == 3 and parse_exit("0:9") == 137
    assert expand_brackets("[1-3,7,10-14:2%4]") == [1, 2, 3, 7, 10, 12, 14]
    assert parse_sbatch("1234\n") == "1234" and parse_sbatch("77;cluster\n") == "77"
    with pytest.raises(ValueError):
        parse_sbatch("sbatch: error: nope")


def test_squeue_rows() -> None:
    states = parse_squeue("12|PENDING|Priority\n13_[0-2]|PENDING|JobArrayTaskLimit\n14_5|RUNNING|None\n")
    got = {(s.job, s.task): (s.state, s.reason) for s in states}
    assert got[("12", None)] == (JobState.PENDING, "Priority")
    assert got[("13", 2)] == (JobState.PENDING, "JobArrayTaskLimit")
    assert got[("14", 5)] == (JobState.RUNNING, None)


def test_slurm_name_is_plain() -> None:
    assert slurm_name("a b\n$(x)'") == "a_b___x__"
    assert slurm_name("") == "job" and len(slurm_name("x" * 200)) == 64


def test_split_array_keeps_indices_below_the_limit() -> None:
    from suanli.compute.slurm.launch import split_array
    from suanli.jobs.spec import Array

    assert split_array(Array(tuple(range(5))), 1001) == [(0, "0-4")]
    assert split_array(Array(tuple(range(2500)), 50), 1000) == [(0, "0-999%50"), (1000, "0-999%50"),
                                                                 (2000, "0-499%50")]
    assert split_array(Array((3, 1500, 1501)), 1000) == [(0, "3"), (1000, "500-501")]
