"""Runs a pickled Function (or one item of a Map) inside a job and writes its outcome next to the payload.

``python -m suanli.runtime.function JOB_DIR``; the array task comes from ``SUANLI_ARRAY_TASK_ID``. The outcome
file holds ``("ok", value)`` or ``("error", exception or None, formatted traceback, repr)``; the submitting side
re-raises the exception with the remote traceback as its cause.
"""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path
from typing import Any


def outcome_path(job_dir: Path, task: str | None) -> Path:
    return job_dir / ("result.pkl" if task is None else f"result-{task}.pkl")


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def main(argv: list[str]) -> int:
    import cloudpickle

    if len(argv) != 2:
        print("usage: python -m suanli.runtime.function JOB_DIR", file=sys.stderr)
        return 2
    job_dir = Path(argv[1])
    task = os.environ.get("SUANLI_ARRAY_TASK_ID") or None
    with open(job_dir / "payload.pkl", "rb") as fh:
        outer: dict[str, Any] = cloudpickle.load(fh)
    # Modules the submitter could import by path (its script folder, a test folder) become importable here.
    sys.path.extend(p for p in outer["sys_path"] if p not in sys.path)
    try:
        payload: dict[str, Any] = cloudpickle.loads(outer["data"])
        fn = payload["fn"]
        if payload["kind"] == "map":
            if task is None:
                raise RuntimeError("a map payload needs SUANLI_ARRAY_TASK_ID")
            value = fn(payload["items"][int(task)])
        else:
            value = fn(*payload["args"], **payload["kwargs"])
        data = cloudpickle.dumps(("ok", value))
    except BaseException as exc:  # the job's own failure, reported to the submitter
        tb = traceback.format_exc()
        sys.stderr.write(tb)
        try:
            data = cloudpickle.dumps(("error", exc, tb, repr(exc)))
        except Exception:
            data = cloudpickle.dumps(("error", None, tb, repr(exc)))
        _write(outcome_path(job_dir, task), data)
        sys.stderr.flush()
        return 1
    _write(outcome_path(job_dir, task), data)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
