"""Per-rank entry point for Training under ``srun``: turns Slurm's task variables into torchrun's
(RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, GROUP_RANK) and runs the script or module in-process.

``python -m suanli.runtime.launch SCRIPT ARGS...`` or ``python -m suanli.runtime.launch -m MODULE ARGS...``.
``python -m suanli.runtime.launch --mpirun mpirun ARGS...`` (an MPI job's mpirun launcher, on the first node)
adds Open MPI's interface choice (``--mca btl_tcp_if_include`` / ``oob_tcp_if_include``) and execs mpirun.
``python -m suanli.runtime.launch --srun srun --mpi=pmix ARGS...`` (an MPI job's srun launcher) sets the same
choice as ``OMPI_MCA_btl_tcp_if_include`` for the ranks srun starts, as the network (CIDR) of the interface that
reaches MASTER_ADDR, which names it on every node even where interface names differ.
MASTER_ADDR and MASTER_PORT come from the batch script (first host of the allocation, port from the job id).
GLOO_SOCKET_IFNAME and NCCL_SOCKET_IFNAME, unless the job or the partition config sets them, name the interface
that routes to MASTER_ADDR on this node: left alone, gloo binds the address the host name resolves to, which on
many clusters is loopback or a management network the other nodes cannot reach.
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
import runpy
import socket
import struct
import sys

SIOCGIFADDR = 0x8915  # Linux ioctl: an interface's IPv4 address
SIOCGIFNETMASK = 0x891B  # Linux ioctl: its netmask


def tasks_on_this_node(env: dict[str, str]) -> int:
    """SLURM_TASKS_PER_NODE reads like ``2(x3),1``; SLURM_NODEID picks this node's entry."""
    spec = env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE") or ""
    node = int(env.get("SLURM_NODEID", "0") or 0)
    counts: list[int] = []
    for part in spec.split(","):
        if not part:
            continue
        if "(x" in part:
            n, _, rep = part.partition("(x")
            counts += [int(n)] * int(rep.rstrip(")"))
        else:
            counts.append(int(part))
    if node < len(counts):
        return counts[node]
    ntasks = int(env.get("SLURM_NTASKS", "1") or 1)
    nnodes = int(env.get("SLURM_NNODES", "1") or 1)
    return max(1, ntasks // max(1, nnodes))


def torch_env(env: dict[str, str]) -> dict[str, str]:
    return {
        "RANK": env.get("SLURM_PROCID", "0"),
        "LOCAL_RANK": env.get("SLURM_LOCALID", "0"),
        "WORLD_SIZE": env.get("SLURM_NTASKS", "1"),
        "LOCAL_WORLD_SIZE": str(tasks_on_this_node(env)),
        "GROUP_RANK": env.get("SLURM_NODEID", "0"),
        "NODE_RANK": env.get("SLURM_NODEID", "0"),
        "SUANLI_LAUNCHER": "slurm",  # environment() then says slurm, not torchrun, for these variables
    }


def interface_address(name: str, request: int = SIOCGIFADDR) -> str | None:
    """The IPv4 address (or with SIOCGIFNETMASK its netmask) of interface NAME in this network namespace
    (ioctl, so no /sys of another one)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            raw = fcntl.ioctl(s.fileno(), request, struct.pack("256s", name[:15].encode()))
        except OSError:
            return None
    return socket.inet_ntoa(raw[20:24])


def interface_network(name: str) -> str | None:
    """The network of interface NAME in CIDR notation (``10.78.0.0/24``), which Open MPI's ``*_if_include``
    parameters accept as well as names."""
    addr, mask = interface_address(name), interface_address(name, SIOCGIFNETMASK)
    if addr is None or mask is None:
        return None
    return str(ipaddress.IPv4Interface(f"{addr}/{mask}").network)


def route_interface(master_addr: str) -> str | None:
    """The interface this node sends to MASTER_ADDR from (a UDP connect sends nothing; the kernel picks the
    source address, whose interface we look up). None for loopback, or when it cannot be found."""
    try:
        addr = socket.getaddrinfo(master_addr, None, socket.AF_INET, socket.SOCK_DGRAM)[0][4][0]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((addr, 9))
            local = str(s.getsockname()[0])
    except (OSError, IndexError):
        return None
    if local.startswith("127."):
        return None
    for _, name in socket.if_nameindex():
        if name != "lo" and interface_address(name) == local:
            return name
    return None


def network_env(env: dict[str, str]) -> dict[str, str]:
    """GLOO_SOCKET_IFNAME / NCCL_SOCKET_IFNAME for this node, unless already set (job env or partition config)."""
    if env.get("GLOO_SOCKET_IFNAME"):
        return {} if env.get("NCCL_SOCKET_IFNAME") else {"NCCL_SOCKET_IFNAME": env["GLOO_SOCKET_IFNAME"]}
    name = route_interface(env.get("MASTER_ADDR", "127.0.0.1"))
    if name is None:
        return {}
    return {"GLOO_SOCKET_IFNAME": name, **({} if env.get("NCCL_SOCKET_IFNAME") else {"NCCL_SOCKET_IFNAME": name})}


def device_env(env: dict[str, str]) -> dict[str, str]:
    """This node's accelerator indices from SUANLI_ACCELERATOR_MAP (``node=ids;...``, written by the batch
    script on the first node): srun hands every rank the first node's variables, and another node's
    allocation may hold other indices."""
    node = env.get("SLURMD_NODENAME", "")
    for entry in env.get("SUANLI_ACCELERATOR_MAP", "").split(";"):
        name, _, ids = entry.partition("=")
        if name and name == node:
            var = env.get("SUANLI_DEVICE_VAR")
            return {"SUANLI_ACCELERATOR_IDS": ids, **({var: ids} if var else {})}
    return {}


#: Open MPI parameters that choose interfaces: set by the user (environment or argv), suanli adds none.
_OMPI_IF_PARAMS = ("btl_tcp_if_include", "btl_tcp_if_exclude", "oob_tcp_if_include", "oob_tcp_if_exclude")


def mpirun_argv(argv: list[str], env: dict[str, str]) -> list[str]:
    """``mpirun ARGS`` with the interface Open MPI's TCP transport and its daemons' channel use: the
    partition's (GLOO_SOCKET_IFNAME, from ``network_interface``) or the one routing to MASTER_ADDR. Left
    alone, Open MPI tries every interface (docker bridges, management networks) and may hang on one the
    other nodes cannot reach. Nothing is added when the job chose already, or on loopback (one node)."""
    chosen = any(f"OMPI_MCA_{p}" in env for p in _OMPI_IF_PARAMS) or any(a in _OMPI_IF_PARAMS for a in argv)
    name = None if chosen else env.get("GLOO_SOCKET_IFNAME") or route_interface(env.get("MASTER_ADDR", "127.0.0.1"))
    if not name:
        return list(argv)
    return [argv[0], "--mca", "btl_tcp_if_include", name, "--mca", "oob_tcp_if_include", name, *argv[1:]]


def srun_mpi_env(env: dict[str, str]) -> dict[str, str]:
    """``OMPI_MCA_btl_tcp_if_include`` for the ranks ``srun --mpi=pmix`` starts (Slurm's PMIx server wires them
    up, so only the ranks' own TCP transport needs the choice): the network of the interface that reaches
    MASTER_ADDR. Nothing when the job or the partition chose, or on loopback (one node)."""
    if any(f"OMPI_MCA_{p}" in env for p in _OMPI_IF_PARAMS):
        return {}
    name = route_interface(env.get("MASTER_ADDR", "127.0.0.1"))
    network = interface_network(name) if name else None
    return {"OMPI_MCA_btl_tcp_if_include": network} if network else {}


def main(argv: list[str]) -> int:
    if not argv or argv in (["--mpirun"], ["--srun"]):
        print("usage: python -m suanli.runtime.launch SCRIPT ARGS... | -m MODULE ARGS... | --mpirun mpirun ARGS... "
              "| --srun srun ARGS...", file=sys.stderr)
        return 2
    if argv[0] == "--mpirun":
        full = mpirun_argv(argv[1:], dict(os.environ))
        os.execvp(full[0], full)
    if argv[0] == "--srun":
        os.environ.update(srun_mpi_env(dict(os.environ)))
        os.execvp(argv[1], argv[1:])
    os.environ.update(torch_env(dict(os.environ)))
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29500")
    os.environ.update(network_env(dict(os.environ)))
    os.environ.update(device_env(dict(os.environ)))
    if argv[0] == "-m":
        sys.argv = [argv[1], *argv[2:]]
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = list(argv)
        sys.path.insert(0, os.path.dirname(os.path.abspath(argv[0])))
        runpy.run_path(argv[0], run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
