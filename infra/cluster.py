"""`foldwise cluster up|down|status`: a persistent desktop cluster (Ray head + MLflow server).

`up` starts, each in its own session so they outlive the command: the MLflow tracking
server from `infra.mlflow_server` (data in DIR/mlflow) and a Ray head (`ray start --head
--block`, dashboard and Jobs API on 127.0.0.1, Ray's token authentication on). Jobs on it
inherit MLFLOW_TRACKING_URI (that server), FOLDWISE_CACHE (DIR/cache) and FOLDWISE_OUTPUTS
(DIR/outputs), so `foldwise submit` needs no extra flags. What was started is recorded in
DIR/cluster.json (pid, process group, start time), and `down` stops exactly those process
trees, never other Ray clusters on the machine (it does not use `ray stop`, which kills
every Ray of the user); runs, artifacts, cache and outputs stay in DIR.

Ray is started as a CLI process here rather than through `foldwise.workflows.engine.executor`, which
connects drivers to a cluster and submits tasks; starting long-lived cluster daemons is not
task execution.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from foldwise.infra.mlflow_server import ServerConfig

DEFAULT_DIR = ".foldwise/cluster"
STATE_FILE = "cluster.json"
HOST = "127.0.0.1"


class ClusterError(RuntimeError):
    """The cluster could not start (exit 1); bad flags are reported as bad input (exit 2)."""


@dataclass(frozen=True)
class Service:
    """One started process tree: its root pid, process group and start time (to spot pid reuse)."""

    name: str
    pid: int
    pgid: int
    create_time: float
    log: str


@dataclass(frozen=True)
class ClusterState:
    dir: str
    gcs_address: str
    dashboard_url: str
    mlflow_url: str
    temp_dir: str
    services: tuple[Service, ...]
    env: dict[str, str]

    def save(self) -> None:
        path = Path(self.dir) / STATE_FILE
        path.write_text(json.dumps(asdict(self), indent=2))

    @staticmethod
    def load(directory: str | Path) -> ClusterState | None:
        path = Path(directory) / STATE_FILE
        if not path.exists():
            return None
        raw = json.loads(path.read_text())
        raw["services"] = tuple(Service(**s) for s in raw["services"])
        return ClusterState(**raw)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=("up", "down", "status"), help="start, stop, or show the desktop cluster")
    p.add_argument("--dir", default=DEFAULT_DIR, help=f"state and data: MLflow store, cache, outputs (default {DEFAULT_DIR})")
    p.add_argument("--gpus", type=int, help="GPUs Ray may schedule on this machine (default: detected)")
    p.add_argument("--cpus", type=int, help="CPUs Ray may schedule on this machine (default: detected)")
    p.add_argument("--ray-port", type=int, default=6379, help="Ray (GCS) port (default 6379)")
    p.add_argument("--dashboard-port", type=int, default=8265, help="dashboard / Jobs API port on 127.0.0.1 (default 8265)")
    p.add_argument("--mlflow-port", type=int, default=5000, help="MLflow server port on 127.0.0.1 (default 5000)")
    p.add_argument("--backend-store-uri", help="MLflow store (default sqlite in DIR/mlflow; or postgresql://...)")
    p.add_argument("--artifacts-destination", help="MLflow artifacts (default DIR/mlflow/artifacts; or s3://...)")
    p.add_argument("--mlflow-basic-auth", action="store_true", help="MLflow basic auth (jobs get the admin credentials)")
    p.add_argument("--cache", help="cache root for jobs: a path or s3://, gs:// URI (default DIR/cache)")
    p.add_argument("--outputs", help="outputs root for jobs: a path or URI (default DIR/outputs)")
    p.add_argument("--temp-dir", help="Ray's temp dir (default a per-port folder under the system temp dir)")


def command(args: argparse.Namespace) -> int:
    from foldwise.workflows.cli.main import EXIT_FAILED, EXIT_OK, bad_input

    directory = Path(args.dir).expanduser().resolve()
    if args.action == "status":
        return status(directory)
    if args.action == "down":
        return EXIT_OK if down(directory) else EXIT_FAILED
    problem = check_up_arguments(args)
    if problem:
        return bad_input(problem)
    try:
        state = up(directory, args)
    except ClusterError as e:
        print(f"foldwise: failed: {e}", file=sys.stderr)
        return EXIT_FAILED
    print_addresses(state)
    return EXIT_OK


def check_up_arguments(args: argparse.Namespace) -> str | None:
    for flag, value in (("--gpus", args.gpus), ("--cpus", args.cpus)):
        if value is not None and value < 0:
            return f"{flag}: {value} is negative (use 0 or more)"
    ports = {"--ray-port": args.ray_port, "--dashboard-port": args.dashboard_port, "--mlflow-port": args.mlflow_port}
    for flag, port in ports.items():
        if not 0 < port < 65536:
            return f"{flag}: {port} is not a TCP port (1-65535)"
    if len(set(ports.values())) < len(ports):
        return f"ports must differ: {', '.join(f'{k} {v}' for k, v in ports.items())}"
    from foldwise.infra.mlflow_server import ServerConfigError, validate

    try:
        validate(mlflow_config(Path(args.dir).expanduser().resolve(), args))
    except ServerConfigError as e:
        return str(e)
    state = ClusterState.load(Path(args.dir).expanduser().resolve())
    if state is not None and all(alive(s) for s in state.services):
        return None  # already up: `up` reports it
    for flag, port in ports.items():
        if not port_free(port):
            return f"{flag}: {HOST}:{port} is already in use (another Ray or MLflow?); pick another port with {flag}"
    return None


# --------------------------------------------------------------------------- up


def up(directory: Path, args: argparse.Namespace) -> ClusterState:
    """Start MLflow, then the Ray head; on any failure stop what was started."""
    from foldwise.infra.mlflow_server import start, wait_ready

    existing = ClusterState.load(directory)
    if existing is not None:
        if all(alive(s) for s in existing.services):
            print(f"the desktop cluster in {directory} is already up", file=sys.stderr)
            return existing
        stop_services(existing.services)  # half-dead leftovers of a crashed machine or a killed process
        (directory / STATE_FILE).unlink()
    directory.mkdir(parents=True, exist_ok=True)
    token_note = ensure_ray_token()
    mlflow = mlflow_config(directory, args)  # validated by check_up_arguments
    started: list[Service] = []
    try:
        # Both start at once (each takes seconds to come up); the head's jobs get the server's URL.
        mlflow_log = directory / "mlflow-server.log"
        proc = start(mlflow, mlflow_log)
        started.append(service("mlflow", proc.pid, mlflow_log))
        env = job_environment(directory, args, mlflow)
        temp_dir = args.temp_dir or os.path.join(tempfile.gettempdir(), f"foldwise-ray-{args.ray_port}")
        ray_log = directory / "ray-head.log"
        with open(ray_log, "ab") as log:
            ray = subprocess.Popen(ray_start_command(args, temp_dir), env=os.environ | env | ray_env(), stdout=log,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=directory,
                                   start_new_session=True)
        started.append(service("ray", ray.pid, ray_log))
        dashboard = f"http://{HOST}:{args.dashboard_port}"
        wait_ready(mlflow.url, proc, timeout=120, log_file=mlflow_log)
        wait_jobs_api(dashboard, ray, ray_log)
    except BaseException as e:
        stop_services(started)
        if isinstance(e, ClusterError | RuntimeError):
            raise ClusterError(str(e)) from None
        raise
    state = ClusterState(dir=str(directory), gcs_address=f"{node_ip()}:{args.ray_port}", dashboard_url=dashboard,
                         mlflow_url=mlflow.url, temp_dir=temp_dir, services=tuple(started),
                         env={k: v for k, v in env.items() if "PASSWORD" not in k})
    state.save()
    print(token_note)
    return state


def mlflow_config(directory: Path, args: argparse.Namespace) -> ServerConfig:
    from foldwise.infra.mlflow_server import ServerConfig

    return ServerConfig(data_dir=directory / "mlflow", port=args.mlflow_port, backend_store_uri=args.backend_store_uri,
                        artifacts_destination=args.artifacts_destination, basic_auth=args.mlflow_basic_auth)


def ray_start_command(args: argparse.Namespace, temp_dir: str) -> list[str]:
    """`ray start --head --block` on the given ports; every other port is picked free (and worker
    ports left to the OS) so that several clusters, or a developer's own `ray start`, share the machine."""
    ports = free_ports(7)
    cmd = [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block", "--disable-usage-stats",
           "--port", str(args.ray_port), "--dashboard-host", HOST, "--dashboard-port", str(args.dashboard_port),
           "--node-manager-port", str(ports[0]), "--object-manager-port", str(ports[1]),
           "--ray-client-server-port", str(ports[2]), "--dashboard-agent-listen-port", str(ports[3]),
           "--dashboard-agent-grpc-port", str(ports[4]), "--runtime-env-agent-port", str(ports[5]),
           "--metrics-export-port", str(ports[6]), "--temp-dir", temp_dir,
           "--min-worker-port", "0", "--max-worker-port", "0"]  # workers: OS-assigned ports, no clashes
    if args.gpus is not None:
        cmd += ["--num-gpus", str(args.gpus)]
    if args.cpus is not None:
        cmd += ["--num-cpus", str(args.cpus)]
    return cmd


