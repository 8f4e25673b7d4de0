"""Backends and adapters plug in whole: tests/plugins/ holds an out-of-tree backend (``toy``) and adapter
(``toyadapter``, accelerator kind ``toyacc``), each a small setuptools package that registers itself in the
``suanli.backends`` / ``suanli.adapters`` entry points. They are pip-installed (offline) into a throwaway
folder, and the real CLI, with that folder on PYTHONPATH, submits, polls, books and lists through them. Nothing
inside suanli/ names them: the cluster config's ``toy:`` section is validated by the plug-in's own
``Backend.config_section``, and its jobs are booked from the registry (``Backend.usage_source``'s default)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import run_cli

from suanli.jobs.state import JobState

PLUGINS = Path(__file__).resolve().parent / "plugins"
PACKAGES = ("suanli-toy-backend", "suanli-toy-adapter")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Both plug-ins installed by pip into a folder of their own (no network, no build isolation, nothing in
    the project's venv). Built from copies, so no build/ or egg-info lands in the source tree."""
    root = tmp_path_factory.mktemp("plugins")
    target = root / "site"
    for pkg in PACKAGES:
        shutil.copytree(PLUGINS / pkg, root / pkg)
    r = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
         "--no-cache-dir", "--disable-pip-version-check", "--target", str(target),
         *(str(root / pkg) for pkg in PACKAGES)],
        capture_output=True, text=True, timeout=300,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert (target / "suanli_toy_backend-0.1.0.dist-info" / "entry_points.txt").exists()
    yield target


def _env(site: Path) -> dict[str, str]:
    return {"PYTHONPATH": os.pathsep.join([str(site), *sys.path])}


def _config(tmp_path: Path, toy_section: str) -> Path:
    cfg = tmp_path / "toy.yaml"
    cfg.write_text(
        "name: toyc\n"
        "backend: toy\n"
        f"{toy_section}"
        "partitions:\n"
        "  - name: acc\n"
        "    adapter: toyadapter\n"
        "    nodes: 1\n"
        "    cpus_per_node: 2\n"
        "    accelerators_per_node: 2\n"
        "    charge: {cpu_hour: 1.0, accelerator_hour: 10.0}\n"
    )
    return cfg


