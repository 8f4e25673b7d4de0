"""Talking to a Ray cluster without joining it: the node list over the dashboard's HTTP state API (standard
library only, so no driver connection is opened in the submitting process), the check that a request fits
some node, and the argv of ``ray start --head`` / ``ray stop`` for ``suanli ray up``/``down``."""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from suanli.errors import BackendError

HTTP_TIMEOUT_S = 10.0
#: Ray's resource names beside the job request's own names.
MEMORY_KEYS = ("memory", "object_store_memory")


def unreachable(address: str, cluster: str, reason: object) -> BackendError:
    return BackendError(f"ray cluster {cluster!r}: cannot reach the Jobs API at {address} ({reason}); start the "
                        f"head (suanli ray up --cluster {cluster}) or fix ray.address in the cluster config")


def get_json(url: str, address: str, cluster: str, timeout: float = HTTP_TIMEOUT_S) -> Any:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        raise BackendError(f"ray cluster {cluster!r}: {url} answered HTTP {exc.code}; is {address} a Ray "
                           "dashboard (ray.address)?") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise unreachable(address, cluster, getattr(exc, "reason", exc)) from None


def alive_nodes(address: str, cluster: str) -> list[dict[str, float]]:
    """``resources_total`` of every ALIVE node, from GET /api/v0/nodes (Ray's state API)."""
    data = get_json(f"{address}/api/v0/nodes?detail=1&limit=10000", address, cluster)
    try:
        nodes = data["data"]["result"]["result"]
    except (KeyError, TypeError):
        raise BackendError(f"ray cluster {cluster!r}: unexpected node list from {address}/api/v0/nodes") from None
    return [{k: float(v) for k, v in (n.get("resources_total") or {}).items()}
            for n in nodes if n.get("state") == "ALIVE"]


def describe(bundle: Mapping[str, float]) -> str:
    parts = []
    for k, v in bundle.items():
        if k in MEMORY_KEYS:
            parts.append(f"{k} {v / 2**30:.1f} GiB")
        else:
            parts.append(f"{k} {v:g}")
    return ", ".join(parts)


def fits(bundle: Mapping[str, float], node: Mapping[str, float]) -> bool:
    return all(node.get(k, 0.0) >= v for k, v in bundle.items() if v)


def check_request(nodes: Sequence[Mapping[str, float]], bundle: Mapping[str, float], count: int,
                  cluster: str, address: str) -> None:
    """Refuse what the live cluster can never run (Ray would leave it pending forever): ``count`` distinct
    nodes must each hold ``bundle`` (count 1: one node)."""
    need = {k: v for k, v in bundle.items() if v}
    if not nodes:
        raise BackendError(f"ray cluster {cluster!r} at {address} has no alive node; start one (suanli ray up)")
    missing = [k for k in need if not any(k in n for n in nodes)]
    if missing:
        have = sorted({k for n in nodes for k in n if not k.startswith("node:") and k not in MEMORY_KEYS})
        raise BackendError(f"ray cluster {cluster!r} has no {', '.join(missing)} resource on any node (it has "
                           f"{', '.join(have)}); pick a partition this cluster can serve")
    able = sum(1 for n in nodes if fits(need, n))
    if able >= count:
        return
    largest = {k: max(n.get(k, 0.0) for n in nodes) for k in need}
    short = {k: v for k, v in need.items() if v > largest[k]}
    if short:
        raise BackendError(f"ray cluster {cluster!r}: no node can hold {describe(short)} (the largest node has "
                           f"{describe({k: largest[k] for k in short})}); ask for less per node")
    raise BackendError(f"ray cluster {cluster!r}: the request needs {count} node(s) with {describe(need)} each, "
                       f"but only {able} of its {len(nodes)} alive node(s) have that; ask for fewer nodes or less")


# ---------------------------------------------------------------- a head on this machine (suanli ray up/down)
@dataclass(frozen=True)
class HeadOptions:
    port: int
    dashboard_port: int
    num_cpus: int | None
    num_gpus: int | None
    resources: Mapping[str, float]
    object_store_bytes: int
    temp_dir: str
    client_port: int | None = None


def ray_executable() -> str:
    """The ``ray`` command beside this interpreter (the one suanli runs with), else the one on PATH."""
    candidate = Path(sys.executable).with_name("ray")
    if candidate.exists():
        return str(candidate)
    import shutil

    found = shutil.which("ray")
    if not found:
        raise BackendError("ray is not installed here: pip install 'suanli[ray]'")
    return found


def up_argv(o: HeadOptions) -> list[str]:
    argv = [ray_executable(), "start", "--head", "--port", str(o.port), "--dashboard-host", "127.0.0.1",
            "--dashboard-port", str(o.dashboard_port), "--object-store-memory", str(o.object_store_bytes),
            "--temp-dir", o.temp_dir, "--disable-usage-stats"]
    if o.client_port is not None:
        argv += ["--ray-client-server-port", str(o.client_port)]
    if o.num_cpus is not None:
        argv += ["--num-cpus", str(o.num_cpus)]
    if o.num_gpus is not None:
        argv += ["--num-gpus", str(o.num_gpus)]
    if o.resources:
        argv += ["--resources", json.dumps(dict(o.resources), sort_keys=True)]
    return argv


HEAD_MARK = "SUANLI_RAY_HEAD"


def head_env(temp_dir: str) -> dict[str, str]:
    """No usage statistics, and the auth mode stated (an embedded ray.init() may have left a token behind that
    would otherwise switch this head to token auth). Every process of the head inherits SUANLI_RAY_HEAD, which
    finds the ones that rename themselves (ray::DashboardAgent's command line no longer names the temp dir)."""
    env = dict(os.environ)
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    env.setdefault("RAY_AUTH_MODE", "disabled")
    env[HEAD_MARK] = temp_dir
    return env


def wait_for_jobs_api(address: str, cluster: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            get_json(f"{address}/api/version", address, cluster, timeout=2.0)
            return
        except BackendError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def head_pids(temp_dir: str) -> list[int]:
    """Every process of the head started with this temp dir (its command line names it); other Ray heads on
    the machine are not touched, unlike plain ``ray stop``."""
    me = os.getpid()
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if re.search(rf"(^|[\s=]){re.escape(temp_dir)}(/|\s|$)", cmdline):  # the dir itself, not a prefix
            out.append(int(entry.name))
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"{HEAD_MARK}={temp_dir}".encode() in environ:
            out.append(int(entry.name))
    return out


def stop_head(temp_dir: str, grace_s: float = 10.0) -> int:
    """SIGTERM the head's processes, SIGKILL what is left after the grace time; returns how many there were."""
    pids = head_pids(temp_dir)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for p in pids:
            try:
                os.kill(p, sig)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in pids):
            time.sleep(0.2)
        if not any(Path(f"/proc/{p}").exists() for p in pids):
            break
    return len(pids)
