"""The `foldwise` side of the desktop cluster's warm command server (`foldwise.workflows.cli.warm`).

Every `foldwise` process pays ~5 s of interpreter start and imports (pandas, scikit-learn,
LightGBM, MLflow, Ray) before its command does anything. `foldwise cluster up` starts a server
that has imported all of that once; from the cluster's folder, `run`, `check`, `ablate`, `sweep`,
`predict`, `dag`, `compare` and `cache` hand their argv, working directory, environment, umask and
terminal (fds 0/1/2) to it, it forks a child that runs the command, and this process only relays
signals and the exit status. Decided before any heavy import; standard library only.

The server is refused (the command runs in this process, with one line saying why) when what it
imported could differ from what this process would import: another interpreter, edited foldwise
code, or an environment variable read at import time. A server that is gone runs the command here
silently. FOLDWISE_WARM=0 opts out.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import struct
import sys

WARM_ENV = "FOLDWISE_WARM"
SOCKET_NAME = "warm.sock"  # in the cluster's state dir (0700), the socket itself 0600
# The commands worth a warm start: they import the heavy stack. Never cluster (it starts and stops
# the server), ui/submit/jobs/logs/stop/init (light, or long-lived processes of their own).
DELEGATED = ("run", "check", "ablate", "sweep", "predict", "dag", "compare", "cache")
HEADER = struct.Struct("!4sQ")  # magic, length of the JSON body that follows
MAGIC = b"FWW1"
# Read when a module is imported (or the interpreter starts), so a server that imported under other
# values would run the command with them: PYTHON* (paths, hash seed, io encoding), the BLAS/OpenMP
# thread pools, Ray's constants, the visible GPUs, the dynamic loader, the locale (stdio encoding).
SENSITIVE_PREFIXES = ("PYTHON", "OMP_", "MKL_", "OPENBLAS_", "RAY_", "LD_", "LC_")
SENSITIVE_NAMES = ("CUDA_VISIBLE_DEVICES", "LANG", "MPLBACKEND", "MPLCONFIGDIR")
# RAY_AUTH_MODE is re-read by the child (Ray's config is re-initialised from the client's
# environment after the fork; Ray reads it per call otherwise), so it need not match.
REREAD = ("RAY_AUTH_MODE",)
# Values that mean the same as the variable being unset: importing Ray writes RAY_CLIENT_MODE=0 into
# its process's environment, so every command a script or notebook starts after `import ray` has it.
IMPORT_DEFAULTS = {("RAY_CLIENT_MODE", "0")}


def sensitive_env(env: dict[str, str] | os._Environ) -> dict[str, str]:
    """The import-time-sensitive part of an environment (what a server and its client must share)."""
    return {k: v for k, v in env.items() if k not in REREAD and (k, v) not in IMPORT_DEFAULTS
            and (k.startswith(SENSITIVE_PREFIXES) or k.endswith("_NUM_THREADS") or k in SENSITIVE_NAMES)}


def code_fingerprint() -> str:
    """foldwise's own source files by name, size and mtime: an edited editable install changes it.

    Stats ~200 files (milliseconds); finding the packages imports only `foldwise` itself."""
    import foldwise

    # foldwise's own folder holds only its front door (in a source tree its __path__ also names the
    # repository root, which is not walked); the three subpackages are walked whole.
    roots = [(os.path.dirname(foldwise.__file__), False)]
    for package in ("foldwise.tasks", "foldwise.workflows", "foldwise.infra"):
        spec = importlib.util.find_spec(package)
        roots += [(location, True) for location in ((spec.submodule_search_locations or []) if spec else [])]
    entries = []
    for root, deep in sorted(roots):
        for folder, dirs, files in os.walk(root):
            if not deep:
                dirs[:] = []
            dirs[:] = sorted(d for d in dirs if d != "__pycache__" and not d.startswith("."))
            for name in sorted(files):
                if name.endswith(".py"):
                    st = os.stat(os.path.join(folder, name))
                    entries.append(f"{os.path.join(folder, name)}:{st.st_size}:{st.st_mtime_ns}")
    import hashlib

    return hashlib.sha256("\n".join(entries).encode()).hexdigest()[:16]


def identity(env: dict[str, str] | os._Environ | None = None) -> dict:
    """What decides whether a server's imports are this process's: interpreter, code, sensitive env, sys.path."""
    return {"executable": os.path.realpath(sys.executable), "version": sys.version, "code": code_fingerprint(),
            "env": sensitive_env(os.environ if env is None else env), "path": sys.path[1:]}


def mismatch(server: dict, client: dict) -> str | None:
    """Why a client must not use this server (None: it may), in a few words."""
    if server["executable"] != client["executable"] or server["version"] != client["version"]:
        return f"it runs another Python ({server['executable']}, {server['version'].split()[0]})"
    if server["code"] != client["code"]:
        return "foldwise's code changed since it started"
    if server["env"] != client["env"]:
        names = sorted(k for k in server["env"].keys() | client["env"].keys()
                       if server["env"].get(k) != client["env"].get(k))
        return f"{', '.join(names[:4])} differ{'s' if len(names) == 1 else ''} from its environment (read at import)"
    if server["path"] != client["path"]:
        return "its sys.path differs from this one"
    return None


def send_message(sock: socket.socket, message: dict, fds: list[int] | None = None) -> None:
    body = json.dumps(message).encode()
    head = HEADER.pack(MAGIC, len(body))
    if fds:
        socket.send_fds(sock, [head], fds)
        sock.sendall(body)
    else:
        sock.sendall(head + body)


def recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError("connection closed")
        data += chunk
    return data


def recv_message(sock: socket.socket) -> dict:
    magic, length = HEADER.unpack(recv_exact(sock, HEADER.size))
    if magic != MAGIC:
        raise EOFError("not a foldwise warm-server message")
    return json.loads(recv_exact(sock, length))


def wanted(argv: list[str]) -> bool:
    """A command worth delegating: in DELEGATED, not a --help, not opted out."""
    if os.environ.get(WARM_ENV, "1") == "0" or "-h" in argv or "--help" in argv:
        return False
    first = next((w for w in argv if not w.startswith("-")), None)
    return first in DELEGATED


def socket_path() -> str:
    from foldwise.infra.cluster_state import DEFAULT_DIR  # standard library only

    return os.path.join(DEFAULT_DIR, SOCKET_NAME)  # relative: AF_UNIX paths are limited to 107 bytes


def delegate(argv: list[str]) -> int | None:
    """Run `foldwise ARGV` in the warm server of this folder's desktop cluster; its exit status.

    None: no live server here (or refused, said on stderr): the caller runs the command itself."""
    if not wanted(argv) or not os.path.exists(socket_path()):
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(socket_path())
    except OSError:  # a stale socket: the server is gone
        sock.close()
        return None
    with sock:
        return _converse(sock, argv)


def _converse(sock: socket.socket, argv: list[str]) -> int | None:
    request = {"argv": argv, "sys_argv": sys.argv, "cwd": os.getcwd(), "env": dict(os.environ),
               "umask": _umask(), "sys_path": sys.path, "identity": identity()}
    pending: list[int] = []
    child: list[int] = []

    def forward(signum: int, frame: object) -> None:
        if child:
            try:
                os.kill(child[0], signum)
            except ProcessLookupError:
                pass
        else:
            pending.append(signum)

    try:
        send_message(sock, request, [0, 1, 2])
        reply = recv_message(sock)
    except (OSError, EOFError, ValueError):
        return None  # the server went away before it took the command: nothing ran
    if "refused" in reply:
        print(f"foldwise: not using the warm server ({reply['refused']}): running in this process "
              "(`foldwise cluster down` then `up` restarts it)", file=sys.stderr, flush=True)
        return None
    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        child.append(int(reply["pid"]))
        print(f"foldwise: running in the desktop cluster's warm server (pid {child[0]}; FOLDWISE_WARM=0 runs "
              "it in this process)", file=sys.stderr, flush=True)
        for signum in pending:
            forward(signum, None)
        try:
            done = recv_message(sock)
        except (OSError, EOFError, ValueError):
            print("foldwise: failed: the warm server went away before the command ended", file=sys.stderr)
            return 1
        if done.get("note"):
            print(f"foldwise: {done['note']}", file=sys.stderr)
        return int(done["exit"])
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
