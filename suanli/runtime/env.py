"""Where am I inside a job? Rank, world size and rendezvous, whichever launcher started this process.

Knows torchrun, Slurm (``srun``), Open MPI / PMIx (``mpirun``), Ray (suanli's Ray driver sets torchrun's
variables plus ``SUANLI_LAUNCHER=ray``; any other process of a Ray job is one rank), and suanli's own variables,
so one training script runs unchanged under the local backend, Slurm and Ray.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Environment:
    rank: int
    local_rank: int
    world_size: int
    local_world_size: int
    node_rank: int
    master_addr: str
    master_port: int
    job_id: str | None
    adapter: str  # as suanli's launch named it, or "auto" (see runtime_adapter)
    launcher: str  # torchrun | slurm | mpirun | ray | single

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def _int(env: dict[str, str], *names: str, default: int = 0) -> int:
    for n in names:
        v = env.get(n)
        if v not in (None, ""):
            try:
                return int(v)
            except ValueError:
                continue
    return default


def environment(env: dict[str, str] | None = None) -> Environment:
    """Read the launcher's variables (``os.environ`` unless given) into one Environment."""
    e = dict(os.environ if env is None else env)
    job_id = e.get("SUANLI_JOB_ID") or e.get("SLURM_JOB_ID")
    adapter = e.get("SUANLI_ADAPTER") or "auto"  # auto: found from the hardware by init_distributed()
    if "RANK" in e and "WORLD_SIZE" in e and "LOCAL_RANK" in e:
        # suanli's own launchers (Slurm's srun ranks, Ray workers) say who they are; otherwise torchrun.
        own = e.get("SUANLI_LAUNCHER", "")
        launcher = own if own in ("ray", "slurm") else "torchrun"
        rank, world = _int(e, "RANK"), _int(e, "WORLD_SIZE", default=1)
        local_rank = _int(e, "LOCAL_RANK")
        local_world = _int(e, "LOCAL_WORLD_SIZE", default=world)
        node_rank = _int(e, "GROUP_RANK", "NODE_RANK", default=rank // max(1, local_world))
    elif "SLURM_PROCID" in e and "SLURM_NTASKS" in e:
        launcher = "slurm"
        rank, world = _int(e, "SLURM_PROCID"), _int(e, "SLURM_NTASKS", default=1)
        local_rank = _int(e, "SLURM_LOCALID")
        local_world = _int(e, "SLURM_NTASKS_PER_NODE", default=0) or max(1, world // _int(e, "SLURM_NNODES", default=1))
        node_rank = _int(e, "SLURM_NODEID")
    elif "OMPI_COMM_WORLD_RANK" in e or "PMIX_RANK" in e:
        launcher = "mpirun"
        rank = _int(e, "OMPI_COMM_WORLD_RANK", "PMIX_RANK")
        world = _int(e, "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", default=1)
        local_rank = _int(e, "OMPI_COMM_WORLD_LOCAL_RANK", "PMIX_LOCAL_RANK")
        local_world = _int(e, "OMPI_COMM_WORLD_LOCAL_SIZE", "PMIX_LOCAL_SIZE", default=world)
        node_rank = _int(e, "OMPI_COMM_WORLD_NODE_RANK", default=rank // max(1, local_world))
    else:
        # A Ray job's entrypoint has RAY_JOB_CONFIG_JSON_ENV_VAR; its task workers get suanli's SUANLI_BACKEND.
        in_ray = e.get("SUANLI_BACKEND") == "ray" or "RAY_JOB_CONFIG_JSON_ENV_VAR" in e
        launcher, rank, world, local_rank, local_world, node_rank = "ray" if in_ray else "single", 0, 1, 0, 1, 0
    return Environment(
        rank=rank, local_rank=local_rank, world_size=world, local_world_size=local_world, node_rank=node_rank,
        master_addr=e.get("MASTER_ADDR", "127.0.0.1"), master_port=_int(e, "MASTER_PORT", default=29500),
        job_id=job_id, adapter=adapter, launcher=launcher,
    )


def runtime_adapter(env: dict[str, str] | None = None) -> Any:
    """The adapter of this process: the one suanli's launch named (SUANLI_ADAPTER), else the first registered
    adapter whose hardware this process can see (plain ``torchrun`` on a GPU node gets the GPU), else cpu.
    Each adapter says how it is detected and set up; nothing here knows adapter names."""
    from suanli.adapters import adapter_names, get_adapter

    e = os.environ if env is None else env
    named = e.get("SUANLI_ADAPTER")
    if named:
        return get_adapter(named)
    for name in adapter_names():
        adapter = get_adapter(name)
        if adapter.accelerator_kind and adapter.present():
            return adapter
    return get_adapter("cpu")


def init_distributed(backend: str | None = None) -> Any:
    """Join the process group with the adapter's backend and return the torch device of this rank.

    The adapter (see :func:`runtime_adapter`) picks the device and backend: nvidia -> cuda + nccl, ascend ->
    npu + hccl (needs torch_npu and CANN), plain CPUs -> cpu + gloo.
    """
    import torch.distributed as dist

    env = environment()
    adapter = runtime_adapter()
    device = adapter.torch_setup(env.local_rank)
    backend = backend or adapter.torch_backend
    if env.world_size > 1 and not dist.is_initialized():
        os.environ.setdefault("MASTER_ADDR", env.master_addr)
        os.environ.setdefault("MASTER_PORT", str(env.master_port))
        dist.init_process_group(backend=backend, rank=env.rank, world_size=env.world_size)
    return device


def shutdown(exit_code: int | None = 0) -> None:
    """Leave the process group cleanly, then (by default) exit at once.

    Ending with ``os._exit`` after a barrier and ``destroy_process_group`` avoids the gloo teardown abort
    ("terminate called without an active exception") seen at interpreter exit.
    """
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
    except ImportError:
        pass
    sys.stdout.flush()
    sys.stderr.flush()
    if exit_code is not None:
        os._exit(exit_code)
