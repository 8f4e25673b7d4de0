"""A small MPI simulation: 1-D heat diffusion split across ranks with halo exchange (mpi4py).

Rank 0 prints the total heat, which diffusion with insulated ends conserves.
"""

from __future__ import annotations

import argparse

from mpi4py import MPI


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cells", type=int, default=10_000)
    ap.add_argument("--steps", type=int, default=500)
    args = ap.parse_args()

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    n = args.cells // size + (1 if rank < args.cells % size else 0)
    offset = sum(args.cells // size + (1 if r < args.cells % size else 0) for r in range(rank))
    # A hot block in the middle of the rod; two ghost cells for the neighbours' edges.
    u = [0.0] + [100.0 if args.cells * 0.45 <= offset + i < args.cells * 0.55 else 0.0 for i in range(n)] + [0.0]
    left = rank - 1 if rank > 0 else MPI.PROC_NULL
    right = rank + 1 if rank < size - 1 else MPI.PROC_NULL
    alpha = 0.25
    for _ in range(args.steps):
        u[0] = comm.sendrecv(u[1], dest=left, source=left) if left != MPI.PROC_NULL else u[1]
        u[-1] = comm.sendrecv(u[-2], dest=right, source=right) if right != MPI.PROC_NULL else u[-2]
        u = [u[0]] + [u[i] + alpha * (u[i - 1] - 2 * u[i] + u[i + 1]) for i in range(1, n + 1)] + [u[-1]]
    total = comm.allreduce(sum(u[1:-1]), op=MPI.SUM)
    if rank == 0:
        print(f"mpi: ranks={size} cells={args.cells} steps={args.steps} total_heat={total:.3f}", flush=True)


if __name__ == "__main__":
    main()
