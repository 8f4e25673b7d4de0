"""Earliest-start routing (``--cluster auto``): real ``sbatch --test-only`` on the 3-node Slurm cluster, the
Ray head, a Slurm controller that does not answer, quotas from the ledger; and the choosing rule on its own."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import run_cli, wait_until

from suanli.compute.route import Candidate, pick
from suanli.jobs.handle import Job

RAY = os.environ.get("SUANLI_TEST_RAY_ADDRESS", "")


# ---------------------------------------------------------------- the rule alone
def cand(name: str, order: int, start: float | None, charge: float) -> Candidate:
    return Candidate(name, "p", "slurm", order, start=start, charge=charge)


def test_pick_earliest_then_charge_then_order() -> None:
    now = 1000.0
    late, cheap, dear, unknown = (cand("late", 0, now + 3600, 0.0), cand("cheap", 2, now + 5, 1.0),
                                  cand("dear", 1, now, 2.0), cand("unknown", 3, None, 0.0))
    assert pick([late, cheap, dear, unknown], now) is cheap  # same minute: the cheaper wins over the order
    assert pick([late, unknown], now) is late  # a known start beats an unknown one
    twin = cand("twin", 4, now, 1.0)
    assert pick([twin, cheap], now) is cheap  # equal start and charge: the earlier configured one
    cheap.excluded = "quota"
    assert pick([late, cheap, dear], now) is dear
    assert pick([cheap], now) is None


def test_pick_cheapest_within_max_wait() -> None:
    now = 1000.0
    soon, later = cand("soon", 0, now, 5.0), cand("later", 1, now + 1800, 1.0)
    assert pick([soon, later], now, "cheapest", max_wait_s=3600) is later
    assert pick([soon, later], now, "cheapest", max_wait_s=600) is soon  # later waits too long
    assert pick([soon, later], now, "earliest") is soon


def test_auto_is_reserved_and_routing_settings_are_checked(home: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    (cfg / "auto.yaml").write_text("name: auto\nbackend: local\npartitions:\n  - {name: local}\n")
    r = run_cli("clusters", env={"SUANLI_CONFIG": str(cfg)})
    assert r.returncode == 2 and "auto.yaml:1: name: 'auto' is reserved" in r.stderr, r.stderr
    (cfg / "auto.yaml").unlink()
    (cfg / "settings.yaml").write_text("routing:\n  prefer: fastest\n")
    r = run_cli("clusters", env={"SUANLI_CONFIG": str(cfg)})
    assert r.returncode == 2 and "settings.yaml:2: routing.prefer" in r.stderr, r.stderr


# ---------------------------------------------------------------- on real schedulers
def write_configs(tmp_path: Path, conf: str, *, ray: bool = False, dead: bool = False, settings: str = "") -> Path:
    """Three views of the 3-node cluster (configs, so quotas, are per cluster): ``wide`` = partition cpu on
    n1-n3, ``pair`` = partition npu (n2, n3) used as CPU nodes at half the rate, ``ascendc`` = the same npu
    partition with its 4 fake NPUs per node; optionally the Ray head and a cluster whose controller is down."""
    cfg = tmp_path / "route-clusters"
    cfg.mkdir(parents=True)
    head = f"backend: slurm\ndefault_account: acct-a\nslurm: {{conf: {conf}}}\npartitions:\n"
    (cfg / "a-wide.yaml").write_text(
        "name: wide\n" + head + "  - {name: cpu, nodes: 3, cpus_per_node: 2, charge: {cpu_hour: 2}}\n")
    (cfg / "b-pair.yaml").write_text(
        "name: pair\n" + head + "  - {name: npu, nodes: 2, cpus_per_node: 2, charge: {cpu_hour: 1}}\n")
    (cfg / "c-ascend.yaml").write_text(
        "name: ascendc\n" + head + "  - {name: npu, adapter: ascend, nodes: 2, cpus_per_node: 2, "
        "accelerators_per_node: 4, max_time: 2h, charge: {accelerator_hour: 1.5}}\n")
    if ray:
        (cfg / "d-ray.yaml").write_text(
            f"name: testray\nbackend: ray\ndefault_account: acct-a\nray: {{address: {RAY}}}\npartitions:\n"
            "  - {name: head, nodes: 1, cpus_per_node: 2, charge: {cpu_hour: 3}}\n")
    if dead:
        text = Path(conf).read_text()
        lines = [("SlurmctldPort=16999" if ln.startswith("SlurmctldPort=") else ln) for ln in text.splitlines()]
        dead_conf = tmp_path / "dead-slurm.conf"
        dead_conf.write_text("\n".join(lines) + "\n")
        (cfg / "e-dead.yaml").write_text(
            f"name: dead\nbackend: slurm\nslurm: {{conf: {dead_conf}}}\npartitions:\n"
            "  - {name: debug, nodes: 1, cpus_per_node: 8}\n")
    (cfg / "settings.yaml").write_text("default_cluster: wide\nstatus_poll_max_s: 1\nrouting:\n  timeout: 4s\n"
                                       + settings)
    return cfg


@pytest.fixture
def routed(home: Path, slurm_multi_conf: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A Client over the routing configs (the test writes them and points SUANLI_CONFIG at them)."""
    monkeypatch.setenv("SLURM_CONF", slurm_multi_conf)
    from suanli.api import Client

    clients: list[Any] = []

    def make(cfg: Path) -> Any:
        monkeypatch.setenv("SUANLI_CONFIG", str(cfg))
        c = Client()
        clients.append(c)
        return c

    yield make
    for c in clients:
        natives = [n for r in c.store.query(only_open=True) if r.native_id for n in r.native_id.split(",")]
        if natives:
            subprocess.run(["scancel", *natives], capture_output=True, timeout=60)
        c.close()


