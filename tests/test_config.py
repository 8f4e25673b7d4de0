"""Unit tests for suanli.compute.config (cluster configs, settings, search path) and job spec files."""

from __future__ import annotations

import logging
import os
import re
import textwrap
from datetime import timedelta
from pathlib import Path

import pytest

from suanli.compute.config import ClusterConfig, Configs, load_configs
from suanli.errors import ConfigError, UsageError
from suanli.jobs.resources import Resources
from suanli.jobs.spec import Array, Command, Dependency
from suanli.jobs.specfile import load_spec_file

VALID = """\
# a test cluster
name: testc
backend: slurm
description: test cluster
default_partition: gpu
default_account: proj1
setup:
  - module purge
slurm:
  signal_seconds: 60
partitions:
  - name: cpu
    adapter: kunpeng
    nodes: 10
    cpus_per_node: 128
    memory_per_node: 512G
    default_time: 1h
    max_time: 2-00:00:00
    mpi_launcher: srun
    charge: {cpu_hour: 0.5}
  - name: gpu
    adapter: nvidia
    nodes: 2
    cpus_per_node: 64
    accelerators_per_node: 8
    max_time: 12h
    charge: {accelerator_hour: 2}
"""


def write(directory: Path, name: str, text: str) -> Path:
    p = directory / name
    p.write_text(textwrap.dedent(text), encoding="utf-8")
    return p


def line_of(text: str, needle: str, nth: int = 1) -> int:
    """1-based line number of the nth line that contains needle (so tests never hard-code line numbers)."""
    hits = [i for i, line in enumerate(textwrap.dedent(text).splitlines(), 1) if needle in line]
    assert len(hits) >= nth, (needle, hits)
    return hits[nth - 1]


def config_error(tmp_path: Path, text: str, name: str = "bad.yaml") -> tuple[str, Path]:
    path = write(tmp_path, name, text)
    with pytest.raises(ConfigError) as exc:
        load_configs(str(path))
    return str(exc.value), path


def assert_at(msg: str, path: Path, line: int) -> None:
    assert msg.startswith(f"{path}:{line}: "), f"expected {path}:{line}: in {msg!r}"


# ---------------------------------------------------------------- loading a valid cluster
def test_valid_cluster_loads(home: Path, tmp_path: Path) -> None:
    path = write(tmp_path, "testc.yaml", VALID)
    configs = load_configs(str(path))
    assert isinstance(configs, Configs)
    c = configs.cluster("testc")
    assert isinstance(c, ClusterConfig)
    assert c.backend == "slurm"
    assert c.description == "test cluster"
    assert c.default_partition == "gpu"
    assert c.default_account == "proj1"
    assert c.setup == ("module purge",)
    assert c.slurm == {"signal_seconds": 60}
    assert c.source == str(path)
    assert [p.name for p in c.partitions] == ["cpu", "gpu"]
    cpu, gpu = c.partitions
    assert cpu.adapter == "kunpeng" and cpu.accelerator_kind is None
    assert (cpu.nodes, cpu.cpus_per_node, cpu.memory_per_node_mb) == (10, 128, 512 * 1024)
    assert cpu.default_time == timedelta(hours=1)
    assert cpu.max_time == timedelta(days=2)
    assert cpu.mpi_launcher == "srun"
    assert cpu.charge.cpu_hour == 0.5 and cpu.charge.accelerator_hour == 0.0
    assert gpu.adapter == "nvidia" and gpu.accelerator_kind == "nvidia"
    assert gpu.accelerators_per_node == 8
    assert gpu.max_time == timedelta(hours=12)
    assert gpu.charge.accelerator_hour == 2.0
    # the default partition is the configured one, not the first
    assert c.partition(None) is gpu
    assert c.partition("cpu") is cpu
    assert c.to_json()["default_partition"] == "gpu"


