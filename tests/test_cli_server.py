"""The command server (suanli/cli/server.py, client.py): a command handed to it behaves as the same command run
in its own process (output, exit code, environment, working folder, signals), and anything that could make it
differ keeps the server out. Every command here is the real CLI in a new process; a command counts as served
when the submitter the registry recorded is not the client's own pid (the server's child submitted it)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from suanli.compute.store import Store

#: The installed command (bin/suanli): its sys.path does not depend on the working folder, as `python -m`'s does
#: (a different sys.path is a different server, rightly: a module in the folder could shadow another).
SUANLI = str(Path(sys.executable).with_name("suanli"))

pytestmark = pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="the server needs pidfds (Linux >= 5.3)")


@pytest.fixture
def srv(home: Path) -> Iterator[Path]:
    """A server folder of this test's own (under /tmp, which another user can pass through, unlike pytest's
    folders); every server started in it is gone afterwards."""
    top = Path(tempfile.mkdtemp(prefix="suanli-srv-"))
    folder = top / "srv"
    yield folder
    shutil.rmtree(top, ignore_errors=True)  # a server whose socket is removed exits within ~2 s
    deadline = time.monotonic() + 20
    while server_pids(folder) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = server_pids(folder)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, "a server outlived the removal of its socket"


def on(folder: Path, **extra: str) -> dict[str, str]:
    return {"SUANLI_SERVER": "1", "SUANLI_SERVER_DIR": str(folder), "SUANLI_SERVER_IDLE": "120", **extra}


def cli(*args: str, env: dict[str, str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SUANLI, *args], env={**os.environ, **env}, cwd=cwd or os.getcwd(), capture_output=True,
                          text=True, timeout=120)


def the_server(folder: Path) -> int:
    """The one server left once a start-up race (two commands each starting one) has settled."""
    wait_for(lambda: len(server_pids(folder)) == 1, what=lambda: f"one server in {folder}: {server_pids(folder)}")
    return server_pids(folder)[0]


def server_pids(folder: Path) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(b"suanli.cli.server" in part for part in cmd) and any(str(folder).encode() in p for p in cmd):
            out.append(int(entry.name))
    # A served command is a fork of its server and shows the same command line: count servers only.
    return [pid for pid in out if parent(pid) not in out]


def parent(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(x) for x in text.split()]


def submit(env: dict[str, str], home: Path, *args: str, cwd: Path | None = None) -> tuple[str, bool]:
    """Submit through the CLI; the job id, and whether the server's child submitted it."""
    proc = subprocess.Popen([SUANLI, "submit", *args], env={**os.environ, **env},
                            cwd=cwd or os.getcwd(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    jid = out.split()[-1]
    store = Store(home)
    try:
        row = store.get(jid)
    finally:
        store.close()
    assert row is not None
    return jid, row.meta["submitter"]["pid"] != proc.pid


def until_served(env: dict[str, str], home: Path) -> None:
    """Submit until one is served (the first command starts the server in the background)."""
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if submit(env, home, "--", "true")[1]:
            return
        time.sleep(0.1)
    raise AssertionError("no command was served within 90 s")


def wait_for(check: Callable[[], object], timeout: float = 30.0, what: Callable[[], str] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"not true within {timeout} s: {what() if what else check}")


def test_served_commands_match_in_process_ones(srv: Path, home: Path, tmp_path: Path) -> None:
    env = on(srv)
    until_served(env, home)
    for row in Store(home).query():  # settled, so both runs of `status` see the same
        assert cli("wait", row.id, env=env).returncode == 0
    (tmp_path / "work" / "bad.yaml").write_text("name: fromfile\ncommand: [echo, hi]\nnodes: many\n")
    cases = [
        ["status", "--all", "--json"],
        ["clusters"],
        ["submit", "--dry-run", "--json", "job.yaml"],
        ["submit", "--nodes", "0", "--", "true"],  # bad input: one line, exit 2
        ["submit", "--dry-run", "missing.yaml"],
        ["status", "nosuch"],
        ["nosuchverb"],
        ["status", "--help"],
        ["usage"],
    ]
    for args in cases:
        served = cli(*args, env=env)
        alone = cli(*args, env={"SUANLI_SERVER": "0"})
        assert (served.returncode, served.stdout, served.stderr) == (alone.returncode, alone.stdout, alone.stderr), args
    assert cli("submit", "--nodes", "0", "--", "true", env=env).returncode == 2


def test_each_command_gets_its_own_environment_and_folder(srv: Path, home: Path, tmp_path: Path) -> None:
    env = on(srv)
    until_served(env, home)
    other = tmp_path / "other-home"
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "job.yaml").write_text("name: relative\ncommand: [pwd]\n")
    jid, served = submit({**env, "SUANLI_HOME": str(other)}, other, "job.yaml", cwd=sub)
    assert served
    assert cli("wait", jid, env={**env, "SUANLI_HOME": str(other)}).returncode == 0
    logs = cli("logs", jid, env={**env, "SUANLI_HOME": str(other)})
    assert logs.stdout.strip() == str(sub), logs.stderr
    assert Store(home).get(jid) is None  # it went to the other registry only
    the_server(srv)


def test_umask_follows_the_client(srv: Path, home: Path) -> None:
    env = on(srv)
    until_served(env, home)
    modes = {}
    for server in ("1", "0"):
        proc = subprocess.Popen([SUANLI, "submit", "--", "true"], env={**os.environ, **env, "SUANLI_SERVER": server},
                                stdout=subprocess.PIPE, text=True, preexec_fn=lambda: os.umask(0o027))
        out, _ = proc.communicate(timeout=120)
        row = Store(home).get(out.split()[-1])
        assert row is not None and (row.meta["submitter"]["pid"] != proc.pid) == (server == "1")
        modes[server] = (Path(row.job_dir) / "runner.log").stat().st_mode & 0o777
    assert modes["1"] == modes["0"] and not modes["1"] & 0o027, modes


def waiting(srv: Path, home: Path, **popen: Any) -> tuple[dict[str, str], str, subprocess.Popen[str], int, int]:
    """A served `suanli wait` on a long job: the env, job id, the client, its server and the server's child."""
    env = on(srv)
    until_served(env, home)
    jid, _ = submit(env, home, "--", "sleep", "120")
    waiter = subprocess.Popen([SUANLI, "wait", jid], env={**os.environ, **env}, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, **popen)
    # The server running it: two commands at the start may each have started one, and the one that lost the
    # socket still serves what it took before it noticed (then exits).
    wait_for(lambda: any(children(pid) for pid in server_pids(srv)))
    server = next(pid for pid in server_pids(srv) if children(pid))
    (child,) = children(server)
    return env, jid, waiter, server, child


def test_ignored_ctrl_c_stays_ignored(srv: Path, home: Path) -> None:
    """A command started with SIGINT ignored (`nohup`-style, a background job of a script) is not stopped by it."""
    env, jid, waiter, _, child = waiting(srv, home,
                                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    waiter.send_signal(signal.SIGINT)
    os.kill(child, signal.SIGINT)  # even sent to the served child itself
    with pytest.raises(subprocess.TimeoutExpired):
        waiter.wait(timeout=1.0)
    assert cli("cancel", jid, env=env).returncode == 0
    out, err = waiter.communicate(timeout=60)
    assert waiter.returncode != 130 and "interrupted" not in err, (waiter.returncode, err)


def test_ctrl_c_reaches_the_served_command(srv: Path, home: Path) -> None:
    env, jid, waiter, server, child = waiting(srv, home)
    waiter.send_signal(signal.SIGINT)
    out, err = waiter.communicate(timeout=60)
    # Caught in the command ("interrupted", 130), or, if it came before the command's own handler was in place,
    # Python's death by SIGINT: both are what the same Ctrl-C does to a suanli running in-process.
    assert (waiter.returncode == 130 and "interrupted" in err) or (
        waiter.returncode == -signal.SIGINT and "KeyboardInterrupt" in err), (waiter.returncode, err)
    wait_for(lambda: not Path(f"/proc/{child}").exists() or child not in children(server))
    assert cli("cancel", jid, env=env).returncode == 0


@pytest.mark.parametrize("hangup", ["default", "ignored"])
def test_a_killed_client_takes_its_command_with_it(srv: Path, home: Path, hangup: str) -> None:
    """SIGHUP, as a closed terminal would send; for a client that ignored it (nohup), SIGTERM."""
    env, jid, waiter, server, _ = waiting(srv, home, preexec_fn=lambda: signal.signal(
        signal.SIGHUP, signal.SIG_IGN if hangup == "ignored" else signal.SIG_DFL))
    waiter.kill()
    waiter.communicate(timeout=30)
    wait_for(lambda: not children(server))
    assert server in server_pids(srv)
    assert cli("cancel", jid, env=env).returncode == 0


def test_exit_by_signal_is_passed_on(srv: Path, home: Path) -> None:
    env, jid, waiter, _, child = waiting(srv, home)
    os.kill(child, signal.SIGKILL)
    waiter.communicate(timeout=30)
    assert waiter.returncode == -signal.SIGKILL
    assert cli("cancel", jid, env=env).returncode == 0


def test_a_change_on_disk_retires_the_server(srv: Path, home: Path, tmp_path: Path) -> None:
    extra = tmp_path / "extra"
    extra.mkdir()
    env = on(srv, PYTHONPATH=str(extra))
    until_served(env, home)
    old = the_server(srv)
    (extra / "new_module.py").write_text("")  # a folder on sys.path changed: what it imports may differ
    jid, served = submit(env, home, "--", "true")
    assert not served  # the request that noticed ran in its own process
    wait_for(lambda: not Path(f"/proc/{old}").exists() or old not in server_pids(srv))
    until_served(env, home)
    assert old not in server_pids(srv)


def test_another_interpreter_setting_gets_another_server(srv: Path, home: Path) -> None:
    env = on(srv)
    until_served(env, home)
    flip = {"PYTHONDONTWRITEBYTECODE": ""} if os.environ.get("PYTHONDONTWRITEBYTECODE") else {
        "PYTHONDONTWRITEBYTECODE": "1"}
    until_served({**env, **flip}, home)
    wait_for(lambda: len(server_pids(srv)) == 2)
    assert len(list(srv.glob("*.sock"))) == 2


def test_idle_server_exits(srv: Path, home: Path) -> None:
    env = on(srv, SUANLI_SERVER_IDLE="1")
    until_served(env, home)
    wait_for(lambda: not server_pids(srv))
    assert not list(srv.glob("*.sock"))


def test_turned_off_or_unsafe_folder_means_in_process(srv: Path, home: Path) -> None:
    assert not submit(on(srv, SUANLI_SERVER="0"), home, "--", "true")[1]
    assert not srv.exists()
    srv.mkdir(mode=0o755)
    srv.chmod(0o755)  # others may enter: no server is started or used there
    for _ in range(3):
        assert not submit(on(srv), home, "--", "true")[1]
    assert not list(srv.iterdir())
    assert not server_pids(srv)


def test_another_user_is_refused(srv: Path, home: Path) -> None:
    if os.getuid() != 0:
        pytest.skip("needs root to connect as another user")
    env = on(srv)
    until_served(env, home)
    (sock,) = srv.glob("*.sock")
    srv.parent.chmod(0o711)
    srv.chmod(0o711)
    sock.chmod(0o777)
    code = ("import socket, sys; s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); "
            "print(repr(s.recv(5)))")
    system_python = "/usr/bin/python3"  # the project's venv may sit where another user cannot read it
    if not os.access(system_python, os.X_OK):
        pytest.skip("needs /usr/bin/python3 to run a client as another user")
    r = subprocess.run([system_python, "-c", code, str(sock)], capture_output=True, text=True, timeout=60,
                       user="nobody", cwd="/")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "b''"  # closed without a word
    srv.chmod(0o700)
    server = the_server(srv)
    assert not children(server)
    assert submit(env, home, "--", "true")[1]


def test_request_is_bounded(srv: Path, home: Path) -> None:
    env = on(srv)
    until_served(env, home)
    (sock,) = srv.glob("*.sock")
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(sock))
        s.sendmsg([(1 << 40).to_bytes(8, "big")], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                                      b"".join(fd.to_bytes(4, sys.byteorder) for fd in (0, 1, 2)))])
        s.settimeout(30)
        assert s.recv(5)[:1] == b"R"
    assert submit(env, home, "--", "true")[1]


