"""The thin side of the command server (``suanli/cli/server.py``): hand this command line to a resident suanli
process that has already imported everything, instead of importing it all again.

A short command spends most of its time importing: the standard modules a submit needs cost 2.4x a bare Python
start by themselves. As with Mercurial's chg, the first command starts a server in the background (and runs
itself as usual); later ones connect to its Unix socket and pass their argv, working directory, environment,
umask and their own stdin/stdout/stderr (the descriptors themselves). The server forks a child that becomes
this command and reports its exit status; this side forwards the signals it gets (Ctrl-C) to that child and
exits the same way. The child is the submitter, so what suanli records about it (pid, start time) stays true.

Anything that could make the child differ from this process keeps the server out: the socket's name is a hash of
the interpreter, ``sys.path``, suanli's version, interpreter flags, encodings, user and groups, namespaces,
cgroup and resource limits, and the server refuses a request whose full key is not its own, or that comes after
a file it imported changed. Then (and whenever the server is absent, busy or broken) the command runs here.
``SUANLI_SERVER=0`` turns it off; ``SUANLI_SERVER_IDLE`` (seconds, default 600) is how long a server waits for
the next command before it exits; ``SUANLI_SERVER_DIR`` moves its socket folder (default
``$XDG_RUNTIME_DIR/suanli``, else ``/tmp/suanli-UID``).

Only ``_socket`` is loaded from disk here; ``_signal``, ``marshal`` and ``_locale`` are built into Python.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

PROTOCOL = 1
#: Verbs that run long or drive the terminal themselves: nothing to gain, and they stay in the user's session.
IN_PROCESS_VERBS = frozenset({"serve", "top", "ray"})
#: Signals passed on to the child as they arrive (the rest keep their usual effect on this process).
FORWARDED = ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2")
#: Whole requests larger than this are refused by the server (argv and environment are bounded by the kernel).
MAX_REQUEST = 8 << 20
_NAMESPACES = ("net", "mnt", "pid", "uts", "ipc", "user", "cgroup")
#: Environment read once, when a process starts and loads its libraries: a child has the server's.
_PROCESS_ENV = ("LD_PRELOAD", "LD_LIBRARY_PATH", "PYTHONHOME", "PYTHONMALLOC", "PYTHONHASHSEED", "MALLOC_ARENA_MAX")
#: Lines of /proc/self/status that a forked child keeps of its parent (so they must match the client's).
_INHERITED = (b"Cap", b"NoNewPrivs", b"Seccomp", b"Cpus_allowed:", b"Mems_allowed:")


def enabled(argv: Sequence[str]) -> bool:
    """Whether this command line may go to a server: not turned off, a verb that gains, a plain interpreter
    (its flags all come from the environment, which a server started from here shares), not set-id."""
    env = os.environ
    if env.get("SUANLI_SERVER", "1").strip().lower() in ("0", "off", "no", "false"):
        return False
    verb = _verb(argv)
    if verb is None or verb in IN_PROCESS_VERBS:
        return False
    if os.getuid() != os.geteuid() or os.getgid() != os.getegid():
        return False
    flags = sys.flags
    if (sys._xoptions or sys.warnoptions or flags.inspect or flags.interactive or flags.no_site
            or flags.isolated or flags.ignore_environment or flags.dev_mode or flags.bytes_warning or flags.quiet):
        return False
    from_env = {"optimize": min(_env_level(env.get("PYTHONOPTIMIZE")), 2),
                "dont_write_bytecode": bool(env.get("PYTHONDONTWRITEBYTECODE")),
                "no_user_site": bool(env.get("PYTHONNOUSERSITE")),
                "verbose": _env_level(env.get("PYTHONVERBOSE")), "safe_path": bool(env.get("PYTHONSAFEPATH"))}
    return all(int(getattr(flags, name)) == int(value) for name, value in from_env.items())


def _env_level(value: str | None) -> int:
    """How Python reads PYTHONOPTIMIZE and PYTHONVERBOSE: a number, or 1 for any other non-empty text."""
    if not value:
        return 0
    try:
        return max(int(value), 1)
    except ValueError:
        return 1


def _verb(argv: Sequence[str]) -> str | None:
    """The verb: the first word that is neither an option nor the value of ``--config``."""
    words = iter(argv)
    for word in words:
        if word == "--config":
            next(words, None)
        elif word == "--":
            return next(words, None)
        elif not word.startswith("-"):
            return word
    return None


def server_dir() -> str:
    """The folder of this user's server sockets."""
    explicit = os.environ.get("SUANLI_SERVER_DIR")
    if explicit:
        return explicit
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    return os.path.join(runtime, "suanli") if runtime else f"/tmp/suanli-{os.getuid()}"


