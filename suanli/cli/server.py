"""The command server: a resident process that has imported the CLI, the API, the backends and the ledger once,
and forks a child per command (``suanli/cli/client.py`` says why and what a command sends).

One loop, no threads: ``poll`` on the listening socket, each running child's pidfd (its exit) and each client's
connection (its hang-up). A child is reaped as soon as it ends and its wait status goes to its client. A client
that goes away while its child runs (killed, or its terminal closed) gets the child a SIGHUP, as a terminal's
hang-up would have. The server exits when idle for ``SUANLI_SERVER_IDLE`` seconds with no child running, when
its socket is removed or taken over by a newer server, or when a file it imported has changed (the request that
notices runs in its own process instead).
"""

from __future__ import annotations

import gc
import io
import marshal
import os
import select
import signal
import socket
import sys
import time
import traceback
from typing import Any

from suanli.cli.client import FORWARDED, MAX_REQUEST, process_key

#: Children running at once; past this a command runs in its own process.
MAX_CHILDREN = 64
DEFAULT_IDLE_S = 600.0
#: The longest a connecting client may take to send its request.
REQUEST_TIMEOUT_S = 5.0

_FORWARDED = {getattr(signal, name) for name in FORWARDED}

REFUSED_STALE, REFUSED_KEY, REFUSED_BUSY, REFUSED_BAD = 1, 2, 3, 4

#: What most commands import: loaded once here, so a child starts with them.
PRELOAD = (
    "suanli.cli.main", "suanli.cli.commands", "suanli.cli.output", "suanli.cli.accounting_cmd",
    "suanli.cli.info_cmd", "suanli.api", "suanli.compute.config", "suanli.compute.local.backend",
    "suanli.compute.local.runner", "suanli.compute.slurm", "suanli.compute.psij.backend", "suanli.accounting",
    "suanli.accounting.ledger", "suanli.jobs.spec", "suanli.yamlfile", "yaml", "argparse", "logging", "json",
    "sqlite3", "subprocess", "tempfile", "shutil", "shlex", "importlib.util", "uuid",
)


def _preload() -> None:
    import importlib

    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except Exception:  # an optional part missing here is imported (and reported) by the command needing it
            pass
    try:
        from suanli.cli.main import build_ahead

        build_ahead()
    except Exception:
        pass
    try:  # psycopg2 without its `import ssl`, as the ledger would import it (accounting/db.py)
        from suanli.accounting.db import _import_psycopg2

        _import_psycopg2()
    except Exception:
        pass


def _module_stamps() -> dict[str, tuple[int, int]]:
    """What tells the code on disk changed: every loaded file of suanli, and each sys.path folder (installing,
    upgrading or removing a package changes its folder; the standard library and installed packages are not
    edited in place)."""
    import suanli

    own = os.path.dirname(suanli.__file__) + os.sep
    out: dict[str, tuple[int, int]] = {}
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if isinstance(path, str) and path.startswith(own) and path not in out:
            try:
                st = os.stat(path)
            except OSError:
                continue
            out[path] = (st.st_mtime_ns, st.st_size)
    for entry in sys.path:
        try:
            st = os.stat(entry or ".")
        except OSError:
            continue
        out[entry or "."] = (st.st_mtime_ns, st.st_size)
    return out


def _changed(stamps: dict[str, tuple[int, int]]) -> bool:
    for path, stamp in stamps.items():
        try:
            st = os.stat(path)
        except OSError:
            return True
        if (st.st_mtime_ns, st.st_size) != stamp:
            return True
    return False


