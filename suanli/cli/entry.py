"""The `suanli` command's first module. `suanli --help` and `--version` are answered here without importing
argparse (with `re`, gettext and textwrap it costs half again a bare Python start): the version is a constant,
and the top-level help is argparse's own text for this terminal width, rendered once and kept in the user's
cache, keyed by what it depends on. Every other command line goes to :func:`suanli.cli.main.main` untouched.

Only ``os`` and ``sys`` (both loaded by every Python start) are imported before that hand-over.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import NoReturn

#: The files whose text makes up the top-level help (with the version in the key): an edit renders it again.
_HELP_SOURCES = ("main.py",)


def help_cache_path(width: int) -> str | None:
    """Where the top-level help for ``width`` columns is kept; None when the sources cannot be read. The name
    holds the suanli and Python versions, each source's size and modification time and the width, so an edit,
    an upgrade or another terminal never reads a stale text."""
    from suanli.cache import cache_dir
    from suanli.version import __version__

    here = os.path.dirname(os.path.abspath(__file__))
    try:
        stamps = [os.stat(os.path.join(here, name)) for name in _HELP_SOURCES]
    except OSError:
        return None
    key = "-".join(f"{s.st_size}.{s.st_mtime_ns}" for s in stamps)
    return os.path.join(cache_dir("help"), f"{__version__}-{sys.implementation.cache_tag}-{key}-w{width}.txt")


def top_help(width: int) -> str:
    """The top-level help for ``width`` columns: from the cache, else from argparse (then kept)."""
    from suanli import cache

    path = help_cache_path(width)
    text = cache.read(path) if path is not None else None
    if isinstance(text, str) and text:
        return text
    from suanli.cli.main import run_parser

    text = run_parser().format_help()
    if path is not None:
        cache.write(path, text)
    return text


def main(argv: Sequence[str] | None = None) -> int:
    """The console entry point: the two answers that need no parser, else the full CLI."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args in (["--help"], ["-h"]):
        from suanli.cli.term import columns

        sys.stdout.write(top_help(columns()))
        return 0
    if args == ["--version"]:
        from suanli.version import __version__

        sys.stdout.write(f"suanli {__version__}\n")
        return 0
    from suanli.cli.main import main as run

    return run(args)


def run() -> NoReturn:
    """``suanli`` as a program (bin/suanli, ``python -m suanli``): the command server's child runs it when one
    can (``suanli/cli/client.py``), else :func:`main` here. Either way the process ends through :func:`finish`."""
    args = sys.argv[1:]
    if args not in (["--help"], ["-h"], ["--version"]):
        from suanli.cli.client import enabled, run_remote

        if enabled(args):
            remote = run_remote(args)
            if remote is not None:
                finish(remote)
    try:
        code = main()
    except SystemExit as exc:  # argparse's errors and --help of a verb
        if not isinstance(exc.code, int | None):
            raise
        code = exc.code or 0
    finish(code)


def finish(code: int, join_threads: bool = False) -> NoReturn:
    """End the process without Python's teardown of every module and object, which takes a tenth of a short
    command's time. What must happen at exit still does: output is flushed and the ``atexit`` functions run
    (logging's flush, finalizers of temporary folders, thread pools' joins). Another thread still running gets
    the usual full exit, or (``join_threads``, in a forked server child, which must not unwind into the server's
    loop) is waited for."""
    threading = sys.modules.get("threading")
    if threading is not None and threading.active_count() > 1:
        if not join_threads:
            sys.exit(code)
        for thread in threading.enumerate():
            if thread is not threading.current_thread() and not thread.daemon:
                thread.join()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (`suanli status | head`): nothing more to say
            pass
    import atexit

    atexit._run_exitfuncs()
    os._exit(code & 0xFF)
