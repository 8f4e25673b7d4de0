"""Following log files as they grow (``suanli logs -f``, ``submit --follow``, ``Job.follow``), and the
job's own stdio paths with Slurm's filename patterns expanded (standard library only: the local runner uses it)."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

_PATTERN = re.compile(r"%([%Aaj])")


def expand_stdio(pattern: str, job: str, task: int | None) -> str:
    """A stdin/stdout/stderr path with Slurm's ``%A`` (the array's job id), ``%a`` (the task index), ``%j``
    (the job id) and ``%%`` replaced, as Slurm replaces them (the spec admits no other pattern)."""
    values = {"%": "%", "A": job, "j": job, "a": "" if task is None else str(task)}
    return _PATTERN.sub(lambda m: values[m.group(1)], pattern)


def resolve_stdio(spec: Any) -> dict[str, str]:
    """The spec's stdin/stdout/stderr paths made absolute against its working directory (the job reads and
    writes them there, wherever it was submitted from), with ``~`` expanded; only those it names."""
    import os

    workdir = os.path.abspath(spec.workdir or os.getcwd())
    return {key: os.path.join(workdir, os.path.expanduser(getattr(spec, key)))
            for key in ("stdin", "stdout", "stderr") if getattr(spec, key) is not None}


def stdio_paths(layout: Mapping[str, Any], job: str, task: int | None) -> tuple[Path | None, Path | None]:
    """The stdout and stderr files a job's spec named (``layout["stdio"]``, written by the backend's plan), for
    one task; None where the spec named none (the logs are then in the job folder)."""
    stdio = layout.get("stdio") or {}
    out, err = stdio.get("stdout"), stdio.get("stderr")
    return (None if out is None else Path(expand_stdio(out, job, task)),
            None if err is None else Path(expand_stdio(err, job, task)))


def follow_files(paths: Sequence[Path], finished: Callable[[], bool], check_every: float = 1.0
                 ) -> Iterator[tuple[int, str]]:
    """Yield (file index, line) as lines are appended to any of the files; stop once ``finished()`` and
    nothing more is left. Bytes are split on newlines before decoding, so a character or a CRLF written in
    two pieces arrives whole; ``finished()`` (a scheduler call) runs at most every ``check_every`` seconds."""
    handles = []
    for p in paths:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.touch(exist_ok=True)
        handles.append(open(p, "rb"))  # noqa: SIM115 - closed below
    pending = [b"" for _ in paths]
    delay = 0.02
    last_check = 0.0
    try:
        while True:
            got = False
            for i, fh in enumerate(handles):
                chunk = fh.read()
                if chunk:
                    got = True
                    pending[i] += chunk
                    *lines, pending[i] = pending[i].split(b"\n")
                    for line in lines:
                        yield i, line.decode(errors="replace") + "\n"
            if got:
                delay = 0.02
                continue
            if time.monotonic() - last_check >= check_every:
                last_check = time.monotonic()
                if finished():
                    for i, fh in enumerate(handles):
                        rest = pending[i] + fh.read()
                        if rest:
                            for text_line in rest.decode(errors="replace").splitlines(keepends=True):
                                yield i, text_line
                    return
            time.sleep(delay)
            delay = min(delay * 2, 0.5)
    finally:
        for fh in handles:
            fh.close()