def test_local_cluster_always_exists(home: Path, tmp_path: Path) -> None:
    configs = load_configs(None)
    assert set(configs.clusters) == {"local"}
    local = configs.cluster(None)
    assert local.name == "local" and local.backend == "local"
    assert local.partition(None).name == "local"
    assert local.partition(None).cpus_per_node == (os.cpu_count() or 1)

    path = write(tmp_path, "testc.yaml", VALID)
    configs = load_configs(str(path))
    assert set(configs.clusters) == {"local", "testc"}
    assert configs.settings.default_cluster == "local"
    assert configs.cluster(None).name == "local"


def test_folder_of_configs_loads_every_yaml(home: Path, tmp_path: Path) -> None:
    d = tmp_path / "confs"
    d.mkdir()
    write(d, "a.yaml", VALID)
    write(d, "b.yml", "name: other\nbackend: local\npartitions:\n  - name: only\n")
    write(d, "notes.txt", "name: ignored\n")
    write(d, "empty.yaml", "# nothing here\n")
    configs = load_configs(str(d))
    assert set(configs.clusters) == {"local", "testc", "other"}


def test_missing_explicit_path(home: Path, tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match=re.escape(f"{missing}: --config path does not exist")):
        load_configs(str(missing))


# ---------------------------------------------------------------- errors: file:line, key path, allowed values
def test_unknown_top_level_key(home: Path, tmp_path: Path) -> None:
    text = VALID.replace("description: test cluster\n", "description: test cluster\nqueue_depth: 3\n")
    msg, path = config_error(tmp_path, text)
    assert_at(msg, path, line_of(text, "queue_depth"))
    assert "queue_depth: unknown key 'queue_depth'" in msg
    assert ("allowed keys: name, backend, description, default_partition, default_account, setup, "
            "partitions, slurm, ray") in msg


def test_unknown_partition_key(home: Path, tmp_path: Path) -> None:
    text = VALID.replace("    max_time: 12h\n", "    max_time: 12h\n    gpus: 8\n")
    msg, path = config_error(tmp_path, text)
    assert_at(msg, path, line_of(text, "gpus: 8"))
    assert "partitions[1].gpus: unknown key 'gpus'" in msg
    allowed = msg.split("allowed keys: ", 1)[1].split(", ")
    for key in ("name", "adapter", "nodes", "cpus_per_node", "accelerators_per_node", "memory_per_node",
                "max_time", "default_time", "charge"):
        assert key in allowed


def test_unknown_adapter_lists_adapters(home: Path, tmp_path: Path) -> None:
    text = VALID.replace("adapter: kunpeng", "adapter: x86")
    msg, path = config_error(tmp_path, text)
    assert_at(msg, path, line_of(text, "adapter: x86"))
    assert "partitions[0].adapter: unknown adapter 'x86'" in msg
    valid = msg.split("valid adapters: ", 1)[1].split(", ")
    assert valid[:5] == ["cpu", "kunpeng", "phytium", "ascend", "nvidia"]


def test_bad_backend_lists_backends(home: Path, tmp_path: Path) -> None:
    text = VALID.replace("backend: slurm", "backend: pbs")
    msg, path = config_error(tmp_path, text)
    assert_at(msg, path, line_of(text, "backend: pbs"))
    assert "backend: 'pbs' is not a backend" in msg
    assert "use one of: local, slurm, ray" in msg


def test_malformed_max_time(home: Path, tmp_path: Path) -> None:
    text = VALID.replace("max_time: 12h", "max_time: twelve hours")
    msg, path = config_error(tmp_path, text)
    assert_at(msg, path, line_of(text, "max_time: twelve"))
    assert "partitions[1].max_time: 'twelve hours' is not a duration" in msg
    for form in ("90m", "2h", "1-00:00:00", "HH:MM:SS", "MM:SS", "minutes"):
        assert form in msg


def test_zero_default_time(home: Path, tmp_path: Path) -> None:
    text = VALID.replace("default_time: 1h", "default_time: 0m")
    msg, path = config_error(tmp_path, text)
    assert_at(msg, path, line_of(text, "default_time: 0m"))
    assert "partitions[0].default_time: '0m' is not positive" in msg


