"""Unit tests for suanli.jobs.spec, suanli.jobs.state and suanli.api.build_spec."""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from suanli.api import RESOURCE_OPTIONS, SPEC_OPTIONS, build_spec
from suanli.errors import UsageError
from suanli.jobs.resources import Resources
from suanli.jobs.spec import MPI, Array, Command, Dependency, Function, JobSpec, Map, Training
from suanli.jobs.state import JobState, StateTable, combine_states


def square(x: int) -> int:
    return x * x


# ---------------------------------------------------------------- Command
def test_command_keeps_argv() -> None:
    c = Command(["python", "sim.py", "--n", "3"])
    assert c.argv == ("python", "sim.py", "--n", "3")
    assert c.kind == "command"


def test_command_refuses_plain_string() -> None:
    with pytest.raises(UsageError) as exc:
        Command("python sim.py")
    msg = str(exc.value)
    assert msg.startswith("command: ")
    assert "'python sim.py'" in msg
    assert "argv list" in msg


@pytest.mark.parametrize("empty", [[], ()])
def test_command_refuses_empty_argv(empty: list[str]) -> None:
    with pytest.raises(UsageError, match=r"^command: the command is empty"):
        Command(empty)


def test_command_refuses_non_string_and_nul() -> None:
    with pytest.raises(UsageError, match="is not a string"):
        Command(["echo", 3])  # type: ignore[list-item]
    with pytest.raises(UsageError, match="NUL byte"):
        Command(["echo", "a\x00b"])


# ---------------------------------------------------------------- Array
def test_array_parse_range_with_limit() -> None:
    a = Array.parse("0-99%10")
    assert a.indices == tuple(range(100))
    assert a.max_concurrent == 10
    assert len(a) == 100


def test_array_parse_list_and_step() -> None:
    a = Array.parse("1,3,5-11:2")
    assert a.indices == (1, 3, 5, 7, 9, 11)
    assert a.max_concurrent is None


def test_array_parse_sorts_and_deduplicates() -> None:
    assert Array.parse("5,1,3,1,2-4").indices == (1, 2, 3, 4, 5)
    assert Array.parse(" 7 ").indices == (7,)


def test_array_parse_python_values() -> None:
    assert Array.parse(range(2, 6)).indices == (2, 3, 4, 5)
    assert Array.parse(range(0, 10, 3)).indices == (0, 3, 6, 9)
    assert Array.parse([4, 0, 2]).indices == (0, 2, 4)
    a = Array((1, 2), 3)
    assert Array.parse(a) is a


@pytest.mark.parametrize(
    ("bad", "needle"),
    [
        ("", "is not an array spec"),
        ("a-b", "is not an array spec"),
        ("1,,2", "is not an array spec"),
        ("-1", "is not an array spec"),
        ("1-2-3", "is not an array spec"),
        ("0-10%", "the part after % must be a number"),
        ("0-10%x", "the part after % must be a number"),
        ("0-10%0", "concurrency limit 0 must be at least 1"),
        ("5-3", "is an empty range"),
        ("0-10:0", "is an empty range"),
    ],
)
def test_array_parse_bad_specs(bad: str, needle: str) -> None:
    with pytest.raises(UsageError) as exc:
        Array.parse(bad)
    msg = str(exc.value)
    assert msg.startswith("array: ")
    assert needle in msg


@pytest.mark.parametrize(
    ("bad", "needle"),
    [([], "no task indices"), ([-1, 2], "index -1 is negative"), ([1, "2"], "must hold whole numbers"),
     ([True], "must hold whole numbers"), (range(0), "no task indices")],
)
def test_array_parse_bad_python_values(bad: object, needle: str) -> None:
    with pytest.raises(UsageError, match=needle):
        Array.parse(bad)  # type: ignore[arg-type]


def test_array_compact_examples() -> None:
    assert Array.parse("0-99%10").compact() == "0-99%10"
    assert Array.parse("1,3,5-11:2").compact() == "1,3,5,7,9,11"
    assert Array.parse([0, 1, 2, 5, 7, 8]).compact() == "0-2,5,7-8"


@given(
    st.sets(st.integers(min_value=0, max_value=5000), min_size=1, max_size=60),
    st.one_of(st.none(), st.integers(min_value=1, max_value=1000)),
)
def test_array_compact_round_trips(indices: set[int], limit: int | None) -> None:
    a = Array(tuple(indices), limit)
    assert Array.parse(a.compact()) == a


# ---------------------------------------------------------------- Dependency
def test_dependency_parse_plain_job_is_afterok() -> None:
    assert Dependency.parse("abc12345") == Dependency("abc12345", "afterok")
    assert Dependency.parse("  abc12345 ").job_id == "abc12345"


