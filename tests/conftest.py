"""Shared fixtures: every test gets its own SUANLI_HOME and runs outside the repository's cluster_configs/."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
# Every CLI process a test starts runs in-process, as written: the command server (suanli/cli/server.py) would
# otherwise answer from a process started by an earlier test. tests/test_cli_server.py turns it on, each test
# with a server folder of its own.
os.environ["SUANLI_SERVER"] = "0"
os.environ.pop("SUANLI_SERVER_DIR", None)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    h = tmp_path / "home"
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.setenv("SUANLI_HOME", str(h))
    monkeypatch.delenv("SUANLI_CONFIG", raising=False)
    monkeypatch.delenv("SUANLI_CLUSTER", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "user"))  # no ~/.config/suanli of the machine's user
    monkeypatch.chdir(work)
    yield h
    _stop_leftovers(h)


def _stop_leftovers(h: Path) -> None:
    """Cancel anything a failed test left running, so no job outlives the test session."""
    jobs = h / "jobs"
    if not jobs.is_dir():
        return
    import signal

    for d in jobs.iterdir():
        try:
            state = json.loads((d / "state.json").read_text())
        except (OSError, ValueError):
            continue
        for t in state["tasks"].values():
            if t.get("state") == "RUNNING" and t.get("pid"):
                try:
                    os.killpg(int(t["pid"]), signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
        (d / "cancel").touch()
        try:
            pid = int((d / "runner.pid").read_text().split()[0])
            os.kill(pid, signal.SIGTERM)
        except (OSError, ValueError):
            pass


@pytest.fixture
def client(home: Path) -> Any:
    from suanli.api import Client

    c = Client()
    yield c
    c.store.close()


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 120,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
    """The real CLI in a new process, as a user would run it."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "suanli", *args], capture_output=True, text=True, env=full_env,
        cwd=cwd or os.getcwd(), timeout=timeout, input=input,
    )


# ---------------------------------------------------------------- the Slurm test cluster
SLURM_CONF = os.environ.get("SUANLI_TEST_SLURM_CONF", "")


@pytest.fixture(scope="session")
def slurm_conf() -> str:
    if not SLURM_CONF or not Path(SLURM_CONF).exists():
        if os.environ.get("CI") == "true":
            pytest.fail("no Slurm test cluster (SUANLI_TEST_SLURM_CONF): scripts/test.sh starts it; under CI this "
                        "is a failure, not a skip")
        pytest.skip("no Slurm test cluster; run scripts/test.sh, which starts one")
    r = subprocess.run(["scontrol", "ping"], capture_output=True, text=True,
                       env=dict(os.environ, SLURM_CONF=SLURM_CONF))
    assert r.returncode == 0 and "UP" in r.stdout, r.stdout + r.stderr
    return SLURM_CONF


