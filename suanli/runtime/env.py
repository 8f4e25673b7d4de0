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
    adapter: str
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
    adapter = e.get("SUANLI_ADAPTER", "cpu")
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


def init_distributed(backend: str | None = None) -> Any:
    """Join the process group with the adapter's backend and return the torch device of this rank.

    nvidia -> cuda + nccl, ascend -> npu + hccl (needs torch_npu and CANN), otherwise cpu + gloo.
    """
    import torch
    import torch.distributed as dist

    env = environment()
    if env.adapter == "ascend":
        import importlib.util

        # Found first, imported second: without CANN, torch_npu's import fails with RuntimeError, not only
        # ImportError (and its backend autoload can break `import torch` itself).
        if importlib.util.find_spec("torch_npu") is None:
            raise RuntimeError("the ascend adapter needs torch_npu: pip install torch-npu (the release matching "
                               "your torch) and source CANN's set_env.sh")
        try:
            import torch_npu  # noqa: F401
        except (ImportError, RuntimeError) as exc:
            raise RuntimeError(f"torch_npu did not load ({exc}); install the CANN toolkit and source its "
                               "set_env.sh (the ascend partition's setup does when CANN is installed)") from None
        device = torch.device("npu", env.local_rank)
        torch.npu.set_device(device)  # type: ignore[attr-defined]
        backend = backend or "hccl"
    elif env.adapter == "nvidia":
        device = torch.device("cuda", env.local_rank % max(1, torch.cuda.device_count()))
        torch.cuda.set_device(device)
        backend = backend or "nccl"
    else:
        device = torch.device("cpu")
        backend = backend or "gloo"
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