def process_key() -> tuple[Any, ...]:
    """Everything a forked server child could differ from this process in. Equal keys: the child behaves as
    this process would have."""
    import suanli
    from suanli.version import __version__

    try:
        import _locale

        codeset: str | None = _locale.nl_langinfo(_locale.CODESET)
    except (ImportError, AttributeError):
        codeset = None
    spaces: list[int | None] = []
    for name in _NAMESPACES:
        try:
            spaces.append(os.stat(f"/proc/self/ns/{name}").st_ino)
        except OSError:
            spaces.append(None)
    files: list[bytes | None] = []
    # The limits as text (no `resource` module to load); from status, what a child inherits of its parent:
    # CPU and memory-node affinity, capabilities, no-new-privileges and seccomp.
    for name in ("/proc/self/cgroup", "/proc/self/limits", "/proc/self/status", "/proc/self/oom_score_adj",
                 "/proc/self/attr/current"):
        try:
            with open(name, "rb") as f:
                files.append(f.read(65536))
        except OSError:
            files.append(None)
    cgroup, limits, status, oom, label = files
    inherited = b"\n".join(line for line in (status or b"").splitlines() if line.startswith(_INHERITED))
    return (PROTOCOL, __version__, sys.executable, sys.version, tuple(sys.path), os.path.dirname(suanli.__file__),
            tuple(sys.flags), sys.getfilesystemencoding(), sys.getfilesystemencodeerrors(), codeset,
            os.getuid(), os.geteuid(), os.getgid(), os.getegid(), tuple(os.getgroups()), tuple(spaces), cgroup,
            limits, inherited, oom, label, os.getpriority(os.PRIO_PROCESS, 0), os.uname().nodename,
            tuple(os.environ.get(name) for name in _PROCESS_ENV))


def socket_path(key: tuple[Any, ...]) -> str:
    """The socket for ``key``: named by a 61-bit hash of it (the server checks the whole key, so a collision
    only costs a refused request)."""
    import marshal

    digest = int.from_bytes(marshal.dumps(key), "little") % ((1 << 61) - 1)
    return os.path.join(server_dir(), f"{digest:016x}.sock")


def _safe_dir(folder: str, create: bool) -> bool:
    """The socket folder is this user's alone (mode 0700, owned, not a link): nobody else can put a server
    there that this command would hand its terminal to."""
    try:
        if create:
            os.makedirs(folder, mode=0o700, exist_ok=True)
        st = os.lstat(folder)
    except OSError:
        return False
    import stat

    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and not st.st_mode & 0o077


def _stream_setup(stream: Any) -> tuple[str, str, bool, bool] | None:
    if stream is None:
        return None
    return (stream.encoding, stream.errors, bool(stream.line_buffering), bool(getattr(stream, "write_through", 0)))


def run_remote(argv: Sequence[str]) -> int | None:
    """Run this command line in the server's child; its exit code, or None when no server took it (then the
    caller runs it here, and a server has been started for the next command)."""
    try:
        key = process_key()
        path = socket_path(key)
    except (OSError, ValueError, ImportError):
        return None
    folder = os.path.dirname(path)
    if len(path.encode()) > 100 or not _safe_dir(folder, create=True):
        return None
    import _socket

    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    if sock.fileno() <= 2:  # stdin, stdout or stderr is closed: the socket would be handed over as one of them
        sock.close()
        return None
    try:
        sock.connect(path)
    except OSError:
        sock.close()
        start_server(path, key)
        return None
    try:
        return _converse(sock, path, key, argv)
    finally:
        sock.close()


