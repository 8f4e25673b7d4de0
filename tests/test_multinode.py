"""Multi-node jobs on the 3-node Slurm cluster in network namespaces (tests/slurm/multinode.sh): training
ranks spread over nodes meet at one rendezvous over a real interface, and array tasks spread over nodes.

Each node (n1..n3) is its own network namespace and hostname with its own address on a bridge, so a rank that
binds or dials loopback, or a MASTER_ADDR that only one node can resolve, fails here as it would on a cluster.
"""

from __future__ import annotations

import importlib.util
import json
import re
import socket
import sys
from pathlib import Path
from typing import Any

import pytest

from suanli import Array, Command, JobSpec, JobState, Resources, Training
from suanli.errors import ConfigError
from suanli.runtime.launch import interface_address, network_env, route_interface

REPO = Path(__file__).resolve().parents[1]
NODE_ADDR = {"n1": "10.77.0.11", "n2": "10.77.0.12", "n3": "10.77.0.13"}  # multinode.sh's NodeAddr
PROBE = """import json, os, socket, sys
import torch, torch.distributed as dist
from suanli.runtime import environment, init_distributed, shutdown
env = environment(); init_distributed()
t = torch.tensor([float(env.rank + 1)]); dist.all_reduce(t)
keys = ['RANK', 'LOCAL_RANK', 'WORLD_SIZE', 'LOCAL_WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT', 'GLOO_SOCKET_IFNAME',
        'SLURMD_NODENAME']
json.dump({**{k: os.environ.get(k, '') for k in keys}, 'sum': t.item(), 'host': socket.gethostname()},
          open(os.path.join(sys.argv[1], f'rank{env.rank}.json'), 'w'))
shutdown()
"""


def needs_torch() -> None:
    if importlib.util.find_spec("torch") is None:
        pytest.skip("torch not installed")


@pytest.mark.multinode
@pytest.mark.slurm
@pytest.mark.parametrize("nodes", [2, 3])
def test_training_ranks_meet_across_nodes(slurm_multi: Any, tmp_path: Path, nodes: int) -> None:
    """One rendezvous for every rank: MASTER_ADDR is the first node's address as the others reach it, one port,
    ranks 0..N-1 exactly once, two per node on distinct hosts, gloo on the shared interface (never lo)."""
    needs_torch()
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)
    out = tmp_path / "out"
    out.mkdir()
    job = slurm_multi.submit(JobSpec(Training(script=str(probe), args=(str(out),), nproc_per_node=2),
                                     resources=Resources(nodes=nodes, tasks_per_node=2, time="5m")))
    assert job.wait(timeout=300) is JobState.COMPLETED, job.logs("stderr")[-3000:]
    world = 2 * nodes
    assert sorted(p.name for p in out.iterdir()) == sorted(f"rank{r}.json" for r in range(world))
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(world)]
    assert [r["RANK"] for r in ranks] == [str(r) for r in range(world)]
    assert all(r["WORLD_SIZE"] == str(world) and r["LOCAL_WORLD_SIZE"] == "2" for r in ranks)
    assert all(r["sum"] == world * (world + 1) / 2 for r in ranks)
    # One rendezvous: the address of rank 0's node, as the other nodes reach it (not its bare name, not loopback).
    assert {r["MASTER_ADDR"] for r in ranks} == {NODE_ADDR[ranks[0]["host"]]}
    assert len({r["MASTER_PORT"] for r in ranks}) == 1
    assert ranks[0]["MASTER_PORT"] == str(20000 + int(job.info().native_id) % 20000)
    # Two ranks per node, on distinct hosts, each host its own Slurm node.
    hosts = [r["host"] for r in ranks]
    assert len(set(hosts)) == nodes and all(hosts[2 * i] == hosts[2 * i + 1] for i in range(nodes))
    assert all(r["host"] == r["SLURMD_NODENAME"] for r in ranks)
    assert [r["LOCAL_RANK"] for r in ranks] == ["0", "1"] * nodes
    # gloo bound the interface the nodes share, detected on each node by suanli.runtime.launch.
    assert {r["GLOO_SOCKET_IFNAME"] for r in ranks} == {"eth0"}


