"""Multi-node jobs on the 3-node Slurm cluster in network namespaces (tests/slurm/multinode.sh): training
ranks spread over nodes meet at one rendezvous over a real interface, and array tasks spread over nodes.

Each node (n1..n3) is its own network namespace and hostname with its own address on a bridge, so a rank that
binds or dials loopback, or a MASTER_ADDR that only one node can resolve, fails here as it would on a cluster.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import run_cli, wait_releasing_requeued, wait_until

from suanli import MPI, Array, Command, JobSpec, JobState, Resources, Training
from suanli.errors import ConfigError
from suanli.runtime.launch import interface_address, network_env, route_interface

REPO = Path(__file__).resolve().parents[1]
NODES = ("n1", "n2", "n3")  # multinode.sh's node names (their addresses follow SLURM_MULTI_NET)


def node_addrs(conf: str) -> dict[str, str]:
    """NodeName -> NodeAddr from the cluster's slurm.conf."""
    found = re.findall(r"^NodeName=(\S+) NodeAddr=(\S+)", Path(conf).read_text(), re.M)
    return dict(found)


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
def test_training_ranks_meet_across_nodes(slurm_multi: Any, slurm_multi_conf: str, tmp_path: Path,
                                          nodes: int) -> None:
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
    assert {r["MASTER_ADDR"] for r in ranks} == {node_addrs(slurm_multi_conf)[ranks[0]["host"]]}
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
    assert set(hosts.values()) <= set(NODES) and len(set(hosts.values())) >= 2, hosts


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


# ---------------------------------------------------------------- MPI across nodes
#: A real ring: rank 0 sends 1 to rank 1, each rank adds its rank + 1 and passes it on, and the token comes back
#: to rank 0 holding 1 + 2 + ... + size; an allreduce checks it everywhere. Each rank records its host and the
#: process that started it (orted under mpirun, slurmstepd under srun).
RING = """import json, os, socket, sys
from mpi4py import MPI
c = MPI.COMM_WORLD
rank, size = c.Get_rank(), c.Get_size()
if rank == 0:
    c.send(1, dest=1 % size)
    token = c.recv(source=size - 1)
else:
    token = c.recv(source=rank - 1) + rank + 1
    c.send(token, dest=(rank + 1) % size)
total = c.allreduce(token if rank == 0 else 0)
parent = open(f"/proc/{os.getppid()}/comm").read().strip()
keys = ["SLURMD_NODENAME", "OMPI_MCA_btl_tcp_if_include", "OMPI_MCA_oob_tcp_if_include"]
json.dump({"rank": rank, "size": size, "token": token, "total": total, "host": socket.gethostname(),
           "parent": parent, **{k: os.environ.get(k, "") for k in keys}},
          open(os.path.join(sys.argv[1], f"{rank}.json"), "w"))
"""


def needs_mpi4py() -> None:
    if importlib.util.find_spec("mpi4py") is None:
        pytest.skip("mpi4py not installed")


