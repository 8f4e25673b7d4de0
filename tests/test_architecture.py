"""The layering rules of ARCHITECTURE.md, checked on the source: cli -> api -> compute / accounting ->
adapters / jobs; backends never import each other; the CLI's start-up path imports no heavy library."""

from __future__ import annotations

import argparse
import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_cli

PKG = Path(__file__).resolve().parents[1] / "suanli"
HEAVY = ("ray", "torch", "dask", "distributed", "submitit", "psycopg", "psycopg2", "mpi4py", "numpy")


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


def test_interop_is_a_top_layer_nothing_in_suanli_imports() -> None:
    """suanli.interop (PSI/J's executor) sits beside the CLI: it uses the public API, and no suanli module
    imports it (so psij is never loaded by suanli itself)."""
    for f in sorted(PKG.rglob("*.py")):
        if "interop" in f.relative_to(PKG).parts:
            bad = {m for m in imports_of(f) if m.startswith(("suanli.cli", "suanli.compute", "suanli.accounting"))}
            assert not bad, f"{f} imports {bad}"
            continue
        bad = {m for m in imports_of(f) if m.startswith("suanli.interop")}
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


def imported_by(*args: str) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """Run the CLI under ``-X importtime`` (in the current folder and environment) and name every module it
    imported."""
    r = subprocess.run([sys.executable, "-X", "importtime", "-m", "suanli", *args], capture_output=True,
                       text=True, timeout=60)
    return r, {line.split("|")[-1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")}


def test_help_imports_nothing_heavy() -> None:
    r, imported = imported_by("--help")
    assert r.returncode == 0
    web = ("starlette", "uvicorn", "jinja2", "prometheus_client", "selenium", "multipart", "anyio")  # the portal's
    heavy = {m for m in imported if m.split(".")[0] in HEAVY + web + ("yaml", "cloudpickle", "sqlite3")}
    assert not heavy, heavy


# ---------------------------------------------------------------- CLI start-up
def test_help_builds_no_verb_parser_and_imports_no_verb_module() -> None:
    """`suanli --help` lists the verbs from a table: no verb's module is loaded, nor logging, typing or shutil
    (argparse's formatter asks shutil only for the terminal width)."""
    r, imported = imported_by("--help")
    assert r.returncode == 0 and "accounting" in r.stdout and "completion" in r.stdout
    loaded = imported & {"suanli.cli.commands", "suanli.cli.accounting_cmd", "suanli.cli.ray_cmd", "logging",
                         "suanli.cli.portal_cmd", "suanli.portal",
                         "typing", "shutil", "suanli.api"}
    assert not loaded, loaded


@pytest.mark.parametrize("account", [[], ["-A", "lab"]], ids=["no-account", "account"])
def test_local_submit_imports_no_yaml_accounting_or_psycopg(home: Path, monkeypatch: pytest.MonkeyPatch,
                                                            account: list[str]) -> None:
    """The built-in local cluster needs no config file (no yaml), and with no ledger (none configured, no SQLite
    file yet) no quota can apply, account or not: no accounting package, let alone psycopg."""
    monkeypatch.delenv("SUANLI_LEDGER_URL", raising=False)
    r, imported = imported_by("submit", *account, "--", "true")
    assert r.returncode == 0, r.stderr
    job = r.stdout.split()[-1]
    loaded = {m for m in imported if m.split(".")[0] in ("yaml", "psycopg", "psycopg2", "secrets")
              or m == "suanli.accounting" or m.startswith("suanli.accounting.")}
    assert not loaded, loaded
    assert "suanli.api" in imported and "suanli.compute.local.backend" in imported  # it did submit, locally
    assert not (home / "ledger.db").exists()
    w = run_cli("wait", "--timeout", "60", job)
    assert w.returncode == 0, w.stdout + w.stderr


def test_lazy_verb_parsers_match_the_full_parser() -> None:
    """`main` builds only the given verb's parser; its top-level help and each verb's parser must be those of
    the full parser (which shell completion reads), so the static help table cannot drift."""
    from suanli.cli.main import VERB_HELP, build_parser, run_parser

    full = build_parser()
    assert run_parser().format_help() == full.format_help()
    verbs = _verbs(full)
    assert list(verbs.choices) == list(VERB_HELP)
    minimal = {"logs": ["j1"], "cancel": ["j1"], "wait": ["j1"], "completion": ["bash"], "ray": ["down"]}
    for name, sub in verbs.choices.items():
        lazy = run_parser()
        args = lazy.parse_args([name, *minimal.get(name, [])])
        assert args.verb == name
        built = [n for n, p in _verbs(lazy).choices.items() if p is not None]
        assert built == [name]  # only the verb given was built
        assert _verbs(lazy).choices[name].format_help() == sub.format_help(), name


def _verbs(parser: argparse.ArgumentParser) -> argparse._SubParsersAction:  # type: ignore[type-arg]
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))


def test_new_ids_keep_their_alphabet_and_first_letter_rule() -> None:
    """Ids come from os.urandom now (no `secrets` import): eight characters of the same alphabet, the first a
    letter (never a Slurm job number), every character reachable."""
    from suanli.compute.submitter import _ID_ALPHABET, new_id

    ids = [new_id() for _ in range(3000)]
    assert len(set(ids)) == len(ids)
    assert all(len(i) == 8 and set(i) <= set(_ID_ALPHABET) and i[0] in _ID_ALPHABET[:23] for i in ids)
    assert {i[0] for i in ids} == set(_ID_ALPHABET[:23])
    assert {c for i in ids for c in i[1:]} == set(_ID_ALPHABET)


def test_current_user_matches_getpass(monkeypatch: pytest.MonkeyPatch) -> None:
    import getpass

    from suanli.compute.base import current_user

    assert current_user() == getpass.getuser()
    for var in ("LOGNAME", "USER", "LNAME", "USERNAME"):
        monkeypatch.delenv(var, raising=False)
    assert current_user() == getpass.getuser()  # from the password database
    monkeypatch.setenv("USER", "someone")
    assert current_user() == getpass.getuser() == "someone"
    assert os.uname().nodename == __import__("socket").gethostname()