class Server:
    """The listening socket and the children it runs."""

    def __init__(self, path: str, key: tuple[Any, ...]) -> None:
        self.path = path
        self.key = key
        self.idle_s = _idle_seconds()
        self.stamps = _module_stamps()
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        tmp = f"{path}.{os.getpid()}.tmp"
        try:
            os.unlink(tmp)
        except OSError:
            pass
        self.listener.bind(tmp)
        self.listener.listen(64)
        self.inode = os.stat(tmp).st_ino  # (after the rename, `path` may already be a newer server's)
        os.replace(tmp, path)  # atomically: a client sees the old server or this one, never nothing
        self.poller = select.poll()
        self.poller.register(self.listener.fileno(), select.POLLIN)
        #: pidfd -> (pid, client connection); connection fd -> pid
        self.children: dict[int, tuple[int, socket.socket]] = {}
        self.clients: dict[int, int] = {}
        #: pid -> the signal that ends it if its client disappears
        self.ends: dict[int, int] = {}
        self.last_active = time.monotonic()

    # ------------------------------------------------------------------ the loop
    def serve(self) -> None:
        while True:
            timeout = 2.0 if self.children else min(2.0, max(0.05, self.idle_s - self.idle_for()))
            events = self.poller.poll(timeout * 1000)
            for fd, _mask in events:
                if fd == self.listener.fileno():
                    self.accept()
                elif fd in self.children:
                    self.reap(fd)
                elif fd in self.clients:
                    self.hang_up(fd)
            if not self.owns_socket():
                self.close_listener()
            if not self.children and (self.listener.fileno() < 0 or self.idle_for() >= self.idle_s):
                break
        self.close_listener()

    def idle_for(self) -> float:
        return time.monotonic() - self.last_active

    def owns_socket(self) -> bool:
        try:
            return os.stat(self.path).st_ino == self.inode
        except OSError:
            return False

    def close_listener(self) -> None:
        if self.listener.fileno() < 0:
            return
        if self.owns_socket():
            try:
                os.unlink(self.path)
            except OSError:
                pass
        self.poller.unregister(self.listener.fileno())
        self.listener.close()

    # ------------------------------------------------------------------ one command
    def accept(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        self.last_active = time.monotonic()
        try:
            self.start(conn)
        except Exception:  # a client that sent nonsense or left mid-request: it runs the command itself
            conn.close()

    def start(self, conn: socket.socket) -> None:
        conn.settimeout(REQUEST_TIMEOUT_S)
        cred = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
        if int.from_bytes(cred[4:8], sys.byteorder) != os.getuid():
            conn.close()
            return
        head, fds, _, _ = socket.recv_fds(conn, 8, 3)
        try:
            size = int.from_bytes(head, "big") if len(head) == 8 else -1
            if not 0 < size <= MAX_REQUEST or len(fds) != 3:
                return self.refuse(conn, REFUSED_BAD)
            blob = bytearray()
            while len(blob) < size:
                part = conn.recv(min(size - len(blob), 1 << 20))
                if not part:
                    return self.refuse(conn, REFUSED_BAD)
                blob += part
            request = marshal.loads(bytes(blob))
            if request[0] != self.key:
                return self.refuse(conn, REFUSED_KEY)
            if _changed(self.stamps):
                self.close_listener()  # the next command starts a server on the new code
                return self.refuse(conn, REFUSED_STALE)
            if len(self.children) >= MAX_CHILDREN:
                return self.refuse(conn, REFUSED_BUSY)
            # The client may pass a signal on as soon as it learns the child's pid: the child holds them
            # blocked until its handlers are the client's, then takes them as the client would have.
            signal.pthread_sigmask(signal.SIG_BLOCK, _FORWARDED)
            try:
                pid = os.fork()
                if pid == 0:
                    try:
                        self.become_child(conn, fds, request)
                    finally:  # a child never returns into the server's loop
                        os._exit(1)
            finally:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, _FORWARDED)
            conn.settimeout(None)
            pidfd = os.pidfd_open(pid)  # works (checked at start); the child may already have ended
            self.children[pidfd] = (pid, conn)
            self.clients[conn.fileno()] = pid
            # On the client's disappearance: a hang-up, or, for a client that ignored one (nohup), an end
            # all the same (the command would have gone with its process).
            self.ends[pid] = next((n for n in (signal.SIGHUP, signal.SIGTERM) if not request[5].get(n)),
                                  signal.SIGKILL)
            self.poller.register(pidfd, select.POLLIN)
            self.poller.register(conn.fileno(), select.POLLIN | select.POLLHUP)
        finally:
            for fd in fds:
                os.close(fd)

    def refuse(self, conn: socket.socket, why: int) -> None:
        try:
            conn.sendall(_frame(b"R", why))
        except OSError:
            pass
        conn.close()

    def reap(self, pidfd: int) -> None:
        pid, conn = self.children.pop(pidfd)
        self.ends.pop(pid, None)
        self.poller.unregister(pidfd)
        os.close(pidfd)
        try:
            _, status = os.waitpid(pid, 0)
        except ChildProcessError:
            status = 1 << 8
        self.last_active = time.monotonic()
        if self.clients.pop(conn.fileno(), None) is not None:
            self.poller.unregister(conn.fileno())
            try:
                conn.sendall(_frame(b"E", status))
            except OSError:
                pass
        conn.close()

    def hang_up(self, fd: int) -> None:
        """The client left before its child ended: the child gets what a closed terminal would send (SIGHUP),
        or SIGTERM, or SIGKILL, whichever its client did not ignore."""
        pid = self.clients.pop(fd)
        self.poller.unregister(fd)
        try:
            os.kill(pid, self.ends.get(pid, signal.SIGHUP))
        except ProcessLookupError:
            pass

    # ------------------------------------------------------------------ in the child
    def become_child(self, conn: socket.socket, fds: list[int], request: tuple[Any, ...]) -> None:
        """Turn this fork into the client's command, run it, and end as the command-line entry would."""
        code = 1
        try:
            # The client learns this pid (to pass signals on) before anything of its command runs; a client
            # that is already gone gets nothing run for it. Only this process writes to the connection.
            conn.settimeout(REQUEST_TIMEOUT_S)
            conn.sendall(_frame(b"S", os.getpid()))
            # This process keeps its end of the connection (close-on-exec: no job inherits it), so a client
            # whose server dies stays attached, passing signals on, until this command ends.
            _, argv, cwd, env, umask, ignored, streams = request
            for fd in (*self.children, *self.clients, self.listener.fileno()):
                try:
                    os.close(fd)
                except OSError:
                    pass
            for target, fd in enumerate(fds):
                os.dup2(fd, target)
                os.close(fd)
            for num in _FORWARDED:
                default = signal.default_int_handler if num == signal.SIGINT else signal.SIG_DFL
                signal.signal(num, signal.SIG_IGN if ignored.get(num) else default)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            os.chdir(cwd)
            os.umask(umask)
            os.environ.clear()
            os.environ.update(env)
            time.tzset()
            if "tempfile" in sys.modules:  # its folder is read from $TMPDIR once, then kept
                sys.modules["tempfile"].tempdir = None  # type: ignore[attr-defined]
            _stdio(streams)
            sys.argv = list(argv)
        except BaseException:
            os._exit(1)
        from suanli.cli.entry import finish, main

        try:  # whatever happens from here on, this process ends in finish() or by a signal, never returns
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _FORWARDED)
            code = main(argv[1:])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            if not isinstance(exc.code, int | None):
                print(exc.code, file=sys.stderr)
        except KeyboardInterrupt:  # as Python itself ends on one: the traceback, then death by SIGINT
            traceback.print_exc()
            _flush()
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)
        except BaseException:
            traceback.print_exc()
            code = 1
        finish(code, join_threads=True)


