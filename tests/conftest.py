"""Shared fixtures: every test gets its own SUANLI_HOME and runs outside the repository's cluster_configs/."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]


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
