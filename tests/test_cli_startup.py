"""The CLI's start-up shortcuts: `suanli --help` from a cache of argparse's own text, `--version` without a
parser, the exit that skips Python's teardown, and parsed YAML files kept in the user's cache. Each must give
exactly what the slow path gives."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import suanli
from suanli import cache
from suanli.cli import entry
from suanli.errors import ConfigError
from suanli.yamlfile import load_yaml

SCRIPT = Path(sys.executable).with_name("suanli")


def _run(argv: list[str], tmp: Path, columns: int = 80, extra: dict[str, str] | None = None
         ) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp / "cache"), "COLUMNS": str(columns), **(extra or {})}
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60)


@pytest.mark.parametrize("columns", [52, 80, 200])
def test_help_is_argparse_text_from_cache_or_not(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 columns: int) -> None:
    monkeypatch.setenv("COLUMNS", str(columns))
    from suanli.cli.main import run_parser

    expected = run_parser().format_help()
    first = _run([str(SCRIPT), "--help"], tmp_path, columns)
    assert first.returncode == 0, first.stderr
    assert first.stdout == expected
    kept = list((tmp_path / "cache" / "suanli" / "help").iterdir())
    assert len(kept) == 1 and kept[0].name.endswith(f"-w{columns}.txt")
    second = _run([sys.executable, "-m", "suanli", "-h"], tmp_path, columns)
    assert second.returncode == 0 and second.stdout == expected


def test_help_reads_the_cache_and_its_key_follows_width_and_sources(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    path = entry.help_cache_path(80)
    assert path is not None
    cache.write(path, "cached text\n")
    assert _run([str(SCRIPT), "--help"], tmp_path).stdout == "cached text\n"  # it is what is printed
    assert entry.help_cache_path(81) != path
    monkeypatch.setattr(entry, "_HELP_SOURCES", ("main.py", "commands.py"))  # another source: another key
    assert entry.help_cache_path(80) != path


def test_help_without_a_writable_cache(tmp_path: Path) -> None:
    (tmp_path / "cache").write_text("a file where the cache folder would go")
    r = _run([str(SCRIPT), "--help"], tmp_path)
    assert r.returncode == 0 and r.stdout.startswith("usage: suanli") and not r.stderr


def test_version_is_the_package_version(tmp_path: Path) -> None:
    for argv in ([str(SCRIPT), "--version"], [sys.executable, "-m", "suanli", "--version"]):
        r = _run(argv, tmp_path)
        assert (r.returncode, r.stdout) == (0, f"suanli {suanli.__version__}\n")
    from suanli.cli.main import run_parser

    with pytest.raises(SystemExit):
        run_parser().parse_args(["--version"])  # the full parser says the same (it said 0.1.0 before)


def test_fast_exit_keeps_codes_output_and_atexit(tmp_path: Path) -> None:
    code = ("import atexit, sys\n"
            "atexit.register(lambda: print('atexit ran', flush=True))\n"
            "sys.argv = ['suanli'] + sys.argv[1:]\n"
            "from suanli.cli.entry import run\n"
            "print('x' * 100000)\n"  # more than a pipe buffer: it must all be flushed
            "run()\n")
    env = {"SUANLI_HOME": str(tmp_path / "h"), "HOME": str(tmp_path)}
    ok = _run([sys.executable, "-c", code, "--version"], tmp_path, extra=env)
    assert ok.returncode == 0
    assert ok.stdout == "x" * 100000 + f"\nsuanli {suanli.__version__}\natexit ran\n"
    bad = _run([sys.executable, "-c", code, "status", "--no-such-flag"], tmp_path, extra=env)
    assert bad.returncode == 2 and "unrecognized arguments: --no-such-flag" in bad.stderr
    missing = _run([sys.executable, "-c", code, "status", "nosuchjob"], tmp_path, extra=env)
    assert missing.returncode == 2 and "no job 'nosuchjob'" in missing.stderr


def test_a_running_thread_gets_the_full_exit(tmp_path: Path) -> None:
    """A thread still working when the command returns is waited for, as Python's own exit does."""
    code = ("import sys, threading\n"
            "t = threading.Thread(target=lambda: print('thread read', sys.stdin.readline().strip(), flush=True))\n"
            "t.start()\n"
            "sys.argv = ['suanli', '--version']\n"
            "from suanli.cli.entry import run\n"
            "run()\n")
    p = subprocess.Popen([sys.executable, "-u", "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         text=True, env={**os.environ, "HOME": str(tmp_path)})
    assert p.stdout is not None and p.stdin is not None
    try:
        assert p.stdout.readline() == f"suanli {suanli.__version__}\n"  # the command is done; the thread waits
        p.stdin.write("go\n")
        p.stdin.close()
        assert p.stdout.read() == "thread read go\n"
        assert p.wait(timeout=30) == 0
    finally:
        p.kill()


# ---------------------------------------------------------------- parsed YAML kept in the cache
def _aged(path: Path, text: str) -> Path:
    """A file written ``text``, dated a minute ago (a file younger than two seconds is never kept)."""
    path.write_text(text)
    old = time.time() - 60
    os.utime(path, (old, old))
    return path


def test_yaml_is_kept_and_read_back_without_pyyaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    f = _aged(tmp_path / "c.yaml", "name: x\npartitions:\n  - {name: debug, nodes: 2}\nmode: 0755\n")
    parsed = load_yaml(str(f))
    assert len(list((tmp_path / "cache" / "suanli" / "yaml").iterdir())) == 1
    monkeypatch.setitem(sys.modules, "yaml", None)  # any import of PyYAML now fails
    again = load_yaml(str(f))
    assert (again.data, again.lines, again.raw) == (parsed.data, parsed.lines, parsed.raw)
    assert again.raw[("mode",)] == "0755" and again.line(("partitions", 0, "nodes")) == 3


def test_yaml_cache_follows_edits_and_refuses_what_it_cannot_trust(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    f = _aged(tmp_path / "c.yaml", "a: 1\n")
    assert load_yaml(str(f)).data == {"a": 1}
    _aged(f, "a: 2\n")  # same size, new time
    assert load_yaml(str(f)).data == {"a": 2}
    f.write_text("a: 3\n")  # just written: parsed, not kept
    kept = next((tmp_path / "cache" / "suanli" / "yaml").iterdir())
    before = kept.read_bytes()
    assert load_yaml(str(f)).data == {"a": 3} and kept.read_bytes() == before
    # An entry that is not this user's, or is damaged, is ignored.
    _aged(f, "a: 4\n")
    load_yaml(str(f))
    kept.write_bytes(b"\x00garbage")
    assert load_yaml(str(f)).data == {"a": 4}
    if os.getuid() == 0:
        os.chown(kept, 12345, 12345)
        assert cache.read(str(kept), binary=True) is None
    # Values marshal cannot hold (a YAML date) are parsed every time.
    d = _aged(tmp_path / "d.yaml", "when: 2026-11-30\n")
    assert str(load_yaml(str(d)).data["when"]) == "2026-11-30"
    assert str(load_yaml(str(d)).data["when"]) == "2026-11-30"


def test_yaml_errors_read_the_same_from_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A config whose values are wrong fails with the same file:line from a kept parse."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    f = _aged(tmp_path / "c.yaml", "name: x\nbackend: slurm\npartitions:\n  - {name: debug, nodes: many}\n")
    from suanli.compute.config import load_configs

    cfg = tmp_path / "cfgdir"
    cfg.mkdir()
    target = cfg / "x.yaml"
    target.write_text(f.read_text())
    old = time.time() - 60
    os.utime(target, (old, old))
    messages = []
    for _ in range(2):
        with pytest.raises(ConfigError) as exc:
            load_configs(str(cfg)).cluster("x")
        messages.append(str(exc.value))
    assert messages[0] == messages[1] and f"{target}:4" in messages[0]
    assert len(list((tmp_path / "cache" / "suanli" / "yaml").iterdir())) == 1


def test_cache_trims_itself(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cache, "MAX_ENTRIES", 10)
    folder = tmp_path / "k"
    for i in range(25):
        cache.write(str(folder / f"e{i}"), f"{i}")
    names = os.listdir(folder)
    assert len(names) <= 10 and "e24" in names
