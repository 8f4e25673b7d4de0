"""Local backend overhead: submit + wait of `true` against `subprocess.run(["true"])`, in one process and as
whole CLI processes (`suanli submit --wait -- true` against `true`), measured in the same run.

    .venv/bin/python bench/bench_local.py [--repeat 15]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import median_s, report, run_quiet  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=15)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["SUANLI_HOME"] = str(Path(tmp) / "home")
        os.chdir(tmp)
        from suanli.api import Client

        client = Client()

        def suanli_true() -> None:
            job = client.submit(["true"])
            state = job.wait(timeout=60)
            assert state.value == "COMPLETED", state

        rows = [
            ('subprocess.run(["true"])', median_s(lambda: subprocess.run(["true"]), args.repeat)),
            ("suanli submit + wait of true (in-process)", median_s(suanli_true, args.repeat)),
        ]
        report(f"local backend, median of {args.repeat} runs", rows, 'subprocess.run(["true"])')
        exe = str(Path(sys.executable).with_name("suanli"))
        rows = [
            ("true (whole process)", median_s(run_quiet(["true"]), args.repeat)),
            ("suanli submit --wait -- true (whole process)", median_s(run_quiet([exe, "submit", "--wait", "--",
                                                                                  "true"]), args.repeat)),
        ]
        report("CLI, whole process", rows, "true (whole process)")


if __name__ == "__main__":
    main()
