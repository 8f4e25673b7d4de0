"""DDP training on synthetic data; runs unchanged on local CPUs, Slurm, Ray and GPUs.

Launched by suanli (Training workload) or plain torchrun. Rank 0 prints the throughput in samples/s.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.distributed as dist
from torch import nn

from suanli.runtime import environment, init_distributed, shutdown


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--features", type=int, default=128)
    ap.add_argument("--warmup", type=int, default=3)
    args = ap.parse_args()

    env = environment()
    device = init_distributed()
    torch.manual_seed(1234 + env.rank)
    model = nn.Sequential(
        nn.Linear(args.features, args.hidden), nn.ReLU(),
        nn.Linear(args.hidden, args.hidden), nn.ReLU(),
        nn.Linear(args.hidden, 1),
    ).to(device)
    if env.is_distributed:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type != "cpu" else None)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(args.batch_size, args.features, device=device)
    y = x.sum(dim=1, keepdim=True) * 0.1
    loss = torch.zeros((), device=device)
    start = time.perf_counter()
    for step in range(args.steps + args.warmup):
        if step == args.warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    rate = args.steps * args.batch_size * env.world_size / elapsed
    if env.is_distributed:
        t = torch.tensor([loss.item()], device=device)
        dist.all_reduce(t)
        final_loss = t.item() / env.world_size
    else:
        final_loss = loss.item()
    if env.rank == 0:
        print(f"ddp: world_size={env.world_size} launcher={env.launcher} device={device.type} "
              f"backend={dist.get_backend() if dist.is_initialized() else 'none'} "
              f"loss={final_loss:.4f} throughput={rate:.1f} samples/s", flush=True)
    shutdown()


if __name__ == "__main__":
    main()