def spec(**options: Any) -> Any:
    from suanli.jobs.build import build_spec
    from suanli.jobs.spec import Command, JobSpec

    opts = {"time": "10m", **options}
    cluster = opts.pop("cluster", "auto")
    partition = opts.pop("partition", None)
    return build_spec(JobSpec(workload=Command(["hostname"])), cluster=cluster, partition=partition, **opts)


def row(rows: list[Candidate], cluster: str) -> Candidate:
    return next(c for c in rows if c.cluster == cluster)


def hold_pair(client: Any) -> Any:
    """Fill both nodes of partition npu (2 CPUs each) with a running job, so it is busy for 10 minutes."""
    job = client.submit_spec(_blocker())
    wait_until(lambda: job.status().value == "RUNNING", "the blocker to run", timeout=60)
    return job


def _blocker() -> Any:
    from suanli.jobs.build import build_spec
    from suanli.jobs.spec import Command, JobSpec

    return build_spec(JobSpec(workload=Command(["sleep", "600"])), cluster="pair", partition="npu", nodes=2,
                      cpus_per_task=2, time="10m", name="blocker")


@pytest.mark.multinode
@pytest.mark.slurm
def test_the_idle_partition_wins_and_slurm_agrees(routed: Any, tmp_path: Path) -> None:
    cfg = write_configs(tmp_path, os.environ["SUANLI_TEST_SLURM_MULTI_CONF"], ray=bool(RAY))
    client = routed(cfg)
    first = client.route(spec())
    assert (first.chosen.cluster, first.chosen.partition) == ("pair", "npu")  # both idle: the cheaper one
    assert row(first.rows, "wide").start_source == "sbatch --test-only"
    assert row(first.rows, "ascendc").excluded == "kind"  # a CPU job is not sent to NPU nodes
    if RAY:
        assert row(first.rows, "testray").start is not None  # the idle Ray head can start it now

    hold_pair(client)
    second = client.route(spec())
    assert (second.chosen.cluster, second.chosen.partition) == ("wide", "cpu")
    busy = row(second.rows, "pair")
    assert busy.excluded is None and busy.start is not None and busy.start > time.time() + 300, busy

    # The routed job starts at once on the idle partition; the same request sent to the busy one waits.
    r = run_cli("submit", "--cluster", "auto", "--explain", "--json", "-t", "5m", "--", "hostname")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert (out["cluster"], out["partition"]) == ("wide", "cpu")
    assert {c["cluster"] for c in out["routing"]["candidates"]} >= {"wide", "pair", "ascendc"}
    waiter = client.submit_spec(spec(cluster="pair", partition="npu", time="5m"))
    t0 = time.monotonic()
    ended = Job(out["id"], client).wait(timeout=60)
    assert ended.value == "COMPLETED" and time.monotonic() - t0 < 60
    assert waiter.status().value == "PENDING"
    waiter.cancel()

    r = run_cli("status", out["id"], "--explain")
    assert r.returncode == 0, r.stderr
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("wide "))
    assert "chosen" in line and "sbatch --test-only" in line, r.stdout