@pytest.mark.parametrize(
    ("text", "kind", "job"),
    [("afterany:JOB", "afterany", "JOB"), ("afterok:J2", "afterok", "J2"), ("any:J3", "afterany", "J3"),
     ("ok:J4", "afterok", "J4"), ("afterany: J5", "afterany", "J5")],
)
def test_dependency_parse_kinds(text: str, kind: str, job: str) -> None:
    d = Dependency.parse(text)
    assert (d.kind, d.job_id) == (kind, job)


def test_dependency_parse_job_handle() -> None:
    class FakeJob:
        id = "handle01"

    assert Dependency.parse(FakeJob()) == Dependency("handle01")
    same = Dependency("x", "afterany")
    assert Dependency.parse(same) is same


@pytest.mark.parametrize("bad", ["afternotok:JOB", "before:JOB", "singleton:x"])
def test_dependency_parse_bad_kind(bad: str) -> None:
    with pytest.raises(UsageError) as exc:
        Dependency.parse(bad)
    msg = str(exc.value)
    assert repr(bad) in msg
    assert "afterok:JOB" in msg and "afterany:JOB" in msg


def test_dependency_bad_values() -> None:
    with pytest.raises(UsageError, match="is not one of afterok, afterany"):
        Dependency("J", "afternotok")  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="is not a job id"):
        Dependency.parse("afterok:")
    with pytest.raises(UsageError, match="is not a job id or Job"):
        Dependency.parse(42)


# ---------------------------------------------------------------- JobSpec
def _cmd() -> Command:
    return Command(["echo", "hi"])


@pytest.mark.parametrize("name", ["1ABC", "A-B", "A B", "", "É", "A.B"])
def test_jobspec_refuses_bad_env_names(name: str) -> None:
    with pytest.raises(UsageError) as exc:
        JobSpec(_cmd(), env={name: "x"})
    msg = str(exc.value)
    assert msg.startswith("env: ")
    assert repr(name) in msg
    assert "not a valid variable name" in msg


def test_jobspec_accepts_good_env_and_stringifies() -> None:
    spec = JobSpec(_cmd(), env={"_A1": "x", "b": 5})  # type: ignore[dict-item]
    assert spec.env == {"_A1": "x", "b": "5"}


def test_jobspec_refuses_nul_in_env_value() -> None:
    with pytest.raises(UsageError, match="^env: the value of BAD holds a NUL byte"):
        JobSpec(_cmd(), env={"OK": "fine", "BAD": "a\x00b"})


@pytest.mark.parametrize("bad", [-1, True, 1.5, "2"])
def test_jobspec_refuses_bad_max_restarts(bad: object) -> None:
    with pytest.raises(UsageError, match=r"^requeue: .* must be a whole number >= 0"):
        JobSpec(_cmd(), max_restarts=bad)  # type: ignore[arg-type]


def test_jobspec_refuses_non_workload_and_non_resources() -> None:
    with pytest.raises(UsageError, match="^workload: "):
        JobSpec(["echo", "hi"])  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="^resources: "):
        JobSpec(_cmd(), resources={"nodes": 2})  # type: ignore[arg-type]


def test_jobspec_normalises_setup_array_dependencies() -> None:
    spec = JobSpec(_cmd(), setup="module load cann", array="0-3%2",  # type: ignore[arg-type]
                   dependencies=("j1", "afterany:j2"))  # type: ignore[arg-type]
    assert spec.setup == ("module load cann",)
    assert spec.array == Array((0, 1, 2, 3), 2)
    assert spec.task_count == 4
    assert spec.dependencies == (Dependency("j1", "afterok"), Dependency("j2", "afterany"))


def test_jobspec_map_sets_array() -> None:
    spec = JobSpec(Map(square, [10, 20, 30]))
    assert spec.array == Array((0, 1, 2))
    assert spec.task_count == 3


def test_jobspec_map_keeps_limit_refuses_other_indices() -> None:
    spec = JobSpec(Map(square, "abcd"), array=Array((0, 1, 2, 3), 2))
    assert spec.array is not None and spec.array.max_concurrent == 2
    with pytest.raises(UsageError, match="a map of 4 items runs tasks 0-3"):
        JobSpec(Map(square, "abcd"), array=Array((0, 1, 2)))


def test_map_refuses_empty_items_and_non_callable() -> None:
    with pytest.raises(UsageError, match="no items"):
        Map(square, [])
    with pytest.raises(UsageError, match="is not callable"):
        Map(3, [1])  # type: ignore[arg-type]