def ddp_loss(slurm_multi: Any, nodes: int, tasks_per_node: int, steps: int) -> float:
    """Final loss that examples/train_ddp.py prints for a world of nodes * tasks_per_node ranks."""
    job = slurm_multi.submit(JobSpec(
        Training(script=str(REPO / "examples" / "train_ddp.py"), nproc_per_node=tasks_per_node,
                 args=("--steps", str(steps), "--warmup", "0", "--hidden", "64", "--features", "32",
                       "--batch-size", "32")),
        resources=Resources(nodes=nodes, tasks_per_node=tasks_per_node, time="5m")))
    assert job.wait(timeout=300) is JobState.COMPLETED, job.logs("stderr")[-3000:]
    text = job.logs()
    m = re.search(r"world_size=(\d+) .* loss=([0-9.]+)", text)
    assert m, text
    assert int(m.group(1)) == nodes * tasks_per_node
    return float(m.group(2))


@pytest.mark.multinode
@pytest.mark.slurm
def test_train_ddp_converges_on_two_nodes_as_on_one(slurm_multi: Any) -> None:
    """The same two ranks (same seeds, same data) on two nodes and on one node reach the same loss, well below
    the loss after one step."""
    needs_torch()
    across = ddp_loss(slurm_multi, nodes=2, tasks_per_node=1, steps=100)
    single = ddp_loss(slurm_multi, nodes=1, tasks_per_node=2, steps=100)
    assert across == pytest.approx(single, rel=1e-3, abs=1e-4)
    first = ddp_loss(slurm_multi, nodes=2, tasks_per_node=1, steps=1)
    assert across < 0.9 * first, (first, across)


@pytest.mark.multinode
@pytest.mark.slurm
def test_array_tasks_spread_over_nodes(slurm_multi: Any, tmp_path: Path) -> None:
    """Six tasks that each take a whole node (2 CPUs) cannot share one: they run on at least two nodes."""
    out = tmp_path / "hosts"
    out.mkdir()
    code = "import os, socket, sys; open(os.path.join(sys.argv[1], os.environ['SUANLI_ARRAY_TASK_ID']), 'w')" \
           ".write(socket.gethostname())"
    job = slurm_multi.submit(JobSpec(Command([sys.executable, "-c", code, str(out)]), array=Array.parse("0-5"),
                                     resources=Resources(cpus_per_task=2, time="5m")))
    assert job.wait(timeout=300) is JobState.COMPLETED
    hosts = {p.name: p.read_text() for p in out.iterdir()}
    assert sorted(hosts) == [str(i) for i in range(6)]
    assert set(hosts.values()) <= set(NODE_ADDR) and len(set(hosts.values())) >= 2, hosts


@pytest.mark.multinode
@pytest.mark.slurm
def test_accelerators_on_two_nodes_of_the_npu_partition(slurm_multi: Any, tmp_path: Path) -> None:
    """A 2-node request for 4 NPUs per node lands on the npu partition's two nodes, each task seeing four."""
    out = tmp_path / "npu"
    out.mkdir()
    code = 'echo "$(hostname) $ASCEND_RT_VISIBLE_DEVICES" > "$1/$SLURM_NODEID"'
    job = slurm_multi.submit(JobSpec(Command(["sh", "-c", code, "sh", str(out)]), partition="npu",
                                     resources=Resources(nodes=2, tasks_per_node=1, accelerators="ascend:4",
                                                         time="5m")))
    assert job.wait(timeout=300) is JobState.COMPLETED, job.logs("stderr")[-3000:]
    seen = sorted(p.read_text().split() for p in out.iterdir())
    assert seen == [["n2", "0,1,2,3"], ["n3", "0,1,2,3"]], seen


# ---------------------------------------------------------------- the interface choice, without a cluster
def test_launch_picks_the_interface_that_routes_to_master_never_lo() -> None:
    """The interface holding the source address towards MASTER_ADDR; loopback gives nothing (gloo's default)."""
    assert route_interface("127.0.0.1") is None and network_env({"MASTER_ADDR": "127.0.0.1"}) == {}
    own = [(n, a) for _, n in socket.if_nameindex() if n != "lo" and (a := interface_address(n))
           and not a.startswith("127.")]
    if not own:
        pytest.skip("this machine has no IPv4 interface but loopback")
    name, addr = own[0]
    assert route_interface(addr) == name
    assert network_env({"MASTER_ADDR": addr}) == {"GLOO_SOCKET_IFNAME": name, "NCCL_SOCKET_IFNAME": name}
    # A value from the job or the partition config wins; NCCL follows gloo's.
    assert network_env({"MASTER_ADDR": addr, "GLOO_SOCKET_IFNAME": "ib0"}) == {"NCCL_SOCKET_IFNAME": "ib0"}


