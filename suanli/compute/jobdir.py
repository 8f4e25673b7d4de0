"""Readers of the small files a job writes into its own folder (start time, exit code): shared by the backends
whose scheduler does not report them, each read tolerating a file that is missing or half-written."""

from __future__ import annotations

from pathlib import Path


def float_file(path: Path) -> float | None:
    """The number in ``path``; None while it is missing or not yet a whole number."""
    try:
        return float(path.read_text())
    except (OSError, ValueError):
        return None


def mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None
