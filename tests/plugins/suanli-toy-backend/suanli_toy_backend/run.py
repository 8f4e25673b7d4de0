"""The toy backend's runner: run one command detached, keeping its state file current (standard library only).

Usage: python run.py LAUNCH_JSON STATE_JSON
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def _write(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def main(launch_file: str, state_file: str) -> int:
    launch = json.loads(Path(launch_file).read_text())
    state_path = Path(state_file)
    state: dict[str, Any] = json.loads(state_path.read_text())
    child: subprocess.Popen[bytes] | None = None
    cancelled = False

    def on_term(signum: int, frame: object) -> None:
        nonlocal cancelled
        cancelled = True
        if child is not None:
            child.terminate()

    signal.signal(signal.SIGTERM, on_term)
    with open(launch["stdout"], "ab") as out, open(launch["stderr"], "ab") as err:
        try:
            child = subprocess.Popen(launch["argv"], cwd=launch["cwd"], env={**os.environ, **launch["env"]},
                                     stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        except OSError as exc:
            now = time.time()
            _write(state_path, {**state, "state": "FAILED", "reason": f"cannot start: {exc.strerror}",
                                "exit_code": 127, "started_at": now, "ended_at": now})
            return 0
        state.update(state="RUNNING", started_at=time.time(), pid=child.pid)
        _write(state_path, state)
        if cancelled:
            child.terminate()
        code = child.wait()
    final = "CANCELLED" if cancelled else ("COMPLETED" if code == 0 else "FAILED")
    _write(state_path, {**state, "state": final, "exit_code": code, "ended_at": time.time()})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
