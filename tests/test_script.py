"""Unit tests for suanli.compute.script: templates, and quoting that keeps user values away from the shell."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from suanli.compute.script import EnvRef, export_lines, join_argv, load_template, quote, render

BASH = shutil.which("bash")
needs_bash = pytest.mark.skipif(BASH is None, reason="bash is not installed")


def hostile_values(marker: Path) -> list[str]:
    m = str(marker)
    return [
        "plain",
        "",
        " ",
        "two words",
        "it's",
        "'",
        "''",
        '"',
        'say "hi"',
        "'\"'\"'",
        f"$(touch {m})",
        f"`touch {m}`",
        f"; touch {m}",
        f"&& touch {m}",
        f"| touch {m}",
        f"' ; touch {m} ; echo '",
        f'" ; touch {m} ; echo "',
        f"\ntouch {m}\n",
        f"$(touch {m}",
        f"${{IFS}}touch${{IFS}}{m}",
        "$HOME ${HOME} $((6*7)) $$ $? $0 $1 $@ $*",
        "\\",
        "\\n\\t\\'",
        "back\\slash'quote",
        "*",
        "?",
        "[a-z]*",
        "~",
        "~root",
        "!!",
        "!$",
        "#not a comment",
        "-n",
        "-e",
        "--",
        "a\tb",
        "line1\nline2\n",
        "\n\n",
        "trailing newline\n",
        "carriage\rreturn",
        "bell\x07 esc\x1b[31m",
        "ünïcödé 算力 🚀 Ελληνικά",
        "\u00a0nbsp\u2028sep",
        "{a,b}",
        "a=b",
        "> /dev/null",
        f"< {m}",
        "%s %d %%",
        "EOF",
    ]


def run_bash(script: str, cwd: Path) -> subprocess.CompletedProcess[bytes]:
    path = cwd / "script.sh"
    path.write_text(script, encoding="utf-8")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(cwd), "LC_ALL": "C"}
    assert BASH is not None
    return subprocess.run([BASH, "--noprofile", "--norc", str(path)], cwd=cwd, env=env, capture_output=True,
                          timeout=60)


def nul_split(data: bytes) -> list[bytes]:
    assert data.endswith(b"\0") or data == b""
    return data.split(b"\0")[:-1]


# ---------------------------------------------------------------- render
def test_render_fills_every_placeholder() -> None:
    out = render("#!/bin/bash\n@@EXPORTS@@\ncd @@WORKDIR@@\n@@LAUNCH@@ @@WORKDIR@@\n",
                 {"EXPORTS": "export A=1", "WORKDIR": "'/tmp/x y'", "LAUNCH": "exec true"})
    assert out == "#!/bin/bash\nexport A=1\ncd '/tmp/x y'\nexec true '/tmp/x y'\n"
    assert "@@" not in out


def test_render_missing_placeholder_raises_key_error() -> None:
    with pytest.raises(KeyError) as exc:
        render("@@A@@ @@ZETA@@ @@BETA@@", {"A": "a"})
    msg = str(exc.value)
    assert "BETA, ZETA" in msg
    assert "'A'" not in msg and " A," not in msg


def test_render_extra_values_are_ignored_and_text_is_kept() -> None:
    assert render("no placeholders @ @@ a@@b", {"X": "unused"}) == "no placeholders @ @@ a@@b"


def test_render_values_are_inserted_verbatim() -> None:
    # a value that looks like a placeholder or a regex back-reference is not expanded again
    out = render("@@A@@|@@B@@", {"A": "@@B@@ \\1 \\g<0> $1", "B": "b"})
    assert out == "@@B@@ \\1 \\g<0> $1|b"


def test_local_template_loads_and_renders() -> None:
    text = load_template("suanli.compute.local", "templates/job.sh.tmpl")
    assert text.startswith("#!/bin/bash")
    with pytest.raises(KeyError):
        render(text, {})
    out = render(text, {"EXPORTS": "E", "SETUP": "S", "WORKDIR": "W", "LAUNCH": "L"})
    assert "@@" not in out


# ---------------------------------------------------------------- quote, export_lines, join_argv (no shell)
def test_quote_is_one_word_for_safe_and_unsafe_values() -> None:
    assert quote("abc") == "abc"
    assert quote("") == "''"
    q = quote("a b'c")
    assert q.startswith("'") and q.endswith("'")
    assert "a b" in q


def test_export_lines_shape() -> None:
    out = export_lines({"A": "1", "B_2": "two words"})
    assert out.splitlines() == ["export A=1", "export B_2='two words'"]
    assert export_lines({}) == ""


def test_join_argv_shape_and_env_ref() -> None:
    assert join_argv(["echo", "a b", EnvRef("SUANLI_TASK")]) == "echo 'a b' \"${SUANLI_TASK}\""
    assert join_argv([]) == ""


@pytest.mark.parametrize("bad", ["lower", "1ABC", "A-B", "A B", "", "$(x)"])
def test_env_ref_refuses_bad_names(bad: str) -> None:
    with pytest.raises(ValueError, match="bad variable name"):
        EnvRef(bad)


# ---------------------------------------------------------------- the real shell
@needs_bash
def test_hostile_values_reach_bash_byte_for_byte(tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    values = hostile_values(marker)
    env = {f"V{i}": v for i, v in enumerate(values)}
    out_env = tmp_path / "env.out"
    out_argv = tmp_path / "argv.out"
    script = "\n".join([
        "#!/bin/bash",
        "set -u",
        export_lines(env),
        # the test's own reading side, double-quoted so bash does no splitting or globbing
        "printf '%s\\0' " + " ".join(f'"${k}"' for k in env) + f" > {quote(str(out_env))}",
        "printf '%s\\0' " + join_argv(values) + f" > {quote(str(out_argv))}",
        "",
    ])
    result = run_bash(script, tmp_path)
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    assert not marker.exists(), "a value was executed by the shell"
    expected = [v.encode("utf-8") for v in values]
    assert nul_split(out_env.read_bytes()) == expected
    assert nul_split(out_argv.read_bytes()) == expected
    assert result.stderr == b""


@needs_bash
def test_hostile_values_reach_an_exec_d_program(tmp_path: Path) -> None:
    """The way the local backend launches: exported env plus ``exec`` + join_argv, read back by Python."""
    marker = tmp_path / "PWNED"
    values = hostile_values(marker)
    env = {f"V{i}": v for i, v in enumerate(values)}
    env["SUANLI_SELF"] = "$(touch " + str(marker) + ") `id` '\"x"
    out = tmp_path / "seen.json"
    code = (
        "import json, os, sys\n"
        "data = {'argv': [os.fsencode(a).hex() for a in sys.argv[1:]],\n"
        "        'env': {k.decode(): v.hex() for k, v in os.environb.items()\n"
        "                if k.startswith(b'V') or k == b'SUANLI_SELF'}}\n"
        "open(os.environ['OUT_FILE'], 'w').write(json.dumps(data))\n"
    )
    env["OUT_FILE"] = str(out)
    workdir = tmp_path / "work dir 'q' $(touch x) `y`"
    workdir.mkdir()
    text = render(
        load_template("suanli.compute.local", "templates/job.sh.tmpl"),
        {
            "EXPORTS": export_lines(env),
            "SETUP": ":",
            "WORKDIR": quote(str(workdir)),
            "LAUNCH": "exec " + join_argv([sys.executable, "-c", code, *values, EnvRef("SUANLI_SELF")]),
        },
    )
    result = run_bash(text, tmp_path)
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    assert not marker.exists()
    assert not (tmp_path / "x").exists() and not (workdir / "x").exists()
    seen = json.loads(out.read_text())
    got_argv = [bytes.fromhex(h) for h in seen["argv"]]
    assert got_argv == [v.encode("utf-8") for v in values] + [env["SUANLI_SELF"].encode("utf-8")]
    got_env = {k: bytes.fromhex(h) for k, h in seen["env"].items()}
    wanted = {k: v for k, v in env.items() if k.startswith("V") or k == "SUANLI_SELF"}
    assert got_env == {k: v.encode("utf-8") for k, v in wanted.items()}


@needs_bash
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.text(alphabet=st.characters(blacklist_characters="\x00", blacklist_categories=["Cs"])),
                min_size=1, max_size=5))
def test_any_text_survives_quoting(tmp_path: Path, values: list[str]) -> None:
    marker_free = tmp_path / "argv.out"
    script = "printf '%s\\0' " + join_argv(values) + f" > {quote(str(marker_free))}\n"
    result = run_bash(script, tmp_path)
    assert result.returncode == 0, result.stderr
    assert nul_split(marker_free.read_bytes()) == [v.encode("utf-8") for v in values]


def test_placeholders_with_digits_are_filled_and_malformed_ones_refused() -> None:
    assert render("a @@FORWARD_USR2@@ b", {"FORWARD_USR2": "1"}) == "a 1 b"
    with pytest.raises(KeyError):
        render("a @@lower@@ b", {})