def _frame(tag: bytes, value: int) -> bytes:
    """One message to the client: S (the child's pid), E (its wait status) or R (refused, and why)."""
    return tag + value.to_bytes(4, "big", signed=True)


def _stdio(streams: list[tuple[str, str, bool, bool] | None]) -> None:
    """stdin/stdout/stderr as the client's Python had set them up (encoding, errors, buffering)."""
    made: list[Any] = []
    for fd, setup in enumerate(streams):
        if setup is None:
            made.append(None)
            continue
        encoding, errors, line_buffering, write_through = setup
        raw = io.FileIO(fd, "rb" if fd == 0 else "wb", closefd=False)
        buffer: Any = raw if write_through and fd else (io.BufferedReader(raw) if fd == 0 else io.BufferedWriter(raw))
        made.append(io.TextIOWrapper(buffer, encoding=encoding, errors=errors, line_buffering=line_buffering,
                                     write_through=write_through))
    sys.stdin, sys.stdout, sys.stderr = made
    sys.__stdin__, sys.__stdout__, sys.__stderr__ = made  # type: ignore[misc]


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):
            pass


def _idle_seconds() -> float:
    try:
        value = float(os.environ.get("SUANLI_SERVER_IDLE", DEFAULT_IDLE_S))
    except ValueError:
        return DEFAULT_IDLE_S
    return min(max(value, 0.1), 86400.0)


def _fresh_process() -> None:
    """Drop what this process inherited from the command that started it and that no child may inherit:
    descriptors other than stdin/stdout/stderr (a lock, a caller's pipe waiting for end-of-file) and ignored
    signals (an ignored SIGCHLD would have the kernel reap every child before its status is read)."""
    for name in os.listdir("/proc/self/fd"):
        if int(name) > 2:
            try:
                os.close(int(name))
            except OSError:
                pass
    for num in signal.valid_signals():
        if num not in (signal.SIGKILL, signal.SIGSTOP, signal.SIGPIPE) and signal.getsignal(num) == signal.SIG_IGN:
            try:
                signal.signal(num, signal.SIG_DFL)
            except (OSError, ValueError):
                pass
    signal.pthread_sigmask(signal.SIG_SETMASK, ())


def main(path: str, expected_key: bytes) -> None:
    """Start serving at ``path`` (from ``client.start_server``): load everything, then listen, unless this
    process's key is not the one its client computed (then a child could differ from the client: never serve)."""
    os.chdir("/")
    _fresh_process()
    key = process_key()
    if marshal.dumps(key) != expected_key:
        return
    try:  # poll() waits on each child's pidfd (Linux >= 5.3): without them, no server
        os.close(os.pidfd_open(os.getpid()))
    except (OSError, AttributeError):
        return
    path_before = list(sys.path)
    _preload()
    sys.path[:] = path_before  # the key promised the client's sys.path, whatever an import appended
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        server = Server(path, key)
    except OSError:
        return
    gc.collect()
    gc.freeze()  # what is loaded stays shared with the children: the collector never writes to it
    server.serve()
