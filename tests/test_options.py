"""The one option table (``suanli/jobs/options.py``) against everything that reads or mirrors it: Resources,
SchedulerOptions and JobSpec fields, the API's keywords (``build_spec``), the CLI's flags (a real parse and
``suanli submit --help`` in a subprocess), a JOB.yaml's keys and the dask engine's checks. Adding an option in
one place and not the others fails here."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import run_cli

from suanli.errors import UsageError
from suanli.jobs.options import BY_KEYWORD, OPTIONS, Option, in_group, keywords


def sq(x: int) -> int:
    return x * x


#: Per option: the CLI flags that give it (None: API only), the API value, and what the spec then holds at the
#: option's target. Every table entry needs one: a new option is checked through every door.
SAMPLES: dict[str, tuple[list[str] | None, Any, Any]] = {
    "partition": (["-p", "debug"], "debug", "debug"),
    "account": (["-A", "acct-b"], "acct-b", "acct-b"),
    "qos": (["--qos", "high"], "high", "high"),
    "constraint": (["--constraint", "fast"], "fast", "fast"),
    "nodes": (["-N", "2"], 2, 2),
    "tasks_per_node": (["--ntasks-per-node", "3"], 3, 3),
    "cpus_per_task": (["--cpus-per-task", "2"], 2, 2),
    "memory": (["--mem", "2G"], "2G", 2048),
    "accelerators": (["--accelerators", "nvidia:2"], "nvidia:2", 2),
    "accelerator_kind": (None, "gpu", "nvidia"),
    "time": (["-t", "90m"], "90m", timedelta(minutes=90)),
    "array": (["--array", "0-3"], "0-3", None),  # None: compared as Array.parse below
    "name": (["-J", "sweep"], "sweep", "sweep"),
    "env": (["-e", "A=1", "-e", "B=x=y"], {"A": "1", "B": "x=y"}, {"A": "1", "B": "x=y"}),
    "setup": (["--setup", "echo hi"], ["echo hi"], ("echo hi",)),
    "workdir": (["-D", "/tmp"], "/tmp", "/tmp"),
    "after": (["--after", "afterany:20260101-abc"], "afterany:20260101-abc", None),  # Dependency.parse below
    "requeue": (["--requeue", "2"], 2, 2),
    "stdin": (["--input", "in.txt"], "in.txt", "in.txt"),
    "stdout": (["--stdout", "out-%j.txt"], "out-%j.txt", "out-%j.txt"),
    "stderr": (["--error", "err-%j.txt"], "err-%j.txt", "err-%j.txt"),
    "exclusive": (["--exclusive"], True, True),
    "reservation": (["--reservation", "maint"], "maint", "maint"),
    "mail_type": (["--mail-type", "end,FAIL"], "end,FAIL", ("END", "FAIL")),
    "mail_user": (["--mail-user", "a@b.org"], "a@b.org", "a@b.org"),
    "mem_per_cpu": (["--mem-per-cpu", "2G"], "2G", 2048),
    "gres": (["--gres", "mps:100", "--gres", "shard:2"], ["mps:100", "shard:2"], ("mps:100", "shard:2")),
    "nodelist": (["-w", "n1,n[3-5]"], "n1,n[3-5]", "n1,n[3-5]"),
    "exclude": (["-x", "n2"], "n2", "n2"),
    "export": (["--export", "NONE"], "NONE", "NONE"),
    "extra": (["--extra", "begin=now+1hour", "--extra", "hold"], {"begin": "now+1hour", "hold": True},
              {"begin": "now+1hour", "hold": True}),
    "resources": (None, None, None),  # Resources(nodes=3): built in _api_value
    "scheduler": (None, {"reservation": "maint"}, None),
}
#: API-only options need some other keyword beside them to show.
CONTEXT: dict[str, dict[str, Any]] = {"accelerator_kind": {"accelerators": 2}}
#: JobSpec fields that are not options of submit: the target itself, and where it goes.
NOT_OPTIONS = {"workload", "cluster", "components"}


def _api_value(option: Option) -> Any:
    from suanli.jobs.resources import Resources

    value = SAMPLES[option.name][1]
    return Resources(nodes=3) if option.name == "resources" else value


def _expected(option: Option) -> Any:
    from suanli.jobs.resources import Resources
    from suanli.jobs.scheduler import SchedulerOptions
    from suanli.jobs.spec import Array, Dependency

    special = {"array": Array.parse("0-3"), "after": (Dependency.parse("afterany:20260101-abc"),),
               "resources": Resources(nodes=3), "scheduler": SchedulerOptions(reservation="maint")}
    return special.get(option.name, SAMPLES[option.name][2])


def _at(spec: Any, target: str) -> Any:
    """The value at ``resources.memory``, ``scheduler.gres`` or a JobSpec field."""
    for part in target.split("."):
        spec = getattr(spec, part)
    return spec


def test_every_option_has_a_sample() -> None:
    assert sorted(SAMPLES) == sorted(o.name for o in OPTIONS)


def test_the_table_is_well_formed() -> None:
    from suanli.jobs.options import CLI_KINDS, GROUPS

    assert len(BY_KEYWORD) == sum(len(o.keywords) for o in OPTIONS), "a keyword names two options"
    flags = [f for o in OPTIONS for f in o.flags]
    assert len(flags) == len(set(flags)), "a flag gives two options"
    for o in OPTIONS:
        assert o.group in GROUPS and o.cli in CLI_KINDS, o
        assert o.cli_key in o.keywords, f"{o.name}: the CLI passes its value on as a keyword the API refuses"
        assert bool(o.flags) == (SAMPLES[o.name][0] is not None), f"{o.name}: CLI flags and sample disagree"


def test_resources_and_scheduler_options_fields_are_the_table() -> None:
    from suanli.jobs.resources import Resources
    from suanli.jobs.scheduler import SchedulerOptions

    assert sorted(f.name for f in dataclasses.fields(Resources)) == sorted(o.field for o in in_group("resources"))
    assert sorted(f.name for f in dataclasses.fields(SchedulerOptions)) == \
        sorted(o.field for o in in_group("scheduler"))


def test_every_jobspec_field_is_an_option_or_named_not_one() -> None:
    from suanli.jobs.spec import JobSpec

    fields = {f.name for f in dataclasses.fields(JobSpec)}
    assert fields - NOT_OPTIONS == {o.field for o in in_group("job")}


def test_job_yaml_keys_are_table_keywords() -> None:
    from suanli.jobs import specfile

    assert set(specfile.SCHEDULER_KEYS) == {o.name for o in in_group("scheduler")}
    assert set(specfile.RESOURCE_KEYS) <= {o.name for o in in_group("resources")}
    top = set(specfile.SPEC_KEYS) - set(specfile.WORKLOAD_KEYS) - NOT_OPTIONS
    assert top <= set(BY_KEYWORD), sorted(top - set(BY_KEYWORD))


@pytest.mark.parametrize("option", OPTIONS, ids=lambda o: o.name)
def test_the_api_takes_every_keyword_to_its_target(option: Option) -> None:
    from suanli.jobs.build import build_spec

    for kw in option.keywords:
        spec = build_spec(["true"], **CONTEXT.get(option.name, {}), **{kw: _api_value(option)})
        assert _at(spec, option.target) == _expected(option), kw


@pytest.mark.parametrize("option", [o for o in OPTIONS if o.flags], ids=lambda o: o.name)
def test_the_cli_flag_reaches_the_same_target(option: Option) -> None:
    """A real parse with the submit parser ``suanli`` uses, then the CLI's own spec building."""
    from suanli.cli import commands, main

    argv = SAMPLES[option.name][0]
    assert argv is not None
    args = main.run_parser().parse_args(["submit", *argv, "--", "true"])
    main._split_submit(args)
    spec = commands._spec_from_args(args)
    assert _at(spec, option.target) == _expected(option)