def test_jobspec_task_count_without_array() -> None:
    assert JobSpec(_cmd()).task_count == 1


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (JobSpec(Command(["/usr/bin/python3", "x.py"])), "python3"),
        (JobSpec(Command(["/usr/bin/python3"]), name="custom"), "custom"),
        (JobSpec(MPI(["./bin/sim", "-n"])), "sim"),
        (JobSpec(Function(square, (3,))), "square"),
        (JobSpec(Map(square, [1])), "square"),
        (JobSpec(Training(script="exp/train_ddp.py")), "train_ddp.py"),
        (JobSpec(Training(module="pkg.train")), "pkg.train"),
    ],
)
def test_jobspec_display_name(spec: JobSpec, expected: str) -> None:
    assert spec.display_name == expected


# ---------------------------------------------------------------- JobState
TERMINAL = {JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED, JobState.TIMEOUT, JobState.PREEMPTED,
            JobState.OUT_OF_MEMORY, JobState.NODE_FAIL}


@pytest.mark.parametrize("state", list(JobState))
def test_jobstate_is_terminal(state: JobState) -> None:
    assert state.is_terminal is (state in TERMINAL)
    assert state.is_success is (state is JobState.COMPLETED)
    assert str(state) == state.name


@pytest.mark.parametrize(
    ("states", "expected"),
    [
        ([], JobState.UNKNOWN),
        ([JobState.COMPLETED, JobState.COMPLETED], JobState.COMPLETED),
        ([JobState.COMPLETED, JobState.FAILED], JobState.FAILED),
        ([JobState.FAILED, JobState.NODE_FAIL, JobState.OUT_OF_MEMORY], JobState.NODE_FAIL),
        ([JobState.FAILED, JobState.OUT_OF_MEMORY], JobState.OUT_OF_MEMORY),
        ([JobState.TIMEOUT, JobState.CANCELLED], JobState.TIMEOUT),
        ([JobState.COMPLETED, JobState.CANCELLED], JobState.CANCELLED),
        ([JobState.PREEMPTED, JobState.CANCELLED], JobState.PREEMPTED),
        ([JobState.COMPLETED, JobState.RUNNING], JobState.RUNNING),
        ([JobState.COMPLETED, JobState.PENDING], JobState.PENDING),
        ([JobState.PENDING, JobState.RUNNING, JobState.FAILED], JobState.RUNNING),
        ([JobState.PENDING, JobState.SUSPENDED], JobState.SUSPENDED),
        ([JobState.REQUEUED, JobState.PENDING], JobState.REQUEUED),
        ([JobState.COMPLETING, JobState.REQUEUED], JobState.COMPLETING),
        ([JobState.UNKNOWN, JobState.COMPLETED], JobState.UNKNOWN),
    ],
)
def test_combine_states(states: list[JobState], expected: JobState) -> None:
    assert combine_states(states) is expected
    assert combine_states(iter(states)) is expected  # any iterable, not only lists


# ---------------------------------------------------------------- StateTable
def _table() -> StateTable:
    return StateTable("slurm", {"RUNNING": JobState.RUNNING, "cancelled": JobState.CANCELLED,
                                "OUT_OF_MEMORY": JobState.OUT_OF_MEMORY, "Pending": JobState.PENDING})


@pytest.mark.parametrize(
    ("native", "expected"),
    [
        ("RUNNING", JobState.RUNNING),
        ("running", JobState.RUNNING),
        ("  Running  ", JobState.RUNNING),
        ("RUNNING+", JobState.RUNNING),
        ("CANCELLED", JobState.CANCELLED),
        ("CANCELLED by 0", JobState.CANCELLED),
        ("cancelled by 1234", JobState.CANCELLED),
        ("PENDING", JobState.PENDING),
        ("out_of_memory", JobState.OUT_OF_MEMORY),
    ],
)
def test_state_table_maps_known(native: str, expected: JobState, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="suanli"):
        assert _table()(native) is expected
    assert caplog.records == []


def test_state_table_unknown_warns_once_per_name(caplog: pytest.LogCaptureFixture) -> None:
    table = _table()
    with caplog.at_level(logging.WARNING, logger="suanli"):
        assert table("BOOT_FAIL") is JobState.UNKNOWN
        assert table("BOOT_FAIL") is JobState.UNKNOWN
        assert table("boot_fail") is JobState.UNKNOWN
        assert table("BOOT_FAIL+") is JobState.UNKNOWN
    records = [r for r in caplog.records if r.name == "suanli"]
    assert len(records) == 1
    assert records[0].levelno == logging.WARNING
    msg = records[0].getMessage()
    assert "BOOT_FAIL" in msg and "slurm" in msg and "UNKNOWN" in msg

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="suanli"):
        assert table("DEADLINE") is JobState.UNKNOWN
        assert table("DEADLINE") is JobState.UNKNOWN
        assert table("BOOT_FAIL") is JobState.UNKNOWN
    records = [r for r in caplog.records if r.name == "suanli"]
    assert len(records) == 1
    assert "DEADLINE" in records[0].getMessage()


