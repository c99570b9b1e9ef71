"""`foldwise ui`: the MLflow UI on the tracking store foldwise writes to, bound to 127.0.0.1.

Same URI resolution as every other command (--tracking-uri, $MLFLOW_TRACKING_URI,
sqlite:///mlflow.db), so the UI shows exactly the runs `foldwise run` logged. Local only:
the UI has no authentication, so it never listens beyond the loopback interface.

The server runs in its own process group, and stopping `foldwise ui` (Ctrl-C, SIGTERM, SIGHUP, or
any way out of `command`) stops that whole group: the server and every worker it started, so
nothing keeps the port. MLflow's job runner (GenAI background jobs foldwise never uses) is off,
as in `infra/mlflow_server.py`, unless MLFLOW_SERVER_ENABLE_JOB_EXECUTION says otherwise.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any

HOST = "127.0.0.1"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI, sqlite:///mlflow.db)")
    p.add_argument("--port", type=int, default=5000, help="port on 127.0.0.1 (default 5000)")
    p.add_argument("--workers", type=int, default=1, help="server worker processes (default 1)")


def server_command(uri: str, port: int, workers: int = 1, artifacts_destination: str | None = None) -> list[str]:
    """The `mlflow server` command line for this store on 127.0.0.1:port."""
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--host", HOST,
           "--port", str(port), "--workers", str(workers)]
    if artifacts_destination:
        cmd += ["--artifacts-destination", artifacts_destination]
    return cmd


def server_environment() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    return env


class _Stop(Exception):
    """A stop signal (SIGTERM/SIGHUP) turned into an exception, so `serve`'s cleanup runs."""


def stop_group(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM to the server's whole process group, then SIGKILL to whatever is left after `grace` seconds."""
    pgid = proc.pid  # start_new_session: the server leads its own group

    def group_alive() -> bool:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if proc.poll() is not None and not group_alive():
            return
        time.sleep(0.1)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def serve(cmd: list[str]) -> int:
    """Run the server until it ends or we are told to stop; either way nothing of it is left running."""
    def raise_stop(signum: int, frame: Any) -> None:
        raise _Stop(signum)

    main_thread = threading.current_thread() is threading.main_thread()
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)} if main_thread else {}
    for s in (signal.SIGTERM, signal.SIGHUP) if main_thread else ():
        signal.signal(s, raise_stop)
    proc: subprocess.Popen | None = None
    try:
        proc = subprocess.Popen(cmd, env=server_environment(), start_new_session=True)
        return proc.wait()
    except (KeyboardInterrupt, _Stop):  # Ctrl-C reaches only us: the server has its own session
        return 0
    finally:
        for s in previous:  # a second Ctrl-C or SIGTERM during the cleanup must not cut it short
            signal.signal(s, signal.SIG_IGN)
        try:
            if proc is not None:
                stop_group(proc)
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler if handler is not None else signal.SIG_DFL)


def command(args: argparse.Namespace) -> int:
    from foldwise.workflows.cli.main import EXIT_OK, bad_input
    from foldwise.workflows.tracking import tracker as tk

    uri = tk.resolve_uri(args.tracking_uri)
    if uri.startswith(("http://", "https://")):
        print(f"{uri} is an MLflow tracking server: its UI is already at {uri}")
        return EXIT_OK
    problem = tk.store_missing(uri)
    if problem:
        return bad_input(f"{problem}; run `foldwise run SPEC` first or pass --tracking-uri")
    if not 0 < args.port < 65536:
        return bad_input(f"--port: {args.port} is not a TCP port (1-65535)")
    from foldwise.infra.cluster import port_free  # the desktop cluster's check: free on 127.0.0.1 and all interfaces

    if not port_free(args.port):
        return bad_input(f"--port: {HOST}:{args.port} is already in use; pick another with --port")
    print(f"MLflow UI for {uri} at http://{HOST}:{args.port} (Ctrl-C to stop)", flush=True)
    code = serve(server_command(uri, args.port, args.workers))
    if code in (0, -signal.SIGTERM):
        return EXIT_OK
    return code if code > 0 else 1  # the server died of a signal we did not send