def test_cli_flags_extend_a_spec_files_lists(tmp_path: Path) -> None:
    from suanli.cli import commands, main

    job = tmp_path / "job.yaml"
    job.write_text("command: [true]\nsetup: [echo one]\nafter: [20260101-aaa]\ngres: [mps:1]\nenv: {A: '1'}\n")
    args = main.run_parser().parse_args(["submit", str(job), "--setup", "echo two", "--after", "20260101-bbb",
                                         "--gres", "shard:2", "-e", "B=2"])
    main._split_submit(args)
    spec = commands._spec_from_args(args)
    assert spec.setup == ("echo one", "echo two")
    assert [d.job_id for d in spec.dependencies] == ["20260101-aaa", "20260101-bbb"]
    assert spec.scheduler.gres == ("shard:2",)  # a flag's gres replaces the file's, as before
    assert dict(spec.env) == {"A": "1", "B": "2"}


def test_submit_help_lists_every_flag_of_the_table(home: Path) -> None:
    r = run_cli("submit", "--help")
    assert r.returncode == 0, r.stderr
    for option in OPTIONS:
        for flag in option.flags:
            assert f"{flag} " in r.stdout or f"{flag}," in r.stdout or f"{flag}\n" in r.stdout, flag


def test_bad_cli_values_are_one_line_usage_errors(home: Path) -> None:
    for argv, match in ((["-e", "NOEQUALS"], "--env: 'NOEQUALS' is not KEY=VALUE"),
                        (["--mem", "lots"], "resources.memory: 'lots' is not a memory size"),
                        (["-N", "two"], "argument --nodes/-N: invalid int value: 'two'")):
        r = run_cli("submit", "--dry-run", *argv, "--", "true")
        assert r.returncode == 2, (argv, r.stdout, r.stderr)
        assert match in r.stderr and len(r.stderr.strip().splitlines()) <= 2, r.stderr