def test_what_the_first_command_had_does_not_stick_to_the_server(srv: Path, home: Path) -> None:
    """The server starts from whatever command came first: an ignored SIGCHLD (the kernel would reap every
    child before its status is read) and an extra open descriptor (a lock, or a pipe a caller waits on for its
    end) must not stay with it."""
    env = on(srv)
    read_end, write_end = os.pipe()
    first = subprocess.Popen([SUANLI, "submit", "--", "true"], env={**os.environ, **env}, pass_fds=(write_end,),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             preexec_fn=lambda: signal.signal(signal.SIGCHLD, signal.SIG_IGN))
    os.close(write_end)
    first.communicate(timeout=120)
    assert first.returncode == 0
    wait_for(lambda: server_pids(srv))
    os.set_blocking(read_end, False)

    def pipe_closed() -> bool:  # end of file: nobody holds the write end any more, the server included
        try:
            return os.read(read_end, 1) == b""
        except BlockingIOError:
            return False

    wait_for(pipe_closed)
    os.close(read_end)
    until_served(env, home)
    for _ in range(3):
        assert cli("status", env=env).returncode == 0


def test_a_closed_stdin_runs_in_process(srv: Path, home: Path) -> None:
    env = on(srv)
    until_served(env, home)
    proc = subprocess.Popen([SUANLI, "submit", "--", "true"], env={**os.environ, **env}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=lambda: os.close(0))
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    row = Store(home).get(out.split()[-1])
    assert row is not None and row.meta["submitter"]["pid"] == proc.pid


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to pin to one")
def test_cpu_affinity_is_part_of_the_key(srv: Path, home: Path) -> None:
    env = on(srv)
    until_served(env, home)
    one = min(os.sched_getaffinity(0))
    proc = subprocess.Popen([SUANLI, "submit", "--", "grep", "Cpus_allowed_list", "/proc/self/status"],
                            env={**os.environ, **env}, stdout=subprocess.PIPE, text=True,
                            preexec_fn=lambda: os.sched_setaffinity(0, {one}))
    out, _ = proc.communicate(timeout=120)
    jid = out.split()[-1]
    assert cli("wait", jid, env=env).returncode == 0
    assert cli("logs", jid, env=env).stdout.split()[-1] == str(one)  # the job was pinned as its submitter was
    wait_for(lambda: len(list(srv.glob("*.sock"))) == 2)  # and that submitter started a server of its own


