"""The read-only verbs about the machines rather than jobs: ``suanli clusters`` and ``suanli hardware``."""

from __future__ import annotations

import argparse
import sys

from suanli.cli.output import duration, print_json, table


# ---------------------------------------------------------------- clusters
def cmd_clusters(args: argparse.Namespace) -> int:
    from suanli.api import Client

    client = Client(getattr(args, "config", None))
    clusters = client.configs.clusters
    if args.json:
        print_json([c.to_json() for c in clusters.values()])
        return 0
    rows: list[list[object]] = []
    default = client.configs.settings.default_cluster
    for c in clusters.values():
        dflt = c.default_partition or c.partitions[0].name
        for p in c.partitions:
            acc = f"{p.accelerators_per_node} {p.accelerator_kind}" if p.accelerators_per_node else ""
            mem = f"{p.memory_per_node_mb // 1024}G" if p.memory_per_node_mb else ""
            rows.append([c.name + (" *" if c.name == default else ""), c.backend,
                         p.name + (" *" if p.name == dflt else ""), p.adapter, p.nodes or "", p.cpus_per_node or "",
                         acc, mem, duration(p.max_time.total_seconds()) if p.max_time else "", c.source])
    sys.stdout.write(table(("CLUSTER", "BACKEND", "PARTITION", "ADAPTER", "NODES", "CPUS/NODE", "ACCEL/NODE",
                            "MEM/NODE", "MAX TIME", "SOURCE"), rows))
    return 0


# ---------------------------------------------------------------- hardware
def cmd_hardware(args: argparse.Namespace) -> int:
    from suanli.adapters.detect import detect, partition_entry

    hw = detect(sysroot=args.sysroot, lscpu=args.lscpu, cpuinfo=args.cpuinfo, npu_smi=args.npu_smi,
                nvidia_smi=args.nvidia_smi, smi=args.smi)
    if args.partition_entry:
        sys.stdout.write(partition_entry(hw, args.partition_entry))
        return 0
    if args.json:
        print_json(hw.to_json())
        return 0
    c = hw.cpu
    ids = f" (implementer {c.implementer}, part {c.part})" if c.implementer else ""
    ids = ids or (f" (family {c.family})" if c.family else "")
    lines = [
        f"adapter:      {hw.adapter}",
        f"cpu:          {c.vendor or '?'} {c.model or '?'}{ids}",
        f"cpus:         {c.cores} logical, {c.sockets if c.sockets is not None else '?'} socket(s)",
        f"numa nodes:   {len(c.numa_nodes)}",
    ]
    for n in c.numa_nodes:
        lines.append(f"  node{n.id}:      {_cpulist(n.cpus)}")
    for a in hw.accelerators:
        mem = f", {a.memory_mb} MB each" if a.memory_mb else ""
        lines.append(f"accelerators: {a.count} x {a.kind} {a.model}{mem}, health {a.health}")
    if not hw.accelerators:
        lines.append("accelerators: none")
    lines.append(f"os:           {hw.os or '?'}")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


def _cpulist(cpus: list[int]) -> str:
    from suanli.jobs.spec import compact_ranges

    return compact_ranges(cpus) or "-"