def test_default_time_longer_than_max_time(home: Path, tmp_path: Path) -> None:
    text = VALID.replace("default_time: 1h", "default_time: 3d")
    msg, path = config_error(tmp_path, text)
    assert_at(msg, path, line_of(text, "default_time: 3d"))
    assert "partitions[0].default_time: is longer than max_time" in msg


def test_bad_memory_per_node(home: Path, tmp_path: Path) -> None:
    text = VALID.replace("memory_per_node: 512G", "memory_per_node: plenty")
    msg, path = config_error(tmp_path, text)
    assert_at(msg, path, line_of(text, "memory_per_node: plenty"))
    assert "partitions[0].memory_per_node: 'plenty' is not a memory size" in msg


def test_bad_mpi_launcher(home: Path, tmp_path: Path) -> None:
    text = VALID.replace("mpi_launcher: srun", "mpi_launcher: aprun")
    msg, path = config_error(tmp_path, text)
    assert_at(msg, path, line_of(text, "mpi_launcher: aprun"))
    assert "partitions[0].mpi_launcher: 'aprun' is not allowed; use one of: srun, mpirun" in msg


@pytest.mark.parametrize(
    ("text", "bad_line"),
    [
        ("name: c\nbackend: slurm\npartitions:\n  - name: [unclosed\n    adapter: cpu\n", 5),
        ("name: c\nbackend: slurm\npartitions:\n  - name: p\n   adapter: cpu\n", 5),
        ("name: c\nbackend: 'slurm\npartitions: []\n", None),
    ],
)
def test_yaml_syntax_error_names_file_and_line(home: Path, tmp_path: Path, text: str,
                                                bad_line: int | None) -> None:
    msg, path = config_error(tmp_path, text, name="broken.yaml")
    m = re.match(rf"^{re.escape(str(path))}:(\d+): YAML syntax error: ", msg)
    assert m, msg
    line = int(m.group(1))
    assert 1 <= line <= text.count("\n") + 1
    if bad_line is not None:
        assert line == bad_line


def test_accelerators_on_cpu_adapter(home: Path, tmp_path: Path) -> None:
    text = VALID.replace("    cpus_per_node: 128\n", "    cpus_per_node: 128\n    accelerators_per_node: 4\n")
    msg, path = config_error(tmp_path, text)
    assert_at(msg, path, line_of(text, "accelerators_per_node: 4"))
    assert "partitions[0].accelerators_per_node: adapter 'kunpeng' has no accelerators" in msg
    assert "ascend or nvidia" in msg


def test_duplicate_partition(home: Path, tmp_path: Path) -> None:
    text = VALID.replace("  - name: gpu\n", "  - name: cpu\n")
    text = text.replace("default_partition: gpu", "default_partition: cpu")
    msg, path = config_error(tmp_path, text)
    assert_at(msg, path, line_of(text, "- name: cpu", nth=2))
    assert "partitions[1].name: partition 'cpu' is defined twice" in msg


def test_default_partition_not_a_partition(home: Path, tmp_path: Path) -> None:
    text = VALID.replace("default_partition: gpu", "default_partition: fat")
    msg, path = config_error(tmp_path, text)
    assert_at(msg, path, line_of(text, "default_partition: fat"))
    assert "default_partition: 'fat' is not a partition of this cluster" in msg
    assert "valid partitions: cpu, gpu" in msg


def test_ray_cluster_without_address(home: Path, tmp_path: Path) -> None:
    text = """\
    name: rayc
    backend: ray
    ray:
      job_root: /shared/ray
    partitions:
      - name: cpu
    """
    msg, path = config_error(tmp_path, text)
    assert_at(msg, path, line_of(text, "ray:"))
    assert "ray: a ray cluster needs ray.address" in msg


