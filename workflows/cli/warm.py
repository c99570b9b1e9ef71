"""The desktop cluster's warm command server: the heavy stack imported once, each command a fork.

`foldwise cluster up` starts it (`python -m foldwise.workflows.cli.warm DIR`) as one more recorded
service; `foldwise` processes started in the cluster's folder hand it their command
(`foldwise.workflows.cli.warm_client`). It imports pandas, scikit-learn, LightGBM, MLflow and Ray
(~5 s a process on 2 cores), then listens on DIR/warm.sock: an AF_UNIX socket, 0600, in the 0700
state dir, and only peers of this user (SO_PEERCRED) are served. Per request it forks; the child
takes the client's terminal (fds 0/1/2), working directory, environment, umask and argv, and runs
`foldwise.workflows.cli.main.main(argv)`, ending as any `foldwise` process does (through
interpreter exit, so Ray's and MLflow's atexit handlers run). The server relays the child's pid,
then its exit status; a client that goes away (killed) gets its child SIGTERM-ed, which a command
turns into a clean stop (runs FAILED, finished folds cached).

Single-threaded on purpose: forking a process with threads can deadlock the child on a lock some
thread held. The import stack measured starts none; the server checks it before every fork and
refuses (the client then runs the command itself) rather than fork with threads.
"""

from __future__ import annotations

import errno
import gc
import importlib
import os
import selectors
import signal
import socket
import struct
import sys
import threading
import time
from dataclasses import dataclass

from foldwise.workflows.cli.warm_client import DELEGATED, HEADER, SOCKET_NAME, identity, mismatch, recv_exact, send_message

# What a delegated command imports on its way; the CLI modules pull in their commands lazily, so
# these are named too.
PRELOAD = ("foldwise.workflows.commands.run", "foldwise.workflows.commands.check", "foldwise.workflows.commands.predict",
           "foldwise.workflows.commands.dag", "foldwise.workflows.commands.compare",
           "foldwise.workflows.commands.sweep.command", "foldwise.workflows.commands.ablate.command",
           *(f"foldwise.workflows.cli.{name}" for name in DELEGATED))
REQUEST_TIMEOUT_S = 10.0  # a connected client sends its request at once
STOP_GRACE_S = 10.0  # on SIGTERM: how long children get to stop cleanly before SIGKILL (within `cluster down`'s 15 s)


@dataclass(frozen=True)
class Request:
    """A command as the client would have run it: its argv, terminal fds, cwd, environment, umask."""

    argv: list[str]
    sys_argv: list[str]
    fds: list[int]
    cwd: str
    env: dict[str, str]
    umask: int
    path: list[str]


def log(message: str) -> None:
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} warm[{os.getpid()}]: {message}", file=sys.stderr, flush=True)


def check_private(directory: str) -> None:
    """The socket's folder must be this user's alone: the socket runs commands as this user."""
    st = os.stat(directory)
    if st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise SystemExit(f"foldwise warm server: {directory} must belong to this user and be 0700 "
                         f"(mode {st.st_mode & 0o777:o}, owner uid {st.st_uid}): chmod 700 {directory}")


def preload() -> None:
    """Import what the delegated commands import, starting no thread (checked before each fork)."""
    from foldwise.workflows.engine import executor
    from foldwise.workflows.tracking import tracker

    executor.preload()  # Ray first, with RAY_AUTH_MODE set as a command joining the cluster would
    tracker.preload()
    for name in PRELOAD:
        importlib.import_module(name)
    import lightgbm  # noqa: F401
    import matplotlib
    import sklearn.ensemble  # noqa: F401
    import sklearn.linear_model  # noqa: F401

    matplotlib.use("Agg")
    import matplotlib.pyplot  # noqa: F401


def listen(path: str) -> socket.socket:
    """The AF_UNIX socket at `path`, created 0600; a stale one (a server that died) is replaced."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(path)
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    sock.listen(16)
    return sock


def peer_uid(conn: socket.socket) -> int:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]


def read_request(conn: socket.socket) -> tuple[dict, list[int]]:
    """The client's JSON request and the fds (0, 1, 2) that came with its first bytes."""
    conn.settimeout(REQUEST_TIMEOUT_S)
    head, fds, _, _ = socket.recv_fds(conn, HEADER.size, 3)
    try:
        if len(head) < HEADER.size:
            head += recv_exact(conn, HEADER.size - len(head))
        magic, length = HEADER.unpack(head)
        import json

        return json.loads(recv_exact(conn, length)), fds
    except BaseException:
        close_fds(fds)
        raise


