"""``suanli ray up`` / ``suanli ray down``: a Ray head on this machine for a configured ray cluster.

A thin wrapper over ``ray start --head`` with limits that suit a shared machine (a capped object store, no usage
statistics, the custom resources the cluster config declares, the dashboard port from ``ray.address``), and a
``down`` that stops only the head ``up`` started (plain ``ray stop`` stops every Ray of the machine). Commands
are argv lists. Nothing here imports ray: it is run as the ``ray`` command.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from suanli.errors import BackendError, UsageError

DEFAULT_OBJECT_STORE = "2G"
START_TIMEOUT_S = 120.0


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    """Add the ``ray`` verb with its ``up`` and ``down`` subcommands."""
    p = sub.add_parser("ray", parents=[common], help="start or stop a Ray head on this machine",
                       description="Start (up) or stop (down) a Ray head on this machine for a ray cluster of the "
                                   "configs; its Jobs API listens on the port of the cluster's ray.address.")
    verbs = p.add_subparsers(dest="ray_verb", metavar="up|down")
    verbs.required = True
    up = verbs.add_parser("up", parents=[common], help="ray start --head with suanli's limits")
    up.add_argument("--cluster", "-c", help="a cluster with backend: ray (default: the only one configured)")
    up.add_argument("--partition", "-p", help="the partition whose accelerators this head declares (default: the "
                                              "cluster's default partition)")
    up.add_argument("--num-cpus", type=int, metavar="N", help="CPUs Ray may hand out (default: all cores)")
    up.add_argument("--num-gpus", type=int, metavar="N")
    up.add_argument("--port", type=int, default=6379, help="the head's GCS port (default 6379)")
    up.add_argument("--dashboard-port", type=int, metavar="PORT",
                    help="the Jobs API port (default: the port of ray.address, else 8265)")
    up.add_argument("--client-port", type=int, metavar="PORT", help="Ray client server port (default 10001)")
    up.add_argument("--object-store-memory", default=DEFAULT_OBJECT_STORE, metavar="SIZE",
                    help=f"object store size: 2G, 500M (default {DEFAULT_OBJECT_STORE}; Ray takes 30%% of RAM)")
    up.add_argument("--resources", metavar="JSON", help='more custom resources, such as \'{"NPU": 8}\'')
    up.add_argument("--temp-dir", metavar="DIR", help="Ray's temp dir (default /tmp/suanli-ray-CLUSTER)")
    up.add_argument("--dry-run", action="store_true", help="print the ray start command; start nothing")
    up.add_argument("--json", action="store_true")
    down = verbs.add_parser("down", parents=[common], help="stop the head that `suanli ray up` started")
    down.add_argument("--cluster", "-c", help="the cluster given to `suanli ray up`")
    down.add_argument("--json", action="store_true")


def _ray_cluster(args: argparse.Namespace) -> Any:
    from suanli.compute.config import load_configs

    configs = load_configs(getattr(args, "config", None))
    ray_clusters = sorted(n for n, c in configs.clusters.items() if c.backend == "ray")
    name = args.cluster
    if name is None:
        if len(ray_clusters) != 1:
            raise UsageError("--cluster: name the ray cluster" + (f"; ray clusters: {', '.join(ray_clusters)}"
                                                                   if ray_clusters else "; none is configured"))
        name = ray_clusters[0]
    cfg = configs.cluster(name)
    if cfg.backend != "ray":
        raise UsageError(f"--cluster: {name!r} is a {cfg.backend} cluster; ray clusters: "
                         f"{', '.join(ray_clusters) or 'none'}")
    return cfg


def _state_file(cluster: str) -> Path:
    from suanli.compute.store import home

    return home() / "ray" / f"{cluster}.json"


def _accelerators(cfg: Any, partition: str | None) -> tuple[str | None, float]:
    """The Ray resource the partition's adapter names for its accelerators (``num_gpus``, ``NPU`` ...) and how
    many a node has; (None, 0) for CPU partitions."""
    from suanli.adapters import get_adapter

    part = cfg.partition(partition)
    if not part.accelerators_per_node:
        return None, 0.0
    return get_adapter(part.adapter).ray_resource, float(part.accelerators_per_node)


def _resources(cfg: Any, partition: str | None, extra: str | None) -> dict[str, float]:
    """Custom resources of the head: the partition's accelerators per node when its adapter names a custom Ray
    resource (Ascend: Ray's built-in ``NPU``); ``num_gpus`` goes to ``--num-gpus`` instead (see _up)."""
    name, count = _accelerators(cfg, partition)
    out: dict[str, float] = {}
    if name and name != "num_gpus":
        out[name] = count
    if extra:
        try:
            more = json.loads(extra)
        except ValueError:
            more = None
        if not isinstance(more, dict) or not all(isinstance(v, int | float) for v in more.values()):
            raise UsageError(f'--resources: {extra!r} is not a JSON object of numbers, such as {{"NPU": 8}}')
        out.update({str(k): float(v) for k, v in more.items()})
    return out


def cmd_ray(args: argparse.Namespace) -> int:
    if args.ray_verb == "up":
        return _up(args)
    return _down(args)


def _up(args: argparse.Namespace) -> int:
    import subprocess  # here, not at the top: `suanli --help` builds this verb's parser only
    from urllib.parse import urlparse

    from suanli.compute.ray import cluster as rc
    from suanli.jobs.resources import parse_memory

    cfg = _ray_cluster(args)
    address = str(cfg.ray["address"]).rstrip("/")
    parsed = urlparse(address if "://" in address else "http://" + address)
    if parsed.hostname not in ("127.0.0.1", "localhost", None) and args.dashboard_port is None:
        print(f"suanli: warning: {cfg.name}'s ray.address {address} is not on this machine; the head listens on "
              "127.0.0.1", file=sys.stderr)
    dash = args.dashboard_port or parsed.port or 8265
    store_mb = parse_memory(args.object_store_memory, "--object-store-memory")
    assert store_mb is not None
    for name in ("num_cpus", "num_gpus"):
        value = getattr(args, name)
        if value is not None and value < 0:
            raise UsageError(f"--{name.replace('_', '-')}: {value} must not be negative")
    temp = args.temp_dir or f"/tmp/suanli-ray-{cfg.name}"
    num_gpus = args.num_gpus
    if num_gpus is None:
        resource, count = _accelerators(cfg, args.partition)
        num_gpus = int(count) if resource == "num_gpus" else None
    opts = rc.HeadOptions(port=args.port, dashboard_port=dash, num_cpus=args.num_cpus, num_gpus=num_gpus,
                          resources=_resources(cfg, args.partition, args.resources),
                          object_store_bytes=store_mb * 1024 * 1024, temp_dir=os.path.abspath(temp),
                          client_port=args.client_port)
    argv = rc.up_argv(opts)
    url = f"http://127.0.0.1:{dash}"
    info = {"cluster": cfg.name, "address": url, "temp_dir": opts.temp_dir, "argv": argv}
    if args.dry_run:
        if args.json:
            print(json.dumps(info, indent=1))
        else:
            import shlex

            print(shlex.join(argv))
        return 0
    state = _state_file(cfg.name)
    if state.exists() and rc.head_pids(json.loads(state.read_text())["temp_dir"]):
        raise UsageError(f"ray up: a head for cluster {cfg.name!r} is already running (suanli ray down --cluster "
                         f"{cfg.name} stops it)")
    info["created_temp_dir"] = not os.path.exists(opts.temp_dir)  # `down` removes only a folder `up` made
    os.makedirs(opts.temp_dir, exist_ok=True)
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, env=rc.head_env(opts.temp_dir),
                              timeout=START_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        rc.stop_head(opts.temp_dir)
        raise BackendError(f"ray start did not finish within {START_TIMEOUT_S:g} s; see {opts.temp_dir}/session_latest/"
                           "logs") from None
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr or proc.stdout).strip().splitlines() if ln.strip()]
        rc.stop_head(opts.temp_dir)
        raise BackendError(f"ray start failed: {lines[-1] if lines else f'exit code {proc.returncode}'}")
    state.parent.mkdir(parents=True, exist_ok=True)
    state.write_text(json.dumps(info))
    try:
        rc.wait_for_jobs_api(url, cfg.name, START_TIMEOUT_S)
    except BackendError:
        rc.stop_head(opts.temp_dir)
        state.unlink(missing_ok=True)
        raise
    if args.json:
        print(json.dumps(info, indent=1))
    else:
        print(f"ray head for cluster {cfg.name} up; Jobs API at {url} (suanli ray down --cluster {cfg.name} "
              "stops it)", file=sys.stderr)
    return 0


def _down(args: argparse.Namespace) -> int:
    from suanli.compute.ray import cluster as rc

    cfg = _ray_cluster(args)
    state = _state_file(cfg.name)
    if not state.exists():
        raise UsageError(f"ray down: no head started by `suanli ray up` for cluster {cfg.name!r} "
                         "(`ray stop` stops every Ray on this machine)")
    info = json.loads(state.read_text())
    stopped = rc.stop_head(info["temp_dir"])
    state.unlink(missing_ok=True)
    if info.get("created_temp_dir", True):  # `up` made it: its sessions and logs go with the head
        import shutil

        shutil.rmtree(info["temp_dir"], ignore_errors=True)
    if args.json:
        print(json.dumps({"cluster": cfg.name, "stopped_processes": stopped}))
    else:
        print(f"ray head for cluster {cfg.name} stopped ({stopped} processes)", file=sys.stderr)
    return 0
