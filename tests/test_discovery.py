"""suanli/discovery.py: entry points and PSI/J descriptor names are read once and kept, and an install or removal
on sys.path is seen at once (real distributions written into a folder on sys.path, real importlib.metadata)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from suanli import discovery


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "site"
    folder.mkdir()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    # Only folders left alone for a while, and this one: a folder just written to (pytest's own, an edited
    # tests/) is rightly never kept, and the point here is what happens to this one.
    settled = [p for p in sys.path if p and os.path.isdir(p) and time.time() - os.stat(p).st_mtime > 10]
    monkeypatch.setattr(sys, "path", [*settled, str(folder)])
    monkeypatch.setattr(discovery, "_process", {})
    return folder


def install(site: Path, name: str, backends: dict[str, str]) -> None:
    """A distribution as pip leaves it: NAME-1.0.dist-info with METADATA and entry_points.txt."""
    info = site / f"{name}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[suanli.backends]\n" + "".join(f"{k} = {v}\n" for k, v in backends.items()))


def settle(path: Path, age_s: float) -> None:
    """Date a folder back, as if its last install were ``age_s`` seconds ago."""
    t = time.time() - age_s
    os.utime(path, (t, t))


def counted(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """One entry per time the installed distributions are read."""
    calls: list[int] = []
    real = discovery._read_groups

    def read() -> dict[str, list[tuple[str, str]]]:
        calls.append(1)
        return real()

    monkeypatch.setattr(discovery, "_read_groups", read)
    return calls


def test_same_answer_as_importlib(site: Path) -> None:
    from importlib.metadata import entry_points

    for group in discovery.GROUPS:
        assert discovery.entry_points(group) == {ep.name: ep.value for ep in entry_points(group=group)}
    with pytest.raises(ValueError, match="suanli.backends"):
        discovery.entry_points("other.group")


def test_kept_then_renewed_by_an_install(site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install(site, "toy_one", {"toyone": "toy_one:Backend"})
    settle(site, 60)
    calls = counted(monkeypatch)
    assert discovery.entry_points("suanli.backends")["toyone"] == "toy_one:Backend"
    monkeypatch.setattr(discovery, "_process", {})  # another process: the user's cache answers
    assert discovery.entry_points("suanli.backends")["toyone"] == "toy_one:Backend"
    assert len(calls) == 1
    install(site, "toy_two", {"toytwo": "toy_two:Backend"})
    settle(site, 30)  # changed since it was kept
    assert discovery.entry_points("suanli.backends")["toytwo"] == "toy_two:Backend"
    assert len(calls) == 2
    for f in (site / "toy_one-1.0.dist-info").iterdir():
        f.unlink()
    (site / "toy_one-1.0.dist-info").rmdir()
    settle(site, 20)
    assert "toyone" not in discovery.entry_points("suanli.backends")
    assert len(calls) == 3


def test_a_folder_being_installed_into_is_read_every_time(site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install(site, "toy_new", {"toynew": "toy_new:Backend"})  # modified just now
    calls = counted(monkeypatch)
    for _ in range(2):
        assert discovery.entry_points("suanli.backends")["toynew"] == "toy_new:Backend"
    assert len(calls) == 2
    assert not (site.parent / "cache" / "suanli" / "found").exists()


def test_psij_descriptor_names_follow_their_files(site: Path) -> None:
    from suanli.compute.psij.backend import _names

    folder = site / "psij-descriptors"
    folder.mkdir()
    desc = folder / "toy_descriptors.py"
    desc.write_text("__PSI_J_EXECUTORS__ = [Descriptor(name='toyexec', version='1', cls='x.Y')]\n")
    settle(desc, 60)
    settle(folder, 60)
    settle(site, 60)
    assert "toyexec" in (_names("executor") or set())
    desc.write_text("__PSI_J_EXECUTORS__ = [Descriptor(name='otherexec', version='1', cls='x.Y')]\n")
    settle(desc, 30)
    names = _names("executor") or set()
    assert "otherexec" in names and "toyexec" not in names