def test_ray_cluster_without_ray_section(home: Path, tmp_path: Path) -> None:
    text = "name: rayc\nbackend: ray\npartitions:\n  - name: cpu\n"
    msg, path = config_error(tmp_path, text)
    assert msg.startswith(f"{path}:")
    assert "needs ray.address" in msg


def test_ray_cluster_with_address_loads(home: Path, tmp_path: Path) -> None:
    text = "name: rayc\nbackend: ray\nray:\n  address: http://127.0.0.1:8265\npartitions:\n  - name: cpu\n"
    path = write(tmp_path, "ray.yaml", text)
    c = load_configs(str(path)).cluster("rayc")
    assert c.ray == {"address": "http://127.0.0.1:8265"}
    assert c.partition(None).name == "cpu"


def test_missing_required_keys(home: Path, tmp_path: Path) -> None:
    msg, path = config_error(tmp_path, "backend: slurm\npartitions:\n  - name: p\n")
    assert msg.startswith(f"{path}:")
    assert "missing required key 'name'" in msg
    msg, path = config_error(tmp_path, "name: c\nbackend: slurm\npartitions: []\n", name="c2.yaml")
    assert_at(msg, path, 3)
    assert "partitions: expected a list with at least one partition" in msg


# ---------------------------------------------------------------- YAML 1.1 sexagesimal numbers
def test_hh_mm_ss_time_in_yaml_config(home: Path, tmp_path: Path) -> None:
    text = VALID.replace("max_time: 12h", "max_time: 1:30:00")
    text = text.replace("default_time: 1h", "default_time: 45:00")
    path = write(tmp_path, "testc.yaml", text)
    c = load_configs(str(path)).cluster("testc")
    assert c.partition("gpu").max_time == timedelta(hours=1, minutes=30)
    assert c.partition("cpu").default_time == timedelta(minutes=45)


