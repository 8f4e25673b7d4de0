"""Per-rank entry point for Training under ``srun``: turns Slurm's task variables into torchrun's
(RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, GROUP_RANK) and runs the script or module in-process.

``python -m suanli.runtime.launch SCRIPT ARGS...`` or ``python -m suanli.runtime.launch -m MODULE ARGS...``.
MASTER_ADDR and MASTER_PORT come from the batch script (first host of the allocation, port from the job id).
"""

from __future__ import annotations

import os
import runpy
import sys


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


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python -m suanli.runtime.launch SCRIPT ARGS... | -m MODULE ARGS...", file=sys.stderr)
        return 2
    os.environ.update(torch_env(dict(os.environ)))
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29500")
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