def test_state_table_warnings_are_per_table(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="suanli"):
        _table()("WEIRD")
        _table()("WEIRD")
    assert len([r for r in caplog.records if r.name == "suanli"]) == 2


def test_state_table_contains() -> None:
    table = _table()
    assert "running" in table
    assert "Cancelled" in table
    assert "BOOT_FAIL" not in table


# ---------------------------------------------------------------- build_spec
def test_build_spec_callable_becomes_function() -> None:
    spec = build_spec(square, (7,), {"extra": 1})
    assert isinstance(spec.workload, Function)
    assert spec.workload.fn is square
    assert spec.workload.args == (7,)
    assert spec.workload.kwargs == {"extra": 1}
    assert spec.display_name == "square"


def test_build_spec_argv_list_becomes_command() -> None:
    spec = build_spec(["python", "sim.py"], (3, "x"))
    assert isinstance(spec.workload, Command)
    assert spec.workload.argv == ("python", "sim.py", "3", "x")
    spec = build_spec(("echo",))
    assert isinstance(spec.workload, Command) and spec.workload.argv == ("echo",)


@pytest.mark.parametrize("bad", ["echo hi", [], [1, 2], 42])
def test_build_spec_refuses_other_targets(bad: object) -> None:
    with pytest.raises(UsageError, match="is not a callable, an argv list, a workload or a JobSpec"):
        build_spec(bad)


def test_build_spec_unknown_option_lists_valid() -> None:
    with pytest.raises(UsageError) as exc:
        build_spec(square, gpus=2)
    msg = str(exc.value)
    assert "unknown option 'gpus'" in msg
    valid = msg.split("valid options: ", 1)[1]
    assert valid.split(", ") == sorted({*RESOURCE_OPTIONS, *SPEC_OPTIONS})
    for name in ("time", "mem", "memory", "accelerators", "nodes", "array", "after", "requeue"):
        assert name in valid.split(", ")


def test_build_spec_resource_options_land_in_resources() -> None:
    spec = build_spec(square, time="2h", mem="4G", accelerators="ascend:2", nodes=3, ntasks_per_node=2,
                      cpus_per_task=4)
    r = spec.resources
    assert r.time == timedelta(hours=2)
    assert r.memory == 4096
    assert (r.accelerators, r.accelerator_kind) == (2, "ascend")
    assert (r.nodes, r.tasks_per_node, r.cpus_per_task) == (3, 2, 4)


def test_build_spec_resource_options_override_given_resources() -> None:
    base = Resources(nodes=2, accelerators="gpu:4", time="1h")
    spec = build_spec(square, resources=base, accelerators="npu:1")
    r = spec.resources
    assert r.nodes == 2 and r.time == timedelta(hours=1)
    assert (r.accelerators, r.accelerator_kind) == (1, "ascend")
    assert build_spec(square, resources=base).resources == base


def test_build_spec_bad_resource_option_is_usage_error() -> None:
    with pytest.raises(UsageError, match=r"^resources.time: "):
        build_spec(square, time="whenever")


def test_build_spec_spec_options() -> None:
    spec = build_spec(["run"], cluster="c", partition="p", account="a", name="n", env={"K": "v"},
                      array="0-4%2", after="job1", requeue=2, qos="high", setup=["module load x"])
    assert (spec.cluster, spec.partition, spec.account, spec.name) == ("c", "p", "a", "n")
    assert spec.env == {"K": "v"}
    assert spec.array == Array(tuple(range(5)), 2)
    assert spec.dependencies == (Dependency("job1"),)
    assert spec.max_restarts == 2
    assert spec.qos == "high"
    assert spec.setup == ("module load x",)


def test_build_spec_jobspec_and_workload_refuse_args() -> None:
    js = JobSpec(_cmd())
    assert build_spec(js, time="1h").resources.time == timedelta(hours=1)
    with pytest.raises(UsageError, match="belong to a callable"):
        build_spec(js, (1,))
    with pytest.raises(UsageError, match="belong to a callable"):
        build_spec(_cmd(), (1,))
