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


def bench_cluster(tmp: str, cluster_yaml: str, settings: str = "") -> None:
    """Point this process at a throwaway SUANLI_HOME and one cluster named ``bench`` (the default), and work
    from ``tmp``: the setup every backend benchmark shares."""
    import os
    from pathlib import Path

    os.environ["SUANLI_HOME"] = str(Path(tmp) / "home")
    cfg = Path(tmp) / "cfg"
    cfg.mkdir()
    (cfg / "bench.yaml").write_text("name: bench\n" + cluster_yaml)
    (cfg / "settings.yaml").write_text("default_cluster: bench\n" + settings)
    os.environ["SUANLI_CONFIG"] = str(cfg)
    os.chdir(tmp)


def pg_admin(pg: str, sql: str) -> None:
    """One statement outside a transaction (CREATE/DROP DATABASE), with the driver the ledger uses."""
    import psycopg2

    conn = psycopg2.connect(pg)
    try:
        conn.autocommit = True
        conn.cursor().execute(sql)
    finally:
        conn.close()
