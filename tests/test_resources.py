"""Unit tests for suanli.jobs.resources: time, memory and accelerator parsing, and Resources."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from suanli.errors import UsageError
from suanli.jobs.resources import (
    Resources,
    format_slurm_time,
    normalize_kind,
    parse_accelerators,
    parse_memory,
    parse_time,
)

# Every accepted-form hint the time error message must list.
TIME_FORMS = ("90m", "2h", "30s", "1d", "1-00:00:00", "HH:MM:SS", "MM:SS", "minutes")


# ---------------------------------------------------------------- parse_time
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90m", timedelta(minutes=90)),
        ("2h", timedelta(hours=2)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("45s", timedelta(seconds=45)),
        ("1d", timedelta(days=1)),
        ("1d2h3m4s", timedelta(days=1, hours=2, minutes=3, seconds=4)),
        ("1.5h", timedelta(minutes=90)),
        ("2H", timedelta(hours=2)),
        ("  90m  ", timedelta(minutes=90)),
        ("90", timedelta(minutes=90)),
        ("1.5", timedelta(seconds=90)),
        ("05:30", timedelta(minutes=5, seconds=30)),
        ("90:00", timedelta(minutes=90)),
        ("01:02:03", timedelta(hours=1, minutes=2, seconds=3)),
        ("26:00:00", timedelta(hours=26)),
        ("2-12", timedelta(days=2, hours=12)),
        ("2-12:30", timedelta(days=2, hours=12, minutes=30)),
        ("2-12:30:15", timedelta(days=2, hours=12, minutes=30, seconds=15)),
        ("0-00:00:01", timedelta(seconds=1)),
        ("3-00:00:00", timedelta(days=3)),
    ],
)
def test_parse_time_text_forms(text: str, expected: timedelta) -> None:
    assert parse_time(text) == expected


def test_parse_time_timedelta_passes_through() -> None:
    td = timedelta(hours=3, seconds=7)
    assert parse_time(td) == td


@pytest.mark.parametrize(
    ("number", "expected"),
    [(90, timedelta(minutes=90)), (1, timedelta(minutes=1)), (1.5, timedelta(seconds=90)),
     (0.5, timedelta(seconds=30))],
)
def test_parse_time_numbers_are_minutes(number: float, expected: timedelta) -> None:
    assert parse_time(number) == expected


@pytest.mark.parametrize("text", ["UNLIMITED", "unlimited", "Infinite", "none", "", "   "])
def test_parse_time_no_limit(text: str) -> None:
    assert parse_time(text) is None


def test_parse_time_none_is_none() -> None:
    assert parse_time(None) is None


@pytest.mark.parametrize(
    "bad",
    ["abc", "1h 30m", "1h30", "1:2:3:4", "1-", "-5m", "-1", "1e5", "h", "1x", "1-2-3", "1-a", "a-1",
     "1-1:2:3:4", "::", "1::2"],
)
def test_parse_time_malformed(bad: str) -> None:
    with pytest.raises(UsageError) as exc:
        parse_time(bad, field="resources.time")
    msg = str(exc.value)
    assert msg.startswith("resources.time: ")
    assert repr(bad) in msg
    assert "not a duration" in msg
    for form in TIME_FORMS:
        assert form in msg, (form, msg)


def test_parse_time_default_field_named_time() -> None:
    with pytest.raises(UsageError, match=r"^time: 'xyz' is not a duration"):
        parse_time("xyz")


@pytest.mark.parametrize("bad", [True, False])
def test_parse_time_refuses_booleans(bad: bool) -> None:
    with pytest.raises(UsageError, match="is not a duration"):
        parse_time(bad, field="max_time")


@pytest.mark.parametrize(
    "bad",
    ["0", "0m", "0s", "00:00", "0:00:00", "0-00:00:00", "0-0", "0d0h", 0, 0.0, -1, -0.5,
     timedelta(0), timedelta(seconds=-1), timedelta(days=-2)],
)
def test_parse_time_zero_and_negative_refused(bad: object) -> None:
    with pytest.raises(UsageError) as exc:
        parse_time(bad, field="default_time")  # type: ignore[arg-type]
    msg = str(exc.value)
    assert msg.startswith("default_time: ")
    assert "not positive" in msg
    for form in TIME_FORMS:
        assert form in msg


@pytest.mark.parametrize("huge", ["99999999999d", "99999999999999999999", "9999999999-00:00:00"])
def test_parse_time_overflow_is_usage_error(huge: str) -> None:
    with pytest.raises(UsageError, match="time"):
        parse_time(huge)


@given(st.integers(min_value=1, max_value=100 * 365 * 86400))
def test_format_slurm_time_round_trips(seconds: int) -> None:
    td = timedelta(seconds=seconds)
    text = format_slurm_time(parse_time(td))  # type: ignore[arg-type]
    d, _, hms = text.partition("-")
    h, m, s = hms.split(":")
    assert len(h) == len(m) == len(s) == 2
    assert int(d) * 86400 + int(h) * 3600 + int(m) * 60 + int(s) == seconds
    assert parse_time(text) == td


@pytest.mark.parametrize(
    ("td", "text"),
    [
        (timedelta(seconds=1), "0-00:00:01"),
        (timedelta(hours=1, minutes=30), "0-01:30:00"),
        (timedelta(days=3, hours=4, minutes=5, seconds=6), "3-04:05:06"),
        (timedelta(seconds=1.2), "0-00:00:02"),  # rounded up to whole seconds
    ],
)
def test_format_slurm_time_examples(td: timedelta, text: str) -> None:
    assert format_slurm_time(td) == text


# ---------------------------------------------------------------- parse_memory
@pytest.mark.parametrize(
    ("value", "mib"),
    [
        ("4G", 4096),
        ("4g", 4096),
        ("4GB", 4096),
        ("4GiB", 4096),
        ("4 G", 4096),
        ("500M", 500),
        ("500", 500),
        ("1T", 1024 * 1024),
        ("2048K", 2),
        ("1.5G", 1536),
        (4096, 4096),
        (1, 1),
    ],
)
def test_parse_memory(value: str | int, mib: int) -> None:
    assert parse_memory(value) == mib


def test_parse_memory_none() -> None:
    assert parse_memory(None) is None


@pytest.mark.parametrize("bad", ["abc", "4X", "G", "-4G", "4 GG", "", "nan", True])
def test_parse_memory_malformed(bad: object) -> None:
    with pytest.raises(UsageError) as exc:
        parse_memory(bad, field="resources.memory")  # type: ignore[arg-type]
    msg = str(exc.value)
    assert msg.startswith("resources.memory: ")
    assert "not a memory size" in msg
    assert "4G" in msg and "500M" in msg and "MiB" in msg


@pytest.mark.parametrize("bad", [0, -1, "0", "0G"])
def test_parse_memory_not_positive(bad: object) -> None:
    with pytest.raises(UsageError, match=r"^memory: .* must be positive"):
        parse_memory(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(("text", "mib"), [("512K", 1), ("1025K", 2), ("1.5M", 2)])
def test_parse_memory_rounds_up_to_whole_mib(text: str, mib: int) -> None:
    assert parse_memory(text) == mib


# ---------------------------------------------------------------- parse_accelerators
@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("ascend:8", ("ascend", 8)),
        ("npu:4", ("ascend", 4)),
        ("ASCEND:2", ("ascend", 2)),
        ("nvidia", ("nvidia", 1)),
        ("gpu:2", ("nvidia", 2)),
        ("cuda:3", ("nvidia", 3)),
        ("gpu", ("nvidia", 1)),
        ("4", (None, 4)),
        (4, (None, 4)),
        (0, (None, 0)),
        ("0", (None, 0)),
        (None, (None, 0)),
    ],
)
def test_parse_accelerators(value: object, expected: tuple[str | None, int]) -> None:
    assert parse_accelerators(value) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", ["tpu:2", "fpga", ":8", "mlu:1"])
def test_parse_accelerators_unknown_kind_lists_valid(bad: str) -> None:
    with pytest.raises(UsageError) as exc:
        parse_accelerators(bad, field="resources.accelerators")
    msg = str(exc.value)
    assert msg.startswith("resources.accelerators: ")
    assert "unknown accelerator kind" in msg
    assert "valid kinds: ascend, nvidia" in msg


@pytest.mark.parametrize("bad", ["ascend:0", "ascend:-1", "nvidia:x", "gpu:1.5"])
def test_parse_accelerators_bad_count(bad: str) -> None:
    with pytest.raises(UsageError, match="needs a positive count per node"):
        parse_accelerators(bad)


@pytest.mark.parametrize("bad", [-1, True])
def test_parse_accelerators_bad_numbers(bad: object) -> None:
    with pytest.raises(UsageError, match="^accelerators: "):
        parse_accelerators(bad)  # type: ignore[arg-type]


def test_normalize_kind_aliases() -> None:
    assert normalize_kind(" NPU ") == "ascend"
    assert normalize_kind("Cuda") == "nvidia"
    with pytest.raises(UsageError, match="valid kinds: ascend, nvidia"):
        normalize_kind("tpu")


# ---------------------------------------------------------------- Resources
def test_resources_defaults() -> None:
    r = Resources()
    assert (r.nodes, r.tasks_per_node, r.cpus_per_task) == (1, 1, 1)
    assert r.memory is None and r.memory_mb is None
    assert r.accelerators == 0 and r.accelerator_kind is None
    assert r.time is None and r.time_limit is None


def test_resources_normalises_values() -> None:
    r = Resources(nodes="2", tasks_per_node=4, cpus_per_task=3, memory="4G", accelerators="gpu:2",  # type: ignore[arg-type]
                  time="1h30m")
    assert r.nodes == 2
    assert r.memory == 4096 and r.memory_mb == 4096
    assert r.accelerators == 2 and r.accelerators_per_node == 2
    assert r.accelerator_kind == "nvidia"
    assert r.time == timedelta(minutes=90) and r.time_limit == timedelta(minutes=90)
    assert r.total_tasks == 8
    assert r.cpus_per_node == 12


def test_resources_equal_after_normalisation() -> None:
    a = Resources(memory="2G", time="2h", accelerators="npu:8")
    b = Resources(memory=2048, time=timedelta(hours=2), accelerators=8, accelerator_kind="ascend")
    assert a == b
    assert hash(a) == hash(b)


def test_resources_explicit_kind_with_bare_count() -> None:
    r = Resources(accelerators=4, accelerator_kind="gpu")
    assert (r.accelerators, r.accelerator_kind) == (4, "nvidia")


def test_resources_kind_dropped_without_accelerators() -> None:
    r = Resources(accelerators=0, accelerator_kind="ascend")
    assert r.accelerators == 0
    assert r.accelerator_kind is None


def test_resources_matching_kind_and_alias_agree() -> None:
    r = Resources(accelerators="ascend:2", accelerator_kind="npu")
    assert (r.accelerators, r.accelerator_kind) == (2, "ascend")


def test_resources_kind_contradiction() -> None:
    with pytest.raises(UsageError) as exc:
        Resources(accelerators="ascend:2", accelerator_kind="nvidia")
    msg = str(exc.value)
    assert msg.startswith("resources.accelerators: ")
    assert "'ascend'" in msg and "'nvidia'" in msg and "contradicts" in msg


def test_resources_unknown_explicit_kind() -> None:
    with pytest.raises(UsageError, match=r"^resources.accelerator_kind: unknown accelerator kind 'tpu'"):
        Resources(accelerators=1, accelerator_kind="tpu")


@pytest.mark.parametrize(
    ("kwargs", "prefix"),
    [
        ({"nodes": 0}, "resources.nodes: 0 must be at least 1"),
        ({"nodes": -3}, "resources.nodes: -3 must be at least 1"),
        ({"nodes": "two"}, "resources.nodes: 'two' is not a whole number"),
        ({"nodes": 1.5}, "resources.nodes: 1.5 is not a whole number"),
        ({"nodes": True}, "resources.nodes: True is not a whole number"),
        ({"tasks_per_node": 0}, "resources.tasks_per_node: 0 must be at least 1"),
        ({"cpus_per_task": 0}, "resources.cpus_per_task: 0 must be at least 1"),
        ({"memory": "lots"}, "resources.memory: 'lots' is not a memory size"),
        ({"accelerators": "tpu:1"}, "resources.accelerators: unknown accelerator kind 'tpu'"),
        ({"time": "soon"}, "resources.time: 'soon' is not a duration"),
        ({"time": 0}, "resources.time: 0 is not positive"),
    ],
)
def test_resources_errors_name_the_field(kwargs: dict[str, object], prefix: str) -> None:
    with pytest.raises(UsageError) as exc:
        Resources(**kwargs)  # type: ignore[arg-type]
    assert str(exc.value).startswith(prefix), str(exc.value)


@pytest.mark.parametrize(
    "res",
    [
        Resources(),
        Resources(nodes=4, tasks_per_node=2, cpus_per_task=8, memory="16G", accelerators="ascend:8",
                  time="2-00:00:00"),
        Resources(accelerators="gpu:1", time="45s"),
        Resources(memory=1, time=timedelta(seconds=1)),
        Resources(accelerators=3, time=timedelta(hours=1, seconds=0.5)),
    ],
)
def test_resources_dict_round_trip(res: Resources) -> None:
    d = res.to_dict()
    assert set(d) == {"nodes", "tasks_per_node", "cpus_per_task", "memory_mb", "accelerators",
                      "accelerator_kind", "time_s"}
    assert Resources.from_dict(d) == res
    assert Resources.from_dict(d).to_dict() == d


def test_resources_to_dict_values() -> None:
    d = Resources(nodes=2, memory="1G", accelerators="npu:4", time="1h").to_dict()
    assert d["nodes"] == 2
    assert d["memory_mb"] == 1024
    assert d["accelerators"] == 4
    assert d["accelerator_kind"] == "ascend"
    assert d["time_s"] == 3600.0
    assert Resources().to_dict()["time_s"] is None


def test_resources_from_partial_dict_uses_defaults() -> None:
    assert Resources.from_dict({}) == Resources()
    assert Resources.from_dict({"nodes": 3, "time_s": 60}) == Resources(nodes=3, time="1m")
