"""The layering rules of ARCHITECTURE.md, checked on the source: cli -> api -> compute / accounting ->
adapters / jobs; backends never import each other; the CLI's start-up path imports no heavy library."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "suanli"
HEAVY = ("ray", "torch", "dask", "distributed", "submitit", "psycopg", "mpi4py", "numpy")


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return out


def files_under(sub: str) -> list[Path]:
    return sorted((PKG / sub).rglob("*.py"))


def test_jobs_and_adapters_import_no_backend_accounting_or_cli() -> None:
    for layer in ("jobs", "adapters"):
        for f in files_under(layer):
            bad = {m for m in imports_of(f) if m.startswith(("suanli.compute", "suanli.accounting", "suanli.cli",
                                                             "suanli.api"))}
            assert not bad, f"{f} imports {bad}"


def test_compute_and_accounting_do_not_import_upwards_or_sideways() -> None:
    for f in files_under("compute"):
        bad = {m for m in imports_of(f) if m.startswith(("suanli.cli", "suanli.api", "suanli.accounting"))}
        assert not bad, f"{f} imports {bad}"
    for f in files_under("accounting"):
        bad = {m for m in imports_of(f) if m.startswith(("suanli.cli", "suanli.api", "suanli.compute"))}
        assert not bad, f"{f} imports {bad}"


def test_a_backend_never_imports_another_backend() -> None:
    backends = [d for d in (PKG / "compute").iterdir() if d.is_dir() and (d / "__init__.py").exists()]
    assert backends, "no backend folders found"
    for d in backends:
        others = {f"suanli.compute.{o.name}" for o in backends if o != d}
        for f in d.rglob("*.py"):
            bad = {m for m in imports_of(f) if any(m == o or m.startswith(o + ".") for o in others)}
            assert not bad, f"{f} imports {bad}"


def test_no_heavy_import_at_module_top_level_anywhere_on_the_cli_path() -> None:
    for f in sorted(PKG.rglob("*.py")):
        if "runtime" in f.parts:
            continue  # runs inside jobs, where torch is the point
        tree = ast.parse(f.read_text())
        for node in tree.body:
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for n in names:
                assert n.split(".")[0] not in HEAVY, f"{f}: top-level import of {n}"


def test_help_imports_nothing_heavy() -> None:
    r = subprocess.run([sys.executable, "-X", "importtime", "-m", "suanli", "--help"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0
    imported = {line.split("|")[-1].strip() for line in r.stderr.splitlines() if "|" in line}
    heavy = {m for m in imported if m.split(".")[0] in HEAVY + ("yaml", "cloudpickle", "sqlite3")}
    assert not heavy, heavy