# ---------------------------------------------------------------- search order and settings
def test_explicit_config_wins_over_env(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       caplog: pytest.LogCaptureFixture) -> None:
    first = tmp_path / "first"
    second = tmp_path / "second"
    first.mkdir()
    second.mkdir()
    explicit = write(first, "testc.yaml", VALID)
    env_text = VALID.replace("description: test cluster", "description: from env")
    env_file = write(second, "testc.yaml", env_text)
    write(second, "extra.yaml", "name: extra\nbackend: local\npartitions:\n  - name: p\n")
    monkeypatch.setenv("SUANLI_CONFIG", str(second))
    with caplog.at_level(logging.WARNING, logger="suanli"):
        configs = load_configs(str(explicit))
    c = configs.cluster("testc")
    assert c.source == str(explicit)
    assert c.description == "test cluster"
    assert "extra" in configs.clusters  # the env path is still read
    warnings = [r.getMessage() for r in caplog.records if r.name == "suanli" and r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "'testc'" in warnings[0]
    assert str(env_file) in warnings[0] and str(explicit) in warnings[0]


def test_env_config_wins_over_cwd_cluster_configs(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    cwd_dir = Path.cwd() / "cluster_configs"
    cwd_dir.mkdir()
    write(cwd_dir, "testc.yaml", VALID.replace("description: test cluster", "description: from cwd"))
    env_dir = tmp_path / "envdir"
    env_dir.mkdir()
    write(env_dir, "testc.yaml", VALID.replace("description: test cluster", "description: from env"))
    monkeypatch.setenv("SUANLI_CONFIG", str(env_dir))
    with caplog.at_level(logging.WARNING, logger="suanli"):
        configs = load_configs(None)
    assert configs.cluster("testc").description == "from env"
    assert any("is ignored" in r.getMessage() for r in caplog.records)


def test_user_config_dir_is_read(home: Path, tmp_path: Path) -> None:
    user_dir = Path(os.path.expanduser("~/.config/suanli/clusters"))
    assert str(user_dir).startswith(str(tmp_path))  # the fixture isolated HOME
    user_dir.mkdir(parents=True)
    write(user_dir, "testc.yaml", VALID)
    assert "testc" in load_configs(None).clusters


def test_settings_file_is_read(home: Path, tmp_path: Path) -> None:
    d = tmp_path / "confs"
    d.mkdir()
    write(d, "testc.yaml", VALID)
    write(d, "settings.yaml", "default_cluster: testc\nstatus_poll_max_s: 7.5\non_ledger_error: allow\n")
    configs = load_configs(str(d))
    assert "settings" not in configs.clusters
    assert configs.settings.status_poll_max_s == 7.5
    assert configs.settings.default_cluster == "testc"
    assert configs.settings.on_ledger_error == "allow"
    assert configs.cluster(None).name == "testc"


def test_env_overrides_settings(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d = tmp_path / "confs"
    d.mkdir()
    write(d, "testc.yaml", VALID)
    write(d, "settings.yaml", "default_cluster: testc\nstatus_poll_max_s: 7.5\n")
    monkeypatch.setenv("SUANLI_STATUS_POLL_MAX_S", "2.25")
    monkeypatch.setenv("SUANLI_CLUSTER", "local")
    configs = load_configs(str(d))
    assert configs.settings.status_poll_max_s == 2.25
    assert configs.settings.default_cluster == "local"
    assert configs.cluster(None).name == "local"


def test_bad_env_poll_value(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUANLI_STATUS_POLL_MAX_S", "soon")
    with pytest.raises(ConfigError, match=r"^SUANLI_STATUS_POLL_MAX_S: 'soon' is not a number"):
        load_configs(None)


def test_unknown_default_cluster(home: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SUANLI_CLUSTER", "nowhere")
    path = write(tmp_path, "testc.yaml", VALID)
    with pytest.raises(ConfigError) as exc:
        load_configs(str(path))
    msg = str(exc.value)
    assert "'nowhere' is not a known cluster" in msg
    assert "valid clusters: local, testc" in msg


def test_bad_settings_key(home: Path, tmp_path: Path) -> None:
    d = tmp_path / "confs"
    d.mkdir()
    text = "status_poll_max_s: 3\npoll: 4\n"
    settings = write(d, "settings.yaml", text)
    with pytest.raises(ConfigError) as exc:
        load_configs(str(d))
    msg = str(exc.value)
    assert_at(msg, settings, 2)
    assert "poll: unknown key 'poll'" in msg
    assert "ledger, on_ledger_error, status_poll_max_s, default_cluster" in msg


def test_partition_unknown_lists_valid(home: Path, tmp_path: Path) -> None:
    path = write(tmp_path, "testc.yaml", VALID)
    c = load_configs(str(path)).cluster("testc")
    with pytest.raises(UsageError) as exc:
        c.partition("bigmem")
    msg = str(exc.value)
    assert "'testc'" in msg and "'bigmem'" in msg
    assert "valid partitions: cpu, gpu" in msg


def test_cluster_unknown_lists_valid(home: Path, tmp_path: Path) -> None:
    path = write(tmp_path, "testc.yaml", VALID)
    configs = load_configs(str(path))
    with pytest.raises(UsageError) as exc:
        configs.cluster("mars")
    msg = str(exc.value)
    assert "unknown cluster 'mars'" in msg
    assert "valid clusters: local, testc" in msg


# ---------------------------------------------------------------- job spec files
SPEC = """\
# a job
name: sweep
command: [python, sim.py, --steps, "100"]
partition: gpu
resources:
  nodes: 2
  tasks_per_node: 4
  memory: 8G
  accelerators: gpu:2
  time: 90m
env:
  SEED: 42
  MODE: "fast run"
setup: module load cuda
array: 0-9%3
after: [job1, "afterany:job2"]
requeue: 2
"""


def test_load_spec_file_valid(home: Path, tmp_path: Path) -> None:
    path = write(tmp_path, "job.yaml", SPEC)
    spec = load_spec_file(str(path))
    assert isinstance(spec.workload, Command)
    assert spec.workload.argv == ("python", "sim.py", "--steps", "100")
    assert spec.name == "sweep"
    assert spec.partition == "gpu"
    assert spec.resources == Resources(nodes=2, tasks_per_node=4, memory="8G", accelerators="nvidia:2",
                                       time=timedelta(minutes=90))
    assert spec.env == {"SEED": "42", "MODE": "fast run"}
    assert spec.setup == ("module load cuda",)
    assert spec.array == Array(tuple(range(10)), 3)
    assert spec.dependencies == (Dependency("job1", "afterok"), Dependency("job2", "afterany"))
    assert spec.max_restarts == 2


def test_spec_file_malformed_time_names_file_line_and_field(home: Path, tmp_path: Path) -> None:
    text = SPEC.replace("time: 90m", "time: ninety")
    path = write(tmp_path, "job.yaml", text)
    with pytest.raises(ConfigError) as exc:
        load_spec_file(str(path))
    msg = str(exc.value)
    # the line of the offending "time:" key, not the line of "resources:"
    assert_at(msg, path, line_of(text, "time: ninety"))
    assert line_of(text, "time: ninety") != line_of(text, "resources:")
    assert "resources.time: 'ninety' is not a duration" in msg
    for form in ("90m", "2h", "1-00:00:00", "HH:MM:SS", "MM:SS", "minutes"):
        assert form in msg


def test_spec_file_malformed_memory_line(home: Path, tmp_path: Path) -> None:
    text = SPEC.replace("memory: 8G", "memory: huge")
    path = write(tmp_path, "job.yaml", text)
    with pytest.raises(ConfigError) as exc:
        load_spec_file(str(path))
    msg = str(exc.value)
    assert_at(msg, path, line_of(text, "memory: huge"))
    assert "resources.memory: 'huge' is not a memory size" in msg


def test_spec_file_malformed_time_inline_mapping(home: Path, tmp_path: Path) -> None:
    text = "command: [echo]\n\n\nresources: {nodes: 1, time: ninety}\n"
    path = write(tmp_path, "job.yaml", text)
    with pytest.raises(ConfigError) as exc:
        load_spec_file(str(path))
    assert_at(str(exc.value), path, 4)
    assert "resources.time: 'ninety' is not a duration" in str(exc.value)


def test_spec_file_unknown_key(home: Path, tmp_path: Path) -> None:
    text = SPEC.replace("requeue: 2", "retries: 2")
    path = write(tmp_path, "job.yaml", text)
    with pytest.raises(ConfigError) as exc:
        load_spec_file(str(path))
    msg = str(exc.value)
    assert_at(msg, path, line_of(text, "retries: 2"))
    assert "retries: unknown key 'retries'" in msg
    assert "requeue" in msg.split("allowed keys: ", 1)[1]


def test_spec_file_hh_mm_ss_time(home: Path, tmp_path: Path) -> None:
    path = write(tmp_path, "job.yaml", SPEC.replace("time: 90m", "time: 1:30:00"))
    assert load_spec_file(str(path)).resources.time == timedelta(hours=1, minutes=30)


def test_spec_file_command_keeps_literal_text(home: Path, tmp_path: Path) -> None:
    path = write(tmp_path, "job.yaml", "command: [chmod, 0755, yes, 1.10, '007', ~, x]\n")
    spec = load_spec_file(str(path))
    assert isinstance(spec.workload, Command)
    assert spec.workload.argv == ("chmod", "0755", "yes", "1.10", "007", "~", "x")


def test_spec_file_env_keeps_literal_text(home: Path, tmp_path: Path) -> None:
    path = write(tmp_path, "job.yaml", "command: [env]\nenv:\n  DEBUG: yes\n  MODE: 0755\n  VERSION: 1.10\n")
    assert load_spec_file(str(path)).env == {"DEBUG": "yes", "MODE": "0755", "VERSION": "1.10"}
