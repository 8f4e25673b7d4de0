"""Timing helpers shared by the benchmarks: medians of whole-process runs, printed as a table with ratios."""

from __future__ import annotations

import statistics
import subprocess
import time
from collections.abc import Callable, Sequence


def median_s(fn: Callable[[], object], repeat: int, warmup: int = 2,
             after: Callable[[], object] | None = None) -> float:
    """Median wall time of ``fn``; ``after`` runs untimed after each call (to clean up what it made)."""
    for _ in range(warmup):
        fn()
        if after:
            after()
    samples = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
        if after:
            after()
    return statistics.median(samples)


def run_quiet(argv: Sequence[str], env: dict[str, str] | None = None) -> Callable[[], object]:
    def go() -> object:
        r = subprocess.run(list(argv), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        if r.returncode != 0:
            raise SystemExit(f"benchmark command failed ({r.returncode}): {' '.join(argv)}")
        return r

    return go


def report(title: str, rows: list[tuple[str, float]], baseline: str) -> None:
    base = dict(rows)[baseline]
    print(f"\n{title}")
    print(f"{'what':<48} {'median ms':>10} {'x ' + baseline[:24]:>28}")
    for name, secs in rows:
        print(f"{name:<48} {secs * 1000:>10.1f} {secs / base:>28.2f}")