def ray_env() -> dict[str, str]:
    """Token auth on for the head and everything it starts (job drivers connect with it too);
    this interpreter's bin first on PATH, so a job's `foldwise` is this installation's."""
    bin_dir = os.path.dirname(sys.executable)
    return {"RAY_AUTH_MODE": "token", "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}


def job_environment(directory: Path, args: argparse.Namespace, mlflow: ServerConfig) -> dict[str, str]:
    """What every job on this cluster inherits: where to track, cache and write outputs."""
    from foldwise.infra.mlflow_server import ADMIN_PASSWORD_FILE

    env = {"MLFLOW_TRACKING_URI": mlflow.url,
           "FOLDWISE_CACHE": args.cache or str(directory / "cache"),
           "FOLDWISE_OUTPUTS": args.outputs or str(directory / "outputs")}
    if args.mlflow_basic_auth:
        env["MLFLOW_TRACKING_USERNAME"] = os.environ.get("MLFLOW_AUTH_ADMIN_USERNAME", "admin")
        env["MLFLOW_TRACKING_PASSWORD"] = (directory / "mlflow" / ADMIN_PASSWORD_FILE).read_text().strip()
    return env


def ensure_ray_token() -> str:
    """Ray's token auth needs a token: use the one Ray would find, else create ~/.ray/auth_token."""
    from ray._raylet import AuthenticationTokenLoader

    loader = AuthenticationTokenLoader.instance()
    if loader.has_token(ignore_auth_mode=True):
        where = ("$RAY_AUTH_TOKEN" if os.environ.get("RAY_AUTH_TOKEN") else
                 os.environ.get("RAY_AUTH_TOKEN_PATH") or "~/.ray/auth_token")
        return f"Ray token authentication: on (token from {where})"
    from ray._private.authentication.authentication_token_setup import generate_and_save_token

    generate_and_save_token()
    loader.reset_cache()
    return "Ray token authentication: on (new token written to ~/.ray/auth_token)"


def wait_jobs_api(dashboard: str, proc: subprocess.Popen, log_file: Path, timeout: float = 120.0) -> None:
    """Wait until the Jobs API answers an authenticated request (the head is then usable)."""
    import requests

    from foldwise.infra.jobs import auth_headers

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ClusterError(f"`ray start --head` exited with code {proc.returncode}{log_tail(log_file)}")
        try:
            r = requests.get(f"{dashboard}/api/jobs/", headers=auth_headers(), timeout=3)
            if r.status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise ClusterError(f"the Ray head's Jobs API at {dashboard} did not answer within {timeout:.0f} s{log_tail(log_file)}")


def print_addresses(state: ClusterState) -> None:
    print(f"Ray head         {state.gcs_address}   (drivers on this machine: RAY_AUTH_MODE=token foldwise run SPEC "
          f"--address {state.gcs_address})")
    print(f"Ray dashboard    {state.dashboard_url}   (Jobs API; submit here)")
    print(f"MLflow           {state.mlflow_url}   (tracking server and UI)")
    for k in ("FOLDWISE_CACHE", "FOLDWISE_OUTPUTS"):
        print(f"{k:<17}{state.env.get(k, '')}")
    print(f"state and logs   {state.dir}")
    print("submit a job:    foldwise submit workflows/examples/breast_cancer.yaml "
          f"--address {state.dashboard_url} --wait")
    print("stop:            foldwise cluster down" + ("" if state.dir.endswith(DEFAULT_DIR) else f" --dir {state.dir}"))


# --------------------------------------------------------------------------- down / status


def down(directory: Path) -> bool:
    """Stop the recorded process trees; True when nothing of them is left running."""
    state = ClusterState.load(directory)
    if state is None:
        print(f"no desktop cluster recorded in {directory} (nothing to stop)")
        return True
    left = stop_services(state.services)
    if left:
        print(f"foldwise: failed: still running after SIGKILL: pids {sorted(left)}", file=sys.stderr)
        return False
    (directory / STATE_FILE).unlink()
    print(f"stopped the desktop cluster ({', '.join(s.name for s in state.services)}); "
          f"runs, artifacts, cache and outputs kept in {directory}")
    return True


def status(directory: Path) -> int:
    state = ClusterState.load(directory)
    if state is None:
        print(f"no desktop cluster in {directory} (start one with `foldwise cluster up`)")
        return 0
    for s in state.services:
        print(f"{s.name:<7}{'running' if alive(s) else 'NOT RUNNING'}  pid {s.pid}  log {s.log}")
    print_addresses(state)
    return 0


def service(name: str, pid: int, log: Path) -> Service:
    import psutil

    return Service(name=name, pid=pid, pgid=os.getpgid(pid), create_time=psutil.Process(pid).create_time(),
                   log=str(log))


def alive(s: Service) -> bool:
    """The recorded process is running and is the one we started (not a reused pid)."""
    import psutil

    try:
        p = psutil.Process(s.pid)
        return abs(p.create_time() - s.create_time) < 1.0 and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def tree(s: Service) -> list:
    """The service's processes: its root and descendants, plus anything left in its process group."""
    import psutil

    procs = {}
    if alive(s):
        root = psutil.Process(s.pid)
        procs[root.pid] = root
        for child in root.children(recursive=True):
            procs[child.pid] = child
    for p in psutil.process_iter():
        try:
            if p.pid not in procs and os.getpgid(p.pid) == s.pgid and p.create_time() >= s.create_time - 1:
                procs[p.pid] = p
        except (psutil.Error, ProcessLookupError, PermissionError):
            continue
    return list(procs.values())


def stop_services(services: tuple[Service, ...] | list[Service], grace: float = 15.0) -> set[int]:
    """SIGTERM each tree (Ray first: its jobs may still log to MLflow), then SIGKILL what is left.

    Returns the pids still alive afterwards (empty when all stopped)."""
    import psutil

    left: set[int] = set()
    for s in sorted(services, key=lambda s: s.name != "ray"):
        procs = tree(s)
        if alive(s):
            try:
                os.kill(s.pid, signal.SIGTERM)  # the root stops its own children cleanly
            except ProcessLookupError:
                pass
        _, alive_procs = psutil.wait_procs(procs, timeout=grace)
        for p in alive_procs:
            try:
                p.terminate()
            except psutil.Error:
                pass
        _, alive_procs = psutil.wait_procs(alive_procs, timeout=5)
        for p in alive_procs:
            try:
                p.kill()
            except psutil.Error:
                pass
        _, alive_procs = psutil.wait_procs(alive_procs, timeout=5)
        left |= {p.pid for p in alive_procs}
    return left


# --------------------------------------------------------------------------- small helpers


def port_free(port: int, host: str = HOST) -> bool:
    for bind_host in {host, "0.0.0.0"}:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((bind_host, port))
            except OSError:
                return False
    return True


def free_ports(n: int) -> list[int]:
    """n distinct ports free right now (the OS picks them)."""
    socks, ports = [], []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("", 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


def node_ip() -> str:
    """The address Ray advertises for this node (it never uses 127.0.0.1 for the GCS)."""
    from ray._private.services import get_node_ip_address

    return get_node_ip_address()


def log_tail(log_file: Path, lines: int = 8) -> str:
    if not log_file.exists():
        return ""
    text = log_file.read_text(errors="replace").strip().splitlines()[-lines:]
    return ":\n" + "\n".join(text) if text else ""