@pytest.mark.multinode
@pytest.mark.slurm
@pytest.mark.parametrize(("launcher", "nodes", "per_node"), [("srun", 3, 1), ("mpirun", 3, 1), ("mpirun", 2, 2)])
def test_mpi_ring_across_nodes(slurm_multi: Any, slurm_multi_conf: str, tmp_path: Path, launcher: str, nodes: int,
                               per_node: int) -> None:
    """An mpi4py ring over 2-3 nodes with the launcher this job chose (the partition sets none): every rank
    once, ``per_node`` on each of ``nodes`` distinct nodes, the token summed around the ring; mpirun takes the
    hosts from the allocation and talks over the interface the nodes share."""
    needs_mpi4py()
    prog = tmp_path / "ring.py"
    prog.write_text(RING)
    out = tmp_path / "out"
    out.mkdir()
    job = slurm_multi.submit(JobSpec(MPI([sys.executable, str(prog), str(out)], launcher=launcher),
                                     resources=Resources(nodes=nodes, tasks_per_node=per_node, time="5m")))
    assert job.wait(timeout=300) is JobState.COMPLETED, job.logs("stderr")[-3000:]
    size = nodes * per_node
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{r}.json" for r in range(size))
    ranks = [json.loads((out / f"{r}.json").read_text()) for r in range(size)]
    assert all(r["size"] == size and r["total"] == size * (size + 1) // 2 for r in ranks), ranks
    assert ranks[0]["token"] == size * (size + 1) // 2
    hosts = [r["host"] for r in ranks]
    assert set(hosts) <= set(NODES) and len(set(hosts)) == nodes, hosts
    assert all(hosts.count(h) == per_node for h in set(hosts)), hosts
    assert all(r["host"] == r["SLURMD_NODENAME"] for r in ranks)
    # Started by mpirun itself on the first node and by its daemons (orted) elsewhere, or by Slurm's stepd.
    parents = {r["parent"] for r in ranks}
    assert parents == ({"mpirun", "orted"} if launcher == "mpirun" else {"slurmstepd"}), parents
    if launcher == "mpirun":
        assert {(r["OMPI_MCA_btl_tcp_if_include"], r["OMPI_MCA_oob_tcp_if_include"]) for r in ranks} == {
            ("eth0", "eth0")}
    else:  # srun's ranks: the one network the nodes share, as CIDR, never loopback
        import ipaddress

        [net] = {r["OMPI_MCA_btl_tcp_if_include"] for r in ranks}
        assert all(ipaddress.ip_address(a) in ipaddress.ip_network(net)
                   for a in node_addrs(slurm_multi_conf).values()), net


@pytest.mark.multinode
@pytest.mark.slurm
def test_mpi_ranks_take_their_own_nodes_devices(slurm_multi: Any, tmp_path: Path) -> None:
    """With NPUs 0-1 of n2 held by another job, a 2-node npu:2 MPI job holds 2-3 on n2 and 0-1 on n3: ranks
    that mpirun starts on the second node (through its daemon) see that node's indices, as srun's ranks do."""
    import os
    import subprocess

    env = dict(os.environ)  # SLURM_CONF names the 3-node cluster (the fixture sets it)
    hold = subprocess.run(["sbatch", "--parsable", "-p", "npu", "-w", "n2", "--gres=npu:2", "-t", "5",
                           "--wrap", "sleep 300", "-o", "/dev/null"], capture_output=True, text=True, env=env)
    assert hold.returncode == 0, hold.stderr
    holder = hold.stdout.strip().split(";")[0]
    try:
        for launcher in ("mpirun", "srun"):
            out = tmp_path / launcher
            out.mkdir()
            code = 'echo "$(hostname) $ASCEND_RT_VISIBLE_DEVICES $SUANLI_ACCELERATOR_IDS" > "$1/$(hostname)"'
            job = slurm_multi.submit(JobSpec(MPI(["sh", "-c", code, "sh", str(out)], launcher=launcher),
                                             partition="npu",
                                             resources=Resources(nodes=2, tasks_per_node=1,
                                                                 accelerators="ascend:2", time="5m")))
            assert job.wait(timeout=300) is JobState.COMPLETED, job.logs("stderr")[-3000:]
            seen = sorted(p.read_text().split() for p in out.iterdir())
            assert seen == [["n2", "2,3", "2,3"], ["n3", "0,1", "0,1"]], (launcher, seen)
    finally:
        subprocess.run(["scancel", holder], capture_output=True, env=env)


# ---------------------------------------------------------------- the MPI launch line, without a cluster
def mpi_plan(tmp_path: Path, mpi: Any, partition: str = "cpu", nodes: int = 2) -> Any:
    from suanli.api import Client

    c = Client()
    try:
        plan, _ = c.plan(JobSpec(mpi, partition=partition, resources=Resources(nodes=nodes, tasks_per_node=2)),
                         cluster="c")
    finally:
        c.store.close()
    return plan


def mpi_config(tmp_path: Path) -> Path:
    cfg = tmp_path / "clusters"
    cfg.mkdir()
    (cfg / "c.yaml").write_text(
        "name: c\nbackend: slurm\nslurm: {conf: /etc/slurm/slurm.conf}\npartitions:\n"
        "  - {name: cpu, nodes: 4, cpus_per_node: 8}\n"
        "  - {name: ib, nodes: 4, cpus_per_node: 8, mpi_launcher: mpirun, network_interface: ib0}\n"
    )
    return cfg


def test_the_jobs_mpi_launcher_wins_over_the_partitions(home: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The partition's mpi_launcher is the default; MPI(launcher=...) chooses per job. mpirun goes through
    suanli.runtime.launch (the interface), srun through PMIx; a partition's interface reaches Open MPI."""
    monkeypatch.setenv("SUANLI_CONFIG", str(mpi_config(tmp_path)))
    srun = mpi_plan(tmp_path, MPI(["./a.out"]))
    assert "-m suanli.runtime.launch --srun srun --mpi=pmix --kill-on-bad-exit=1 --ntasks=4 ./a.out" in srun.script
    partition = mpi_plan(tmp_path, MPI(["./a.out"]), partition="ib")
    assert "-m suanli.runtime.launch --mpirun mpirun -np 4 " in partition.script
    assert partition.env["OMPI_MCA_btl_tcp_if_include"] == "ib0"
    assert partition.env["OMPI_MCA_oob_tcp_if_include"] == "ib0"
    job = mpi_plan(tmp_path, MPI(["./a.out"], launcher="srun"), partition="ib")
    assert "srun --mpi=pmix" in job.script and "--mpirun" not in job.script
    job = mpi_plan(tmp_path, MPI(["./a.out"], launcher="mpirun"))
    assert "--mpirun mpirun -np 4 " in job.script and "OMPI_MCA_btl_tcp_if_include" not in job.env


def test_an_unknown_mpi_launcher_is_refused(tmp_path: Path) -> None:
    from suanli.errors import UsageError
    from suanli.jobs.specfile import load_spec_file

    with pytest.raises(UsageError) as exc:
        MPI(["./a.out"], launcher="mpiexec")
    assert str(exc.value).startswith("mpi.launcher: 'mpiexec'") and "srun, mpirun" in str(exc.value)
    spec = tmp_path / "job.yaml"
    spec.write_text("mpi:\n  argv: [./a.out]\n  launcher: mpirun\n")
    assert load_spec_file(str(spec)).workload == MPI(["./a.out"], launcher="mpirun")
    spec.write_text("mpi:\n  argv: [./a.out]\n  launcher: hydra\n")
    with pytest.raises(UsageError) as exc:
        load_spec_file(str(spec))
    assert str(exc.value).startswith(f"{spec}:") and "launcher" in str(exc.value)


def test_mpirun_gets_the_interface_unless_the_job_chose() -> None:
    """mpirun's interface: the partition's (GLOO_SOCKET_IFNAME), else the one routing to MASTER_ADDR; nothing on
    loopback or when the job set Open MPI's own parameters."""
    from suanli.runtime.launch import mpirun_argv

    argv = ["mpirun", "-np", "4", "./a.out"]
    assert mpirun_argv(argv, {"GLOO_SOCKET_IFNAME": "ib0"}) == [
        "mpirun", "--mca", "btl_tcp_if_include", "ib0", "--mca", "oob_tcp_if_include", "ib0", "-np", "4", "./a.out"]
    assert mpirun_argv(argv, {"MASTER_ADDR": "127.0.0.1"}) == argv
    assert mpirun_argv(argv, {"GLOO_SOCKET_IFNAME": "ib0", "OMPI_MCA_btl_tcp_if_exclude": "docker0"}) == argv
    chosen = ["mpirun", "--mca", "btl_tcp_if_include", "10.0.0.0/8", "./a.out"]
    assert mpirun_argv(chosen, {"GLOO_SOCKET_IFNAME": "ib0"}) == chosen
    own = [(n, a) for _, n in socket.if_nameindex() if n != "lo" and (a := interface_address(n))
           and not a.startswith("127.")]
    if own:
        name, addr = own[0]
        assert mpirun_argv(argv, {"MASTER_ADDR": addr})[1:4] == ["--mca", "btl_tcp_if_include", name]


def test_srun_mpi_ranks_get_the_network_unless_the_job_chose() -> None:
    """srun's ranks: the network (CIDR) of the interface routing to MASTER_ADDR, the same string on every node;
    nothing on loopback or when the job or the partition set Open MPI's parameters."""
    import ipaddress

    from suanli.runtime.launch import srun_mpi_env

    assert srun_mpi_env({"MASTER_ADDR": "127.0.0.1"}) == {}
    assert srun_mpi_env({"MASTER_ADDR": "127.0.0.1", "OMPI_MCA_btl_tcp_if_include": "ib0"}) == {}
    own = [(n, a) for _, n in socket.if_nameindex() if n != "lo" and (a := interface_address(n))
           and not a.startswith("127.")]
    if not own:
        pytest.skip("this machine has no IPv4 interface but loopback")
    addr = own[0][1]
    net = srun_mpi_env({"MASTER_ADDR": addr})["OMPI_MCA_btl_tcp_if_include"]
    assert ipaddress.ip_address(addr) in ipaddress.ip_network(net) and not net.startswith("127.")
    assert srun_mpi_env({"MASTER_ADDR": addr, "OMPI_MCA_oob_tcp_if_include": "eth1"}) == {}


# ---------------------------------------------------------------- node failure
MULTINODE_SH = Path(__file__).resolve().parent / "slurm" / "multinode.sh"

COUNTER = """i=$(cat "$1" 2>/dev/null || echo 0)
echo "start at $i on $(hostname)"
while [ "$i" -lt "$2" ]; do sleep 1; i=$((i + 1)); echo "$i" > "$1.tmp" && mv "$1.tmp" "$1"; done
echo "done at $i"
"""


def job_nodes(native: str, conf: str) -> list[str]:
    env = dict(os.environ, SLURM_CONF=conf)
    nodelist = subprocess.run(["squeue", "-h", "-j", native, "-o", "%N"], capture_output=True, text=True,
                              env=env, timeout=30).stdout.strip()
    return subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, env=env,
                          timeout=30).stdout.split()


def fail_node(node: str, conf: str, action: str = "node-fail") -> None:
    r = subprocess.run(["bash", str(MULTINODE_SH), action, node, str(Path(conf).parent)], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr


@pytest.mark.multinode
@pytest.mark.slurm
def test_a_failed_node_ends_the_job_node_fail(slurm_multi: Any, slurm_multi_conf: str) -> None:
    job = slurm_multi.submit(["sleep", "300"], nodes=2, time="10m")
    wait_until(lambda: job.status() is JobState.RUNNING, "the 2-node job to run", timeout=60)
    victim = job_nodes(job.info().native_id, slurm_multi_conf)[1]
    try:
        fail_node(victim, slurm_multi_conf)
        assert job.wait(timeout=60) is JobState.NODE_FAIL
    finally:
        fail_node(victim, slurm_multi_conf, "node-restore")
    r = run_cli("status", job.id, "--json")
    assert json.loads(r.stdout)[0]["state"] == "NODE_FAIL", r.stdout + r.stderr


@pytest.mark.multinode
@pytest.mark.slurm
def test_a_requeued_job_resumes_from_its_checkpoint_on_the_other_nodes(slurm_multi: Any, slurm_multi_conf: str,
                                                                      tmp_path: Path) -> None:
    script, ck = tmp_path / "count.sh", tmp_path / "checkpoint"
    script.write_text(COUNTER)
    job = slurm_multi.submit(["sh", str(script), str(ck), "15"], nodes=2, requeue=1, time="10m")
    wait_until(lambda: ck.exists() and int(ck.read_text() or 0) >= 3, "3 steps of the first attempt", timeout=90)
    native = job.info().native_id
    first_nodes = job_nodes(native, slurm_multi_conf)
    victim = first_nodes[1]
    try:
        fail_node(victim, slurm_multi_conf)
        # Slurm requeued it; the first poll right after the failure must not take NODE_FAIL as the end.
        assert not job.status().is_terminal, job.info()
        assert wait_releasing_requeued(job, slurm_multi_conf, 240) is JobState.COMPLETED, job.logs()
    finally:
        fail_node(victim, slurm_multi_conf, "node-restore")
    info = job.info()
    assert info.restarts == 1
    # One task per node (srun), each attempt on two nodes: the second attempt resumed, it did not restart.
    starts = [(int(line.split()[2]), line.split()[-1]) for line in job.logs().splitlines()
              if line.startswith("start at")]
    assert [at for at, _ in starts[:2]] == [0, 0] and len(starts) == 4, job.logs()
    assert all(at >= 3 and host != victim for at, host in starts[2:]), job.logs()
    assert job.logs().rstrip().endswith("done at 15")
    # Accounting sees both attempts: the failed one and the one that completed (one record each).
    sacct = subprocess.run(["sacct", "-X", "-D", "-n", "-P", "-j", native, "-o", "State,NodeList"],
                           capture_output=True, text=True, env=dict(os.environ, SLURM_CONF=slurm_multi_conf),
                           timeout=30).stdout.split()
    assert [line.split("|")[0] for line in sacct] == ["NODE_FAIL", "COMPLETED"], sacct
    assert victim not in job_nodes_text(sacct[1])
    booked = wait_until(lambda: [r for r in slurm_multi.accounts.ledger.report(["job"]) if r["job"] == native],
                        "the job's usage in the ledger", timeout=60, every=0.5)
    assert booked[0]["jobs"] == 2, booked


def job_nodes_text(row: str) -> str:
    return row.split("|", 1)[1]


# ---------------------------------------------------------------- the dask engine across nodes
def hostname_after(i: int) -> tuple[int, str]:
    """An item that takes a moment, so the work spreads over every pilot."""
    import time as _time

    _time.sleep(1.0)
    return i, socket.gethostname()


@pytest.mark.multinode
@pytest.mark.slurm
def test_dask_pilots_on_several_nodes_reach_the_scheduler(slurm_multi: Any) -> None:
    """The pilots run on n1..n3, which cannot reach this machine's loopback or its first address: the scheduler
    listens on the interface this machine reaches the nodes by, and the workers find their own way to it."""
    from suanli.compute.dask.request import node_interface

    cfg = slurm_multi.configs.cluster("multislurm")
    assert node_interface(cfg) not in (None, "lo")
    # Two CPUs a pilot: one pilot fills a node, so three pilots are three nodes.
    sweep = slurm_multi.map(hostname_after, range(24), engine="dask", max_concurrent=3, cpus_per_task=2, time="5m")
    got = sweep.results(timeout=180)
    assert [i for i, _ in got] == list(range(24))
    assert len({host for _, host in got}) >= 2, got  # the work really ran on several nodes
