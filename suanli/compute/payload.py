"""What every backend needs to run Python inside a job: the pickled Function/Map payload and an interpreter
that can import suanli. Shared here because backends must not import each other."""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Any

from suanli.errors import UsageError
from suanli.jobs.spec import Function, Map

PAYLOAD = "payload.pkl"


def function_payload(w: Function | Map) -> bytes:
    """One payload for the whole job (a Map's items all in one file), with the submitter's sys.path so that
    functions pickled by reference (a script's or test folder's module) import inside the job."""
    import cloudpickle

    inner: dict[str, Any] = (
        {"kind": "function", "fn": w.fn, "args": w.args, "kwargs": dict(w.kwargs)}
        if isinstance(w, Function) else {"kind": "map", "fn": w.fn, "items": list(w.items)}
    )
    try:
        data = cloudpickle.dumps(inner)
    except Exception as exc:
        raise UsageError(f"function: cannot pickle {getattr(w.fn, '__name__', w.fn)!r} or its arguments: "
                         f"{exc}") from None
    return bytes(cloudpickle.dumps({"sys_path": [os.path.abspath(p) for p in sys.path], "data": data}))


def function_argv(job_dir: str | Path) -> list[str]:
    return [sys.executable, "-m", "suanli.runtime.function", str(job_dir)]


def suanli_pythonpath(env: dict[str, str] | None = None) -> dict[str, str]:
    """``{"PYTHONPATH": ...}`` naming the folder suanli was imported from, when it is not installed
    (a source checkout); empty when the job's interpreter finds suanli by itself."""
    root = _checkout_root()
    if root is None:
        return {}
    current = (env if env is not None else os.environ).get("PYTHONPATH", "")
    parts = [root] + [p for p in current.split(os.pathsep) if p and p != root]
    return {"PYTHONPATH": os.pathsep.join(parts)}


@functools.cache
def _checkout_root() -> str | None:
    """The folder suanli was imported from when it is not an installed package (resolved once per process: it
    does not change, and resolving site-packages took ~0.6 ms of every submission)."""
    import site

    root = str(Path(__file__).resolve().parents[2])
    installed = {str(Path(p).resolve()) for p in site.getsitepackages() + [site.getusersitepackages()]}
    return None if root in installed else root