def test_unknown_api_keyword_lists_every_table_keyword() -> None:
    from suanli.jobs.build import build_spec

    with pytest.raises(UsageError) as info:
        build_spec(sq, gpus=2)
    valid = str(info.value).split("valid options: ", 1)[1].split(", ")
    assert valid == keywords()
    assert {"partition", "account", "name", "env", "mem", "exclusive", "stdout"} <= set(valid)


def test_scheduler_options_build_refuses_what_the_table_lacks() -> None:
    from suanli.jobs.scheduler import SchedulerOptions

    with pytest.raises(UsageError, match=r"^colour: not a scheduler option; valid: exclude, exclusive, export, "):
        SchedulerOptions.build({"colour": "red"})


def test_the_table_module_is_cheap_to_import() -> None:
    heavy = ["dataclasses", "yaml", "suanli.jobs.resources", "suanli.jobs.spec"]
    code = f"import sys, json, suanli.jobs.options; print(json.dumps([m for m in {heavy!r} if m in sys.modules]))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(r.stdout) == []
    code = "import sys; import suanli.cli.main; print('suanli.jobs.options' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "False"  # `suanli --help` builds no submit parser, so it never loads the table


# ---------------------------------------------------------------- dask
@pytest.fixture
def dask_client(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A client that knows a slurm cluster with accelerators that is never contacted (resolve only)."""
    cfg = tmp_path / "dask-clusters"
    cfg.mkdir()
    (cfg / "fake.yaml").write_text(
        "name: fake\nbackend: slurm\ndefault_account: acct-a\nslurm: {conf: /nonexistent/slurm.conf}\n"
        "partitions:\n  - {name: debug, nodes: 1, cpus_per_node: 4, max_time: 2h, adapter: nvidia,"
        " accelerators_per_node: 2, memory_per_node: 8G}\n")
    monkeypatch.setenv("SUANLI_CONFIG", str(cfg))
    from suanli.api import Client

    c = Client()
    yield c
    c.close()


@pytest.mark.parametrize("option", [o for o in OPTIONS if not o.dask], ids=lambda o: o.name)
def test_dask_pilots_take_what_the_table_says(dask_client: Any, option: Option) -> None:
    from suanli.compute.dask.request import resolve

    for kw in option.keywords:
        req = resolve(dask_client, sq, "fake", {**CONTEXT.get(option.name, {}), kw: _api_value(option)})
        assert _at(req.sub.spec, option.target) == _expected(option), kw
    assert dask_client.store.query() == []


@pytest.mark.parametrize("option", [o for o in OPTIONS if o.dask], ids=lambda o: o.name)
def test_dask_refuses_the_rest_saying_why(dask_client: Any, option: Option) -> None:
    for kw in option.keywords:
        with pytest.raises(UsageError) as info:
            dask_client.map(sq, [1], cluster="fake", engine="dask", **{kw: _api_value(option)})
        assert str(info.value) == f"map: option {kw!r} does not apply to engine 'dask' ({option.dask})"
    assert dask_client.store.query() == []


def test_dask_unknown_option_lists_what_pilots_take(dask_client: Any) -> None:
    with pytest.raises(UsageError) as info:
        dask_client.map(sq, [1], cluster="fake", engine="dask", colour="red")
    valid = str(info.value).split("valid options: ", 1)[1].split(", ")
    assert valid == sorted({*keywords(dask=True), "interface", "stall_timeout"})
    assert "exclusive" not in valid and "cpus_per_task" in valid