def test_plugin_backend_and_adapter_submit_poll_book_and_list(home: Path, tmp_path: Path, site: Path) -> None:
    spool = tmp_path / "spool"
    cfg = _config(tmp_path, f"toy:\n  spool: {spool}\n")
    env = _env(site)

    r = run_cli("--config", str(cfg), "clusters", env=env)
    assert r.returncode == 0, r.stderr
    (row,) = [ln.split() for ln in r.stdout.splitlines() if ln.startswith("toyc")]
    assert row[:2] == ["toyc", "toy"] and "toyadapter" in row and "toyacc" in row, r.stdout

    code = "import os, sys; print('devices=' + os.environ['TOY_VISIBLE_DEVICES']); sys.exit(0)"
    r = run_cli("--config", str(cfg), "submit", "--json", "--cluster", "toyc", "--accelerators", "toyacc:1",
                "--", sys.executable, "-c", code, env=env)
    assert r.returncode == 0, r.stderr
    job = json.loads(r.stdout)
    job_id = job["id"]
    # The toy backend, not some built-in one, ran it: its state file is in the configured spool.
    assert (spool / f"{job_id}.json").exists()

    r = run_cli("--config", str(cfg), "wait", job_id, env=env, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    r = run_cli("--config", str(cfg), "status", "--json", job_id, env=env)
    assert r.returncode == 0, r.stderr
    (st,) = json.loads(r.stdout)
    assert st["state"] == "COMPLETED" and st["backend"] == "toy"
    r = run_cli("--config", str(cfg), "logs", job_id, env=env)
    assert r.returncode == 0 and "devices=0" in r.stdout, r.stdout + r.stderr

    # Booked from the registry (the default usage source) with the plug-in adapter's accelerator kind.
    r = run_cli("--config", str(cfg), "usage", "--by", "job,accelerator", "--json", env=env)
    assert r.returncode == 0, r.stderr
    (use,) = [u for u in json.loads(r.stdout) if u["job_id"] == job_id]
    assert (use["cluster"], use["job"], use["accelerator"]) == ("toyc", job["native_id"], "toyacc"), use
    assert use["accelerator_hours"] > 0
    assert use["charge"] == pytest.approx(use["cpu_hours"] * 1.0 + use["accelerator_hours"] * 10.0)
    assert _sources(home, job_id) == [("toy", "toy")]  # (backend, source): the registry's booking


def test_plugin_backend_cancels_a_running_job(home: Path, tmp_path: Path, site: Path) -> None:
    """cancel reaches the plug-in's own cancel: the runner stops the command and records CANCELLED."""
    cfg = _config(tmp_path, f"toy:\n  spool: {tmp_path / 'spool'}\n")
    env = _env(site)
    r = run_cli("--config", str(cfg), "submit", "--json", "--cluster", "toyc", "--", "sleep", "300", env=env)
    assert r.returncode == 0, r.stderr
    job_id = json.loads(r.stdout)["id"]

    def state() -> str:
        r = run_cli("--config", str(cfg), "status", "--json", job_id, env=env)
        assert r.returncode == 0, r.stderr
        return str(json.loads(r.stdout)[0]["state"])

    deadline = time.monotonic() + 60
    while state() != "RUNNING":
        assert time.monotonic() < deadline, "the toy job never started"
    r = run_cli("--config", str(cfg), "cancel", job_id, env=env)
    assert r.returncode == 0, r.stderr
    r = run_cli("--config", str(cfg), "wait", job_id, env=env, timeout=120)
    assert r.returncode == 1 and state() == "CANCELLED", r.stdout + r.stderr


def _sources(home: Path, job_id: str) -> list[tuple[str, str]]:
    """(backend, source) of the ledger records of one suanli job (the SQLite ledger under SUANLI_HOME)."""
    from suanli.accounting.ledger import Ledger

    led = Ledger(None, home)
    try:
        with led.db.transaction() as tx:
            rows = tx.all("SELECT backend, source FROM usage_records WHERE job_id = ?", (job_id,))
    finally:
        led.close()
    return [(str(b), str(s)) for b, s in rows]


@pytest.mark.parametrize(("section", "where", "message"), [
    ("toy:\n  spool: /tmp/x\n  spoool: /tmp/y\n", ":5: toy.spoool:", "unknown key 'spoool'; allowed keys: spool"),
    ("toy:\n  spool: 3\n", ":4: toy.spool:", "3 is not a str"),
    ("toy: {}\n", ":3: toy:", "a toy cluster needs toy.spool"),
    ("", "toy.yaml:1: toy:", "a toy cluster needs toy.spool"),
    ("toy: [1]\n", ":3: toy:", "expected a mapping, got list"),
])
def test_plugin_backend_validates_its_own_config_section(home: Path, tmp_path: Path, site: Path, section: str,
                                                         where: str, message: str) -> None:
    """The plug-in's section is checked by the plug-in (declared keys and types, then its own rule that
    spool is required): a one-line exit-2 error with file:line, as for every built-in key."""
    cfg = _config(tmp_path, section)
    r = run_cli("--config", str(cfg), "clusters", env=_env(site))
    assert r.returncode == 2, r.stdout + r.stderr
    (line,) = r.stderr.strip().splitlines()
    assert where in line and message in line, line


def test_a_backend_section_is_only_accepted_for_the_clusters_own_backend(home: Path, tmp_path: Path,
                                                                        site: Path) -> None:
    """``toy:`` in a local cluster's file is still an unknown key (each cluster owns one backend section),
    and without the plug-in installed ``backend: toy`` names the valid backends."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text("name: c\nbackend: local\ntoy: {spool: /tmp/x}\npartitions: [{name: p}]\n")
    r = run_cli("--config", str(cfg), "clusters", env=_env(site))
    assert r.returncode == 2 and "c.yaml:3: toy: unknown key 'toy'" in r.stderr, r.stderr
    cfg = _config(tmp_path, "toy: {spool: /tmp/x}\n")
    r = run_cli("--config", str(cfg), "clusters")
    assert r.returncode == 2 and "toy.yaml:2: backend: 'toy' is not a backend" in r.stderr, r.stderr


def test_usage_source_comes_from_the_backend_class() -> None:
    """Accounts.finished books by ``Backend.usage_source``: sacct for Slurm, the registry for everything
    else, including a backend that can no longer be loaded."""
    from suanli.compute.backends import usage_source
    from suanli.compute.base import Backend

    assert Backend.usage_source == "registry"
    assert usage_source("slurm") == "sacct"
    assert (usage_source("local"), usage_source("ray"), usage_source("gone")) == ("registry",) * 3


SLURMLIKE = """
from suanli.compute.slurm.backend import SlurmBackend


class SlurmLike(SlurmBackend):
    \"\"\"A site's own Slurm backend, registered under another name: it keeps Slurm's usage source.\"\"\"

    name = "slurmlike"
"""


@pytest.mark.slurm
def test_a_plugin_backend_that_declares_sacct_is_booked_from_sacct(slurm: Any, slurm_conf: str, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Booking follows ``usage_source``, not the backend's name: a plug-in built on the Slurm backend is booked
    from sacct (the old ``backend != "slurm"`` test booked it from the registry, without TotalCPU)."""
    plug = tmp_path / "plug"
    info = plug / "slurmlike-0.1.dist-info"
    info.mkdir(parents=True)
    (plug / "slurmlike.py").write_text(SLURMLIKE)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: slurmlike\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[suanli.backends]\nslurmlike = slurmlike:SlurmLike\n")
    monkeypatch.syspath_prepend(str(plug))
    (Path(os.environ["SUANLI_CONFIG"]) / "slurmlike.yaml").write_text(
        f"name: slurmlike\nbackend: slurmlike\ndefault_account: acct-a\nslurm: {{conf: {slurm_conf}}}\n"
        "partitions:\n  - {name: debug, nodes: 1, cpus_per_node: 8}\n"
    )
    job = slurm.submit(["sleep", "1"], time="5m", cluster="slurmlike")
    assert job.wait(timeout=120) is JobState.COMPLETED
    (row,) = slurm.store.query(ids=[job.id])
    deadline = time.monotonic() + 60
    while not _sources(slurm.store.root, job.id):  # slurmdbd may list the end a moment after the job ends
        assert time.monotonic() < deadline, "the job was never booked"
        slurm.accounts.finished([row])
        time.sleep(0.5)
    assert _sources(slurm.store.root, job.id) == [("slurm", "sacct")]