@pytest.mark.multinode
@pytest.mark.slurm
def test_quota_sends_it_to_the_busy_partition_then_refuses(routed: Any, tmp_path: Path) -> None:
    cfg = write_configs(tmp_path, os.environ["SUANLI_TEST_SLURM_MULTI_CONF"])
    client = routed(cfg)
    hold_pair(client)
    env = {"SUANLI_CONFIG": str(cfg)}
    r = run_cli("quota", "set", "--account", "acct-a", "--cluster", "wide", "--cpu-hours", "0.01", env=env)
    assert r.returncode == 0, r.stderr
    decision = client.route(spec())
    assert (decision.chosen.cluster, decision.chosen.partition) == ("pair", "npu")  # busy, but within quota
    over = row(decision.rows, "wide")
    assert over.excluded == "quota" and "acct-a" in over.reason
    assert row(decision.rows, "pair").quota_left is None  # no quota on pair

    r = run_cli("quota", "set", "--account", "acct-a", "--cluster", "pair", "--cpu-hours", "0.01", env=env)
    assert r.returncode == 0, r.stderr
    before = len(client.store.query())
    r = run_cli("submit", "--cluster", "auto", "-t", "10m", "--", "hostname", env=env)
    assert r.returncode == 3, r.stderr
    assert "every partition that fits is over quota" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert len(client.store.query()) == before  # nothing recorded, nothing submitted


@pytest.mark.multinode
@pytest.mark.slurm
def test_an_ascend_request_only_goes_to_ascend_partitions(routed: Any, tmp_path: Path) -> None:
    cfg = write_configs(tmp_path, os.environ["SUANLI_TEST_SLURM_MULTI_CONF"], ray=bool(RAY))
    routed(cfg)
    r = run_cli("submit", "--dry-run", "--json", "--cluster", "auto", "--accelerators", "ascend:2", "-t", "10m",
                "--", "hostname")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert (out["cluster"], out["partition"]) == ("ascendc", "npu")
    for c in out["routing"]["candidates"]:
        if c["cluster"] != "ascendc":
            assert c["excluded"] == "kind" and "ascend" in c["reason"], c
    assert "--gres=npu:2" in out["plan"]["argv"]
    r = run_cli("submit", "--dry-run", "--cluster", "auto", "--explain", "--accelerators", "ascend:2", "-t", "3h",
                "--", "hostname")
    assert r.returncode == 2 and "closest: ascendc/npu" in r.stderr and "max_time" in r.stderr, r.stderr
    assert "excluded (fit)" in r.stderr  # --explain printed the table before the one-line error


@pytest.mark.multinode
@pytest.mark.slurm
def test_an_unreachable_cluster_is_excluded_with_its_reason(routed: Any, tmp_path: Path) -> None:
    cfg = write_configs(tmp_path, os.environ["SUANLI_TEST_SLURM_MULTI_CONF"], dead=True)
    client = routed(cfg)
    t0 = time.monotonic()
    decision = client.route(spec())
    assert time.monotonic() - t0 < 15  # bounded by routing.timeout (4 s), not sbatch's own minute of retries
    dead = row(decision.rows, "dead")
    assert dead.excluded == "unreachable" and "dead" in dead.reason
    assert decision.chosen.cluster in ("wide", "pair")

    only_dead = write_configs(tmp_path / "x", os.environ["SUANLI_TEST_SLURM_MULTI_CONF"], dead=True,
                              settings="  clusters: [dead]\n")
    r = run_cli("submit", "--cluster", "auto", "-t", "10m", "--", "hostname", env={"SUANLI_CONFIG": str(only_dead)})
    assert r.returncode == 4 and "every cluster that fits is unreachable" in r.stderr, r.stderr
    r = run_cli("submit", "--cluster", "auto", "--nodes", "5", "-t", "10m", "--", "hostname",
                env={"SUANLI_CONFIG": str(cfg)})
    assert r.returncode == 2 and "no partition fits" in r.stderr and "nodes" in r.stderr, r.stderr


@pytest.mark.multinode
@pytest.mark.slurm
def test_arrays_route_once_and_dependents_follow_their_parent(routed: Any, tmp_path: Path) -> None:
    cfg = write_configs(tmp_path, os.environ["SUANLI_TEST_SLURM_MULTI_CONF"])
    client = routed(cfg)
    arr = client.submit_spec(spec(array="0-3", time="5m"))
    rec = client.store.get(arr.id)
    assert rec is not None and rec.cluster == "pair" and rec.meta["routing"]["partition"] == "npu"
    assert len(client.store.tasks([arr.id])[arr.id]) == 4  # one job, four tasks, one decision
    child = client.route(spec(after=(f"afterany:{arr.id}",), cluster="auto", partition="auto"))
    assert child.chosen.cluster == "pair"
    assert row(child.rows, "wide").excluded == "pinned"
    arr.wait(timeout=120)
