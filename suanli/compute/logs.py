"""Following log files as they grow (``suanli logs -f``, ``submit --follow``, ``Job.follow``)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path


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
