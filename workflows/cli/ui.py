"""`foldwise ui`: the MLflow UI on the tracking store foldwise writes to, bound to 127.0.0.1.

Same URI resolution as every other command (--tracking-uri, $MLFLOW_TRACKING_URI,
sqlite:///mlflow.db), so the UI shows exactly the runs `foldwise run` logged. Local only:
the UI has no authentication, so it never listens beyond the loopback interface.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys

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


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


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
    if not port_free(args.port):
        return bad_input(f"--port: {HOST}:{args.port} is already in use; pick another with --port")
    print(f"MLflow UI for {uri} at http://{HOST}:{args.port} (Ctrl-C to stop)", flush=True)
    try:
        return subprocess.call(server_command(uri, args.port, args.workers))
    except KeyboardInterrupt:
        return EXIT_OK