def close_fds(fds: list[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


class Server:
    """The selectors loop: accept, fork per request, reap children, relay their exit status."""

    def __init__(self, path: str, me: dict) -> None:
        self.path, self.me, self.pid = path, me, os.getpid()
        self.listener = listen(path)
        self.selector = selectors.DefaultSelector()
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        self.children: dict[int, socket.socket | None] = {}  # pid -> its client's connection
        self.stopping = False
        self.selector.register(self.listener, selectors.EVENT_READ, "accept")
        self.selector.register(self.wake_r, selectors.EVENT_READ, "wake")

    def install_signals(self) -> None:
        signal.set_wakeup_fd(self.wake_w)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)  # a wake-up: reaped in the loop
        for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(s, self._stop)

    def _stop(self, signum: int, frame: object) -> None:
        self.stopping = True

    def loop(self) -> Request | None:
        """Serve until SIGTERM; in a forked child, return its Request (the caller runs it)."""
        while not self.stopping:
            for key, _ in self.selector.select(timeout=5.0):
                if key.data == "accept":
                    request = self.accept()
                    if request is not None:
                        return request
                elif key.data == "wake":
                    try:
                        while os.read(self.wake_r, 512):
                            pass
                    except BlockingIOError:
                        pass
                else:
                    self.client_readable(key.fileobj, key.data)
            self.reap()
        self.shutdown()
        return None

    def accept(self) -> Request | None:
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return None
        try:
            if peer_uid(conn) != os.getuid():
                log(f"refused a connection from uid {peer_uid(conn)}")
                conn.close()
                return None
            raw, fds = read_request(conn)
        except (OSError, EOFError, ValueError, struct.error) as e:
            log(f"dropped a request: {e}")
            conn.close()
            return None
        threads = threading.active_count()
        reason = mismatch(self.me, raw.get("identity", {})) if isinstance(raw.get("identity"), dict) else "no identity"
        if reason is None and threads != 1:
            reason = f"it has {threads} threads, so forking it is unsafe"
        if reason is None and not all(k in raw for k in ("argv", "sys_argv", "cwd", "env", "umask", "sys_path")):
            reason = "the request lacks a field (another foldwise version?)"
        if reason is None and len(fds) != 3:
            reason = f"the request carried {len(fds)} fds, not 3"
        if reason is not None:
            log(f"refused {raw.get('argv')}: {reason}")
            close_fds(fds)
            try:
                send_message(conn, {"refused": reason})
            except OSError:
                pass
            conn.close()
            return None
        sys.stdout.flush()
        sys.stderr.flush()
        # The imported stack moves to the collector's permanent generation: a child collecting it
        # (at exit, most of all) would copy every page it touches and took ~2 s to end; frozen, 0.3 s.
        gc.freeze()
        pid = os.fork()
        if pid == 0:
            return self.become_child(conn, raw, fds)
        close_fds(fds)
        log(f"pid {pid} runs {raw['argv']} in {raw['cwd']} (threads at fork: {threads})")
        try:
            send_message(conn, {"pid": pid, "threads": threads})
        except OSError:  # the client is gone already
            self.terminate(pid)
        conn.setblocking(False)
        self.children[pid] = conn
        self.selector.register(conn, selectors.EVENT_READ, pid)
        return None

    def become_child(self, conn: socket.socket, raw: dict, fds: list[int]) -> Request:
        """In the forked child: drop the server's sockets and signal handling; the command runs next."""
        signal.set_wakeup_fd(-1)
        for s in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP):
            signal.signal(s, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for key in list(self.selector.get_map().values()):
            if key.fileobj not in (self.wake_r,):
                key.fileobj.close()
        self.selector.close()
        os.close(self.wake_r)
        os.close(self.wake_w)
        conn.close()
        return Request(argv=list(raw["argv"]), sys_argv=list(raw["sys_argv"]), fds=fds,
                       cwd=raw["cwd"], env=dict(raw["env"]), umask=int(raw["umask"]), path=list(raw["sys_path"]))

    def client_readable(self, conn: socket.socket, pid: int) -> None:
        """A client sends nothing after its request: readable means it went away (killed)."""
        try:
            data = conn.recv(64)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            return
        self.selector.unregister(conn)
        conn.close()
        if self.children.get(pid) is conn:
            self.children[pid] = None
            log(f"the client of pid {pid} went away: SIGTERM to it")
            self.terminate(pid)

    def terminate(self, pid: int, signum: int = signal.SIGTERM) -> None:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass

    def reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            code = os.waitstatus_to_exitcode(status)
            done: dict = {"exit": code}
            if code < 0:
                done = {"exit": 128 - code, "note": f"the command was killed by {signal.Signals(-code).name}"}
            log(f"pid {pid} ended: {done}")
            conn = self.children.pop(pid, None)
            if conn is not None:
                self.selector.unregister(conn)
                try:
                    conn.setblocking(True)
                    send_message(conn, done)
                except OSError:
                    pass
                conn.close()

    def shutdown(self) -> None:
        """SIGTERM: stop taking commands, stop the running ones cleanly, then remove the socket."""
        log(f"stopping ({len(self.children)} command(s) running)")
        self.selector.unregister(self.listener)
        self.listener.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        for pid in list(self.children):
            self.terminate(pid)
        deadline = time.monotonic() + STOP_GRACE_S
        while self.children and time.monotonic() < deadline:
            self.reap()
            time.sleep(0.1)
        for pid in list(self.children):
            self.terminate(pid, signal.SIGKILL)
        while self.children:
            self.reap()
            time.sleep(0.05)


def serve(path: str) -> Request | None:
    """Import the stack, listen on `path` (its folder 0700), serve; a forked child gets its Request."""
    check_private(os.path.dirname(os.path.abspath(path)))
    me = identity()  # before the imports: edits made while importing then show as a change
    start = time.perf_counter()
    preload()
    threads = threading.active_count()
    if threads != 1:  # not fatal: each request is refused (and says why) until this is fixed
        log(f"warning: {threads} threads after the imports; commands will run in their own processes")
    server = Server(path, me)
    server.install_signals()
    log(f"ready on {os.path.abspath(path)} after {time.perf_counter() - start:.1f} s of imports "
        f"(threads: {threads}, python {sys.version.split()[0]}, code {me['code']})")
    try:
        return server.loop()
    finally:
        if os.getpid() == server.pid and not server.stopping:
            server.shutdown()  # an error in the loop: no socket left behind, no child left running


def become(request: Request) -> None:
    """The forked child takes the client's place: terminal, directory, environment, umask, argv."""
    for target, fd in enumerate(request.fds):
        if fd != target:
            os.dup2(fd, target)
    close_fds([fd for fd in request.fds if fd > 2])
    encoding, errors = sys.__stdout__.encoding, sys.__stdout__.errors
    # As the interpreter makes them at start-up: stdout line-buffered on a terminal, stderr always.
    sys.stdin = sys.__stdin__ = open(0, "r", encoding=encoding, errors=errors, closefd=False)  # noqa: SIM115
    sys.stdout = sys.__stdout__ = open(1, "w", buffering=1 if os.isatty(1) else -1, encoding=encoding,  # noqa: SIM115
                                       errors=errors, closefd=False)
    sys.stderr = sys.__stderr__ = open(2, "w", buffering=1, encoding=encoding, errors="backslashreplace",  # noqa: SIM115
                                       closefd=False)
    os.chdir(request.cwd)
    os.environ.clear()
    os.environ.update(request.env)
    os.umask(request.umask)
    sys.argv = request.sys_argv
    sys.path[:] = request.path  # the client's: it differs from the server's in its first entry at most
    import tempfile

    tempfile.tempdir = None  # found again from this environment's TMPDIR
    from foldwise.workflows.engine.executor import reread_config

    reread_config()


def run(argv: list[str]) -> int:
    """`python -m foldwise.workflows.cli.warm DIR`: serve DIR/warm.sock; a child runs its command."""
    if not sys.flags.safe_path:  # -m put the working directory first; a console script puts its own folder
        sys.path[0] = os.path.dirname(sys.executable)
    os.chdir(argv[0] if argv else ".")
    try:
        request = serve(SOCKET_NAME)
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            log(f"{SOCKET_NAME} is in use")
        raise
    if request is None:
        log("stopped")
        return 0
    become(request)
    from foldwise.workflows.cli.main import main

    return main(request.argv)


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