def partition_config(tmp_path: Path, interface: str) -> Path:
    cfg = tmp_path / "clusters"
    cfg.mkdir()
    (cfg / "c.yaml").write_text(
        "name: c\nbackend: slurm\nslurm: {conf: /etc/slurm/slurm.conf}\npartitions:\n"
        "  - {name: cpu, nodes: 4, cpus_per_node: 8}\n"
        f"  - name: ib\n    nodes: 4\n    network_interface: {interface}\n"
    )
    return cfg


def test_partition_network_interface_sets_gloo_and_nccl(home: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from suanli.api import Client

    monkeypatch.setenv("SUANLI_CONFIG", str(partition_config(tmp_path, "ib0")))
    c = Client()
    spec = JobSpec(Training(script="train.py"), resources=Resources(nodes=2, tasks_per_node=2))
    plan, _ = c.plan(JobSpec(Training(script="train.py"), partition="ib",
                             resources=Resources(nodes=2, tasks_per_node=2)), cluster="c")
    assert plan.env["GLOO_SOCKET_IFNAME"] == "ib0" and plan.env["NCCL_SOCKET_IFNAME"] == "ib0"
    plan, _ = c.plan(spec, cluster="c")  # partition cpu: no key, launch detects it on each node
    assert "GLOO_SOCKET_IFNAME" not in plan.env
    c.store.close()


def test_partition_network_interface_lo_is_refused(home: Path, tmp_path: Path) -> None:
    from suanli.compute.config import load_configs

    cfg = partition_config(tmp_path, "lo")
    with pytest.raises(ConfigError) as exc:
        load_configs(str(cfg / "c.yaml"))
    assert str(exc.value).startswith(f"{cfg / 'c.yaml'}:8: ") and "network_interface" in str(exc.value)


@pytest.mark.multinode
@pytest.mark.slurm
def test_each_node_sees_the_devices_slurm_gave_that_node(slurm_multi: Any, tmp_path: Path) -> None:
    """With NPUs 0-1 of n2 held by another job, a 2-node npu:2 job holds 2-3 on n2 and 0-1 on n3: each node's
    tasks (a command under srun, and training ranks) must see their own node's indices, not the first node's."""
    import os
    import subprocess

    env = dict(os.environ)  # SLURM_CONF names the 3-node cluster (the fixture sets it)
    hold = subprocess.run(["sbatch", "--parsable", "-p", "npu", "-w", "n2", "--gres=npu:2", "-t", "5",
                           "--wrap", "sleep 300", "-o", "/dev/null"], capture_output=True, text=True, env=env)
    assert hold.returncode == 0, hold.stderr
    holder = hold.stdout.strip().split(";")[0]
    try:
        out = tmp_path / "npu"
        out.mkdir()
        code = 'echo "$(hostname) $ASCEND_RT_VISIBLE_DEVICES" > "$1/$SLURM_NODEID"'
        job = slurm_multi.submit(JobSpec(Command(["sh", "-c", code, "sh", str(out)]), partition="npu",
                                         resources=Resources(nodes=2, tasks_per_node=1, accelerators="ascend:2",
                                                             time="5m")))
        assert job.wait(timeout=300) is JobState.COMPLETED, job.logs("stderr")[-3000:]
        seen = sorted(p.read_text().split() for p in out.iterdir())
        assert seen == [["n2", "2,3"], ["n3", "0,1"]], seen
    finally:
        subprocess.run(["scancel", holder], capture_output=True, env=env)


def test_a_training_rank_takes_its_own_nodes_devices() -> None:
    from suanli.runtime.launch import device_env

    env = {"SUANLI_ACCELERATOR_MAP": "n2=2,3;n3=0,1;", "SUANLI_DEVICE_VAR": "ASCEND_RT_VISIBLE_DEVICES",
           "SLURMD_NODENAME": "n3"}
    assert device_env(env) == {"SUANLI_ACCELERATOR_IDS": "0,1", "ASCEND_RT_VISIBLE_DEVICES": "0,1"}
    assert device_env({**env, "SLURMD_NODENAME": "n9"}) == {}
    assert device_env({"SLURMD_NODENAME": "n3"}) == {}