def _converse(sock: Any, path: str, key: tuple[Any, ...], argv: Sequence[str]) -> int | None:
    import _signal
    import _socket
    import marshal

    cred = sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, 12)
    if int.from_bytes(cred[4:8], sys.byteorder) != os.getuid():
        return None
    umask = os.umask(0)
    os.umask(umask)
    signals = {}
    for name in FORWARDED:
        num = getattr(_signal, name)
        signals[num] = _signal.getsignal(num) == _signal.SIG_IGN
    try:
        request = marshal.dumps((key, [sys.argv[0], *argv], os.getcwd(), dict(os.environ), umask,
                                 {n: ignored for n, ignored in signals.items()},
                                 [_stream_setup(s) for s in (sys.stdin, sys.stdout, sys.stderr)]))
    except (OSError, ValueError):  # a deleted working folder; an environment marshal cannot hold
        return None
    if len(request) > MAX_REQUEST:
        return None
    child = 0
    pending: list[int] = []

    def forward(num: int, frame: Any) -> None:
        if child:
            _kill(child, num)
        else:
            pending.append(num)

    def suspend(num: int, frame: Any) -> None:
        """Ctrl-Z: the child stops with this process, and goes on when it does (a shell's `fg`)."""
        if child:
            _kill(child, _signal.SIGSTOP)
        _signal.signal(_signal.SIGTSTP, _signal.SIG_DFL)
        os.kill(os.getpid(), _signal.SIGTSTP)  # stops here until SIGCONT
        _signal.signal(_signal.SIGTSTP, suspend)
        if child:
            _kill(child, _signal.SIGCONT)

    # In place before the request leaves: a signal from then on is passed on (or, until the child's pid is
    # known, held), never taken by this process while a child may already be running the command.
    previous = {n: _signal.signal(n, forward) for n, ignored in signals.items() if not ignored}
    if _signal.getsignal(_signal.SIGTSTP) == _signal.SIG_DFL:
        previous[_signal.SIGTSTP] = _signal.signal(_signal.SIGTSTP, suspend)
    fds = b"".join(fd.to_bytes(4, sys.byteorder) for fd in (0, 1, 2))
    try:
        try:
            sock.sendmsg([len(request).to_bytes(8, "big"), request],
                         [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, fds)])
        except OSError:  # a closed stdin/stdout/stderr cannot be passed; a server that went away
            return None
        while True:
            frame = _recv_exact(sock, 5)
            if frame is None:
                if child:  # the server died under its child: the child's fate is unknown
                    sys.stderr.write("suanli: error: the command server went away; the command's outcome is "
                                     "unknown (check `suanli status`; SUANLI_SERVER=0 runs commands in-process)\n")
                    return 1
                return None
            tag, value = frame[:1], int.from_bytes(frame[1:], "big", signed=True)
            if tag == b"S":
                child = value
                for num in pending:
                    _kill(child, num)
                pending.clear()
            elif tag == b"E":
                return _exit_code(value)
            else:  # b"R": refused (stale code, another key, busy); the server starts anew if it must
                if value == 1:  # stale: it exits; the next command gets a fresh one
                    start_server(path, key)
                return None
    finally:
        for n, handler in previous.items():
            _signal.signal(n, handler)
        for num in pending:  # caught before any child ran: this process, which runs the command now, takes them
            os.kill(os.getpid(), num)


def _kill(pid: int, num: int) -> None:
    try:
        os.kill(pid, num)
    except OSError:  # it has just ended (its status is on the way)
        pass


def _recv_exact(sock: Any, n: int) -> bytes | None:
    data = b""
    while len(data) < n:
        try:
            part = sock.recv(n - len(data))
        except OSError:
            return None
        if not part:
            return None
        data += part
    return data


def _exit_code(status: int) -> int:
    """The child's wait status as this process's exit: its code, or death by the same signal."""
    if os.WIFEXITED(status):
        return os.WEXITSTATUS(status)
    if os.WIFSIGNALED(status):
        import _signal

        sig = os.WTERMSIG(status)
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            _signal.signal(sig, _signal.SIG_DFL)
        except (OSError, ValueError):  # SIGKILL and SIGSTOP have no handler to reset
            pass
        os.kill(os.getpid(), sig)
        return 128 + sig
    return 1


def start_server(path: str, key: tuple[Any, ...]) -> None:
    """Start a server for ``path`` in the background, in a session of its own, reading and writing nothing of
    this command's (its stdin/stdout/stderr are /dev/null, so a caller waiting for this command's output is not
    kept waiting by the server). Failing to start one only costs speed."""
    import marshal

    code = ("import sys, marshal; sys.path[:] = marshal.loads(bytes.fromhex(sys.argv[1])); "
            "from suanli.cli.server import main; main(sys.argv[2], bytes.fromhex(sys.argv[3]))")
    try:
        os.posix_spawn(sys.executable, [sys.executable, "-c", code, marshal.dumps(list(sys.path)).hex(), path,
                                        marshal.dumps(key).hex()], os.environ,
                       file_actions=[(os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
                                     (os.POSIX_SPAWN_OPEN, 1, "/dev/null", os.O_WRONLY, 0),
                                     (os.POSIX_SPAWN_DUP2, 1, 2)], setsid=True, setsigmask=())
    except OSError:
        pass
