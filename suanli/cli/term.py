"""The terminal's width, found as argparse finds it through shutil, without importing shutil (and the archive
modules it loads): `suanli --help` and argparse's formatter both ask."""

from __future__ import annotations

import os
import sys


def columns() -> int:
    """$COLUMNS, else the terminal's width, else 80."""
    try:
        n = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        n = 0
    if n <= 0 and sys.__stdout__ is not None:
        try:
            n = os.get_terminal_size(sys.__stdout__.fileno()).columns
        except (AttributeError, ValueError, OSError):
            n = 0
    return n or 80