@pytest.fixture
def slurm(home: Path, slurm_conf: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A Client whose default cluster is the test Slurm cluster."""
    cfg = tmp_path / "clusters"
    cfg.mkdir()
    (cfg / "testslurm.yaml").write_text(
        "name: testslurm\nbackend: slurm\ndefault_account: acct-a\n"
        f"slurm: {{conf: {slurm_conf}, signal_seconds: 10}}\n"
        "partitions:\n"
        "  - {name: debug, adapter: cpu, nodes: 1, cpus_per_node: 8, memory_per_node: 7000M}\n"
        "  - {name: ai, adapter: ascend, nodes: 1, cpus_per_node: 8, accelerators_per_node: 8, max_time: 2h,\n"
        "     charge: {accelerator_hour: 1.5}}\n"
    )
    # A cluster whose MaxArraySize is taken to be 10, so arrays are split as on a site with a small limit.
    (cfg / "testslurm-small.yaml").write_text(
        f"name: testslurm-small\nbackend: slurm\ndefault_account: acct-a\n"
        f"slurm: {{conf: {slurm_conf}, max_array_size: 10}}\n"
        "partitions:\n  - {name: debug, nodes: 1, cpus_per_node: 8}\n"
    )
    # The same Slurm partition, seen through a config that launches MPI with mpirun instead of srun.
    (cfg / "testslurm-mpirun.yaml").write_text(
        f"name: testslurm-mpirun\nbackend: slurm\ndefault_account: acct-a\nslurm: {{conf: {slurm_conf}}}\n"
        "partitions:\n  - {name: debug, nodes: 1, cpus_per_node: 8, mpi_launcher: mpirun}\n"
    )
    (cfg / "settings.yaml").write_text("default_cluster: testslurm\nstatus_poll_max_s: 2\n")
    monkeypatch.setenv("SUANLI_CONFIG", str(cfg))
    monkeypatch.setenv("SLURM_CONF", slurm_conf)
    from suanli.api import Client

    c = Client()
    yield c
    scancel_open(c)


# ---------------------------------------------------------------- a 2-rank training probe (Slurm, Ray)
def rank_probe(tmp_path: Path) -> tuple[Path, Path]:
    """A training script that all-reduces its rank and writes what it saw to OUT/rank<N>.json."""
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import json, os, sys\nimport torch, torch.distributed as dist\n"
        "from suanli.runtime import environment, init_distributed, shutdown\n"
        "env = environment(); init_distributed()\n"
        "t = torch.tensor([float(env.rank + 1)]); dist.all_reduce(t)\n"
        "keys = ['RANK', 'LOCAL_RANK', 'WORLD_SIZE', 'LOCAL_WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT']\n"
        "json.dump({**{k: os.environ[k] for k in keys}, 'sum': t.item(), 'launcher': env.launcher}, "
        "open(os.path.join(sys.argv[1], f'rank{env.rank}.json'), 'w'))\nshutdown()\n"
    )
    out = tmp_path / "out"
    out.mkdir()
    return probe, out


def two_ranks(out: Path) -> list[dict[str, Any]]:
    """What both ranks of the probe saw, checked for a consistent 2-rank world."""
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["RANK"] for r in ranks] == ["0", "1"] and [r["LOCAL_RANK"] for r in ranks] == ["0", "1"]
    assert all(r["WORLD_SIZE"] == "2" and r["LOCAL_WORLD_SIZE"] == "2" and r["sum"] == 3.0 for r in ranks)
    assert ranks[0]["MASTER_PORT"] == ranks[1]["MASTER_PORT"]
    return ranks


# ---------------------------------------------------------------- the 3-node Slurm test cluster (multinode.sh)
SLURM_MULTI_CONF = os.environ.get("SUANLI_TEST_SLURM_MULTI_CONF", "")


@pytest.fixture(scope="session")
def slurm_multi_conf() -> str:
    """slurm.conf of the 3-node cluster in network namespaces (tests/slurm/multinode.sh)."""
    if not SLURM_MULTI_CONF or not Path(SLURM_MULTI_CONF).exists():
        if os.environ.get("CI") == "true":
            pytest.fail("no 3-node Slurm test cluster (SUANLI_TEST_SLURM_MULTI_CONF): scripts/test.sh starts it; "
                        "under CI this is a failure, not a skip")
        pytest.skip("no 3-node Slurm test cluster; run scripts/test.sh -m multinode, which starts one")
    r = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, SLURM_CONF=SLURM_MULTI_CONF))
    assert r.returncode == 0 and "UP" in r.stdout, r.stdout + r.stderr
    return SLURM_MULTI_CONF


@pytest.fixture
def slurm_multi(home: Path, slurm_multi_conf: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A Client whose default cluster is the 3-node test cluster: partitions cpu (3 nodes) and npu (2 nodes)."""
    cfg = tmp_path / "clusters"
    cfg.mkdir()
    (cfg / "multislurm.yaml").write_text(
        "name: multislurm\nbackend: slurm\ndefault_account: acct-a\n"
        f"slurm: {{conf: {slurm_multi_conf}, signal_seconds: 10}}\n"
        "partitions:\n"
        "  - {name: cpu, adapter: cpu, nodes: 3, cpus_per_node: 2, memory_per_node: 2000M}\n"
        "  - {name: npu, adapter: ascend, nodes: 2, cpus_per_node: 2, memory_per_node: 2000M,\n"
        "     accelerators_per_node: 4, max_time: 2h}\n"
    )
    (cfg / "settings.yaml").write_text("default_cluster: multislurm\nstatus_poll_max_s: 2\n")
    monkeypatch.setenv("SUANLI_CONFIG", str(cfg))
    monkeypatch.setenv("SLURM_CONF", slurm_multi_conf)
    from suanli.api import Client

    c = Client()
    yield c
    scancel_open(c)


# ---------------------------------------------------------------- bounded waits
def wait_until(cond: Any, what: str, timeout: float = 60.0, every: float = 0.05) -> Any:
    """Poll ``cond()`` until it returns something true, at most ``timeout`` seconds; the value it returned."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(every)


# ---------------------------------------------------------------- Slurm requeues
def wait_releasing_requeued(job: Any, slurm_conf: str, timeout: float) -> Any:
    """Wait for a job, making each requeued attempt eligible after 5 s: Slurm holds a requeued job back for
    about two minutes (Reason=BeginTime), which only slows the test down."""
    env = dict(os.environ, SLURM_CONF=slurm_conf)
    deadline = time.time() + timeout
    released: set[str] = set()
    while time.time() < deadline:
        state = job.status()
        if state.is_terminal:
            return state
        native = job.info().native_id
        shown = subprocess.run(["scontrol", "show", "job", native], capture_output=True, text=True, env=env).stdout
        restarts = shown.split("Restarts=", 1)[-1].split()[0] if "Restarts=" in shown else "?"
        if "Reason=BeginTime" in shown and restarts not in released:
            released.add(restarts)
            # Not at once: slurmd must finish cleaning up the previous attempt of the same job id first,
            # or it fails the new launch (seen as FAILED, exit 1, with nothing run).
            subprocess.run(["scontrol", "update", f"jobid={native}", "StartTime=now+5"], capture_output=True,
                           env=env)
        time.sleep(0.5)
    raise TimeoutError(f"job {job.id} still running after {timeout} s")


def scancel_open(client: Any) -> None:
    """Cancel the Slurm jobs a test left unfinished (so none outlives it), then close the registry."""
    open_jobs = [r for r in client.store.query(only_open=True) if r.native_id]
    if open_jobs:
        ids = [n for r in open_jobs if r.native_id for n in r.native_id.split(",")]
        subprocess.run(["scancel", *ids], capture_output=True, timeout=60)
    client.store.close()
