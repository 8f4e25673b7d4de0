"""`suanli top` in a real terminal: tmux (its own server socket), send-keys and capture-pane."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import run_cli, wait_until
from test_portal import submit

TMUX = shutil.which("tmux")


@pytest.fixture
def tmux(home: Path) -> Iterator[list[str]]:
    if TMUX is None:
        if os.environ.get("CI") == "true":
            pytest.fail("no tmux: apt-get install tmux (scripts/install.sh does); under CI a failure, not a skip")
        pytest.skip("no tmux: apt-get install tmux")
    base = [TMUX, "-L", f"suanli-top-{os.getpid()}-{time.monotonic_ns()}", "-f", "/dev/null"]
    yield base
    subprocess.run([*base, "kill-server"], capture_output=True, timeout=10)


def pane(base: list[str]) -> str:
    r = subprocess.run([*base, "capture-pane", "-p", "-t", "top"], capture_output=True, text=True, timeout=10)
    return r.stdout if r.returncode == 0 else ""


def test_top_shows_jobs_and_the_quota_bar_refreshes_in_place_and_q_quits(home: Path, tmux: list[str]) -> None:
    done = submit("-A", "lab", "--name", "finished", "--", "true")
    assert run_cli("wait", "--timeout", "60", done).returncode == 0
    q = run_cli("quota", "set", "-A", "lab", "--cpu-hours", "10")
    assert q.returncode == 0, q.stderr
    job = submit("-A", "lab", "--time", "1h", "--name", "train\x1b[2J", "--", "sleep", "300")
    env = ["-e", f"SUANLI_HOME={home}", "-e", f"PATH={os.environ['PATH']}"]
    cmd = [sys.executable, "-m", "suanli", "top", "--interval", "0.3", "-A", "lab"]
    subprocess.run([*tmux, "new-session", "-d", "-s", "top", "-x", "150", "-y", "30", *env, *cmd], check=True,
                   cwd=os.getcwd(), timeout=30)
    screen = wait_until(lambda: (s := pane(tmux)) and job in s and "RUNNING" in s and s, "top to show the job",
                        timeout=60)
    assert done in screen and "COMPLETED" in screen and "train?[2J" in screen  # the escape is shown, not run
    assert "quota lab" in screen and "cpu-hours: [" in screen
    first = int(screen.split("refresh ")[1].split()[0])
    later = wait_until(lambda: (s := pane(tmux)) and int(s.split("refresh ")[1].split()[0]) > first + 1 and s,
                       "top to refresh", timeout=30)
    assert later.count("suanli top") == 1  # redrawn in place, not scrolled
    subprocess.run([*tmux, "send-keys", "-t", "top", "q"], check=True, timeout=10)

    def gone() -> bool:
        r = subprocess.run([*tmux, "has-session", "-t", "top"], capture_output=True, timeout=10)
        return r.returncode != 0

    wait_until(gone, "top to quit on q", timeout=20)
    assert run_cli("cancel", job).returncode == 0


def test_top_polls_each_cluster_once_per_refresh(client: Any) -> None:
    """Three open jobs on one cluster: every refresh is one status call to its backend."""
    from suanli.portal.top import Top

    ids = [submit("--", "sleep", "300") for _ in range(3)]
    backend = client.backend("local", "local")
    calls: list[int] = []
    real = backend.status_many

    def counted(refs: Any) -> Any:
        calls.append(len(refs))
        return real(refs)

    backend.status_many = counted
    out = open(os.devnull, "w")  # noqa: SIM115
    try:
        top = Top(client, 0.01, None, None, out=out)
        for n in range(1, 4):
            frame = top.frame()
            assert all(i in frame for i in ids)
            assert calls == [3] * n
    finally:
        out.close()
        assert run_cli("cancel", *ids).returncode == 0