def test_the_verb_is_found_past_global_options() -> None:
    from suanli.cli.client import _verb, enabled

    assert _verb(["--config", "c.yaml", "top"]) == "top"
    assert _verb(["--debug", "status", "--config", "x"]) == "status"
    assert _verb(["--config"]) is None
    assert not enabled(["--config", "top", "top"])  # `top` drives the terminal: never served


def test_ctrl_z_stops_the_served_command_and_fg_resumes_it(srv: Path, home: Path) -> None:
    # A process group of its own, as a shell's job: the kernel discards a terminal stop sent to an orphaned
    # group (pytest's may be one, under nohup or CI), and then the client rightly does not stop its child.
    env, jid, waiter, _, child = waiting(srv, home, process_group=0)

    def state(pid: int) -> str:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]

    waiter.send_signal(signal.SIGTSTP)
    wait_for(lambda: state(waiter.pid) == "T" and state(child) == "T",
             what=lambda: f"client {state(waiter.pid)}, child {state(child)}")
    waiter.send_signal(signal.SIGCONT)
    wait_for(lambda: state(waiter.pid) != "T" and state(child) != "T",
             what=lambda: f"client {state(waiter.pid)}, child {state(child)}")
    assert cli("cancel", jid, env=env).returncode == 0
    waiter.communicate(timeout=60)
    assert waiter.returncode == 1  # the waited job was cancelled: it did not complete


def test_the_environment_a_process_loads_with_is_part_of_the_key(srv: Path, home: Path) -> None:
    env = on(srv)
    until_served(env, home)
    until_served({**env, "MALLOC_ARENA_MAX": "2"}, home)  # read by the C library when a process starts
    wait_for(lambda: len(list(srv.glob("*.sock"))) == 2)
