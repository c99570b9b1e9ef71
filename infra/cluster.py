"""A persistent desktop cluster (Ray head + MLflow server): start it, stop it (`foldwise cluster`).

`up` starts, each in its own session so they outlive the command: the MLflow tracking
server from `infra.mlflow_server` (data in DIR/mlflow) and a Ray head (`ray start --head
--block`, dashboard and Jobs API on 127.0.0.1, Ray's token authentication on). Jobs on it
inherit MLFLOW_TRACKING_URI (that server), FOLDWISE_CACHE (DIR/cache), FOLDWISE_OUTPUTS
(DIR/outputs) and FOLDWISE_CACHE_KEY_FILE (the key cache entries are signed with), so `foldwise submit` needs no extra flags. What was started is recorded in
DIR/cluster.json (`infra.cluster_state`), and `down` stops exactly those process trees, never
other Ray clusters on the machine (it does not use `ray stop`, which kills every Ray of the
user); runs, artifacts, cache and outputs stay in DIR.

This module prints nothing and knows no exit codes: bad settings raise ClusterConfigError, a
cluster that cannot start raises ClusterError, and the `foldwise cluster` command says so.
Ray is started as a CLI process here rather than through foldwise's Ray executor, which
connects drivers to a cluster and submits tasks; starting long-lived cluster daemons is not
task execution.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from foldwise.infra import secrets
from foldwise.infra.cluster_state import DEFAULT_DIR, HOST, STATE_FILE, ClusterState, Service
from foldwise.infra.ray_token import RayTokenError, auth_headers, ensure_ray_token

if TYPE_CHECKING:
    from foldwise.infra.mlflow_server import ServerConfig

__all__ = ["DEFAULT_DIR", "ClusterConfig", "ClusterConfigError", "ClusterError", "ClusterState", "Service",
           "Started", "Stopped", "alive", "check_config", "down", "up"]


class ClusterError(RuntimeError):
    """The cluster could not start (exit 1 in the CLI)."""


class ClusterConfigError(ValueError):
    """Settings the cluster cannot start with (bad port, taken port, bad MLflow store): bad input, nothing started."""


@dataclass(frozen=True)
class ClusterConfig:
    """How to start the desktop cluster (`foldwise cluster up`'s flags)."""

    gpus: int | None = None
    cpus: int | None = None
    ray_port: int = 6379
    dashboard_port: int = 8265
    mlflow_port: int = 5000
    backend_store_uri: str | None = None
    artifacts_destination: str | None = None
    mlflow_basic_auth: bool = False
    cache: str | None = None
    outputs: str | None = None
    temp_dir: str | None = None


@dataclass(frozen=True)
class Started:
    """What `up` did: the cluster's state, whether it was already up, and where Ray's token came from."""

    state: ClusterState
    already_up: bool
    token_note: str = ""


@dataclass(frozen=True)
class Stopped:
    """What `down` did: the cluster it found (None: nothing recorded) and the pids still alive after SIGKILL."""

    state: ClusterState | None
    left: frozenset[int] = frozenset()


def check_config(directory: Path, config: ClusterConfig) -> None:
    """Raise ClusterConfigError for settings `up` cannot start with, before anything is started or written."""
    for flag, value in (("--gpus", config.gpus), ("--cpus", config.cpus)):
        if value is not None and value < 0:
            raise ClusterConfigError(f"{flag}: {value} is negative (use 0 or more)")
    ports = {"--ray-port": config.ray_port, "--dashboard-port": config.dashboard_port,
             "--mlflow-port": config.mlflow_port}
    for flag, port in ports.items():
        if not 0 < port < 65536:
            raise ClusterConfigError(f"{flag}: {port} is not a TCP port (1-65535)")
    if len(set(ports.values())) < len(ports):
        raise ClusterConfigError(f"ports must differ: {', '.join(f'{k} {v}' for k, v in ports.items())}")
    from foldwise.infra.mlflow_server import ServerConfigError, validate

    try:
        validate(mlflow_config(directory, config))
    except ServerConfigError as e:
        raise ClusterConfigError(str(e)) from None
    state = ClusterState.load(directory)
    if state is not None and all(alive(s) for s in state.services):
        return  # already up: `up` reports it
    for flag, port in ports.items():
        if not port_free(port):
            raise ClusterConfigError(f"{flag}: {HOST}:{port} is already in use (another Ray or MLflow?); "
                                     f"pick another port with {flag}")


# --------------------------------------------------------------------------- up


def up(directory: Path, config: ClusterConfig) -> Started:
    """Start MLflow, then the Ray head; on any failure stop what was started (call check_config first)."""
    from foldwise.infra.mlflow_server import start, wait_ready

    existing = ClusterState.load(directory)
    if existing is not None:
        if all(alive(s) for s in existing.services):
            return Started(state=existing, already_up=True)
        stop_services(existing.services)  # half-dead leftovers of a crashed machine or a killed process
        (directory / STATE_FILE).unlink()
    try:
        token_note = ensure_ray_token()
    except RayTokenError as e:
        raise ClusterError(f"Ray token authentication: {e}") from None
    directory.mkdir(parents=True, exist_ok=True)
    mlflow = mlflow_config(directory, config)  # validated by check_config
    started: list[Service] = []
    try:
        # Both start at once (each takes seconds to come up); the head's jobs get the server's URL.
        mlflow_log = directory / "mlflow-server.log"
        proc = start(mlflow, mlflow_log)
        started.append(service("mlflow", proc.pid, mlflow_log))
        env = job_environment(directory, config, mlflow)
        temp_dir = config.temp_dir or os.path.join(tempfile.gettempdir(), f"foldwise-ray-{config.ray_port}")
        ray_log = directory / "ray-head.log"
        with open(ray_log, "ab") as log:
            ray = subprocess.Popen(ray_start_command(config, temp_dir), env=os.environ | env | ray_env(), stdout=log,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=directory,
                                   start_new_session=True)
        started.append(service("ray", ray.pid, ray_log))
        dashboard = f"http://{HOST}:{config.dashboard_port}"
        wait_ready(mlflow.url, proc, timeout=120, log_file=mlflow_log)
        wait_jobs_api(dashboard, ray, ray_log)
    except BaseException as e:
        stop_services(started)
        if isinstance(e, ClusterError | RuntimeError):
            raise ClusterError(str(e)) from None
        raise
    state = ClusterState(dir=str(directory), gcs_address=f"{node_ip()}:{config.ray_port}", dashboard_url=dashboard,
                         mlflow_url=mlflow.url, temp_dir=temp_dir, services=tuple(started),
                         env={k: v for k, v in env.items() if "PASSWORD" not in k})
    state.save()
    return Started(state=state, already_up=False, token_note=token_note)


def mlflow_config(directory: Path, config: ClusterConfig) -> ServerConfig:
    from foldwise.infra.mlflow_server import ServerConfig

    return ServerConfig(data_dir=directory / "mlflow", port=config.mlflow_port,
                        backend_store_uri=config.backend_store_uri,
                        artifacts_destination=config.artifacts_destination, basic_auth=config.mlflow_basic_auth)


def ray_start_command(config: ClusterConfig, temp_dir: str) -> list[str]:
    """`ray start --head --block` on the given ports; every other port is picked free (and worker
    ports left to the OS) so that several clusters, or a developer's own `ray start`, share the machine."""
    ports = free_ports(7)
    cmd = [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block", "--disable-usage-stats",
           "--port", str(config.ray_port), "--dashboard-host", HOST, "--dashboard-port", str(config.dashboard_port),
           "--node-manager-port", str(ports[0]), "--object-manager-port", str(ports[1]),
           "--ray-client-server-port", str(ports[2]), "--dashboard-agent-listen-port", str(ports[3]),
           "--dashboard-agent-grpc-port", str(ports[4]), "--runtime-env-agent-port", str(ports[5]),
           "--metrics-export-port", str(ports[6]), "--temp-dir", temp_dir,
           "--min-worker-port", "0", "--max-worker-port", "0"]  # workers: OS-assigned ports, no clashes
    if config.gpus is not None:
        cmd += ["--num-gpus", str(config.gpus)]
    if config.cpus is not None:
        cmd += ["--num-cpus", str(config.cpus)]
    return cmd


def ray_env() -> dict[str, str]:
    """Token auth on for the head and everything it starts (job drivers connect with it too);
    this interpreter's bin first on PATH, so a job's `foldwise` is this installation's."""
    bin_dir = os.path.dirname(sys.executable)
    return {"RAY_AUTH_MODE": "token", "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}


def job_environment(directory: Path, config: ClusterConfig, mlflow: ServerConfig) -> dict[str, str]:
    """What every job on this cluster inherits: where to track, cache and write outputs."""
    from foldwise.infra.mlflow_server import ADMIN_PASSWORD_FILE

    env = {"MLFLOW_TRACKING_URI": mlflow.url,
           "FOLDWISE_CACHE": config.cache or str(directory / "cache"),
           "FOLDWISE_OUTPUTS": config.outputs or str(directory / "outputs")}
    if not os.environ.get(secrets.CACHE_KEY_ENV):  # else jobs inherit $FOLDWISE_CACHE_KEY itself
        env[secrets.CACHE_KEY_FILE_ENV] = str(secrets.ensure_cache_key_file())  # jobs sign and check with our key
    if config.mlflow_basic_auth:
        env["MLFLOW_TRACKING_USERNAME"] = os.environ.get("MLFLOW_AUTH_ADMIN_USERNAME", "admin")
        env["MLFLOW_TRACKING_PASSWORD"] = (directory / "mlflow" / ADMIN_PASSWORD_FILE).read_text().strip()
    return env


def wait_jobs_api(dashboard: str, proc: subprocess.Popen, log_file: Path, timeout: float = 120.0) -> None:
    """Wait until the Jobs API answers an authenticated request (the head is then usable)."""
    import requests

    headers = auth_headers()  # the token the head was started with (ensure_ray_token)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ClusterError(f"`ray start --head` exited with code {proc.returncode}{log_tail(log_file)}")
        try:
            r = requests.get(f"{dashboard}/api/jobs/", headers=headers, timeout=3)
            if r.status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise ClusterError(f"the Ray head's Jobs API at {dashboard} did not answer within {timeout:.0f} s{log_tail(log_file)}")


# --------------------------------------------------------------------------- down


def down(directory: Path) -> Stopped:
    """Stop the recorded process trees; the record is removed when nothing of them is left running."""
    state = ClusterState.load(directory)
    if state is None:
        return Stopped(state=None)
    left = stop_services(state.services)
    if not left:
        (directory / STATE_FILE).unlink()
    return Stopped(state=state, left=frozenset(left))


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
    from ray.util import get_node_ip_address  # public (ray.util.__all__); was ray._private.services

    return get_node_ip_address()


def log_tail(log_file: Path, lines: int = 8) -> str:
    if not log_file.exists():
        return ""
    text = log_file.read_text(errors="replace").strip().splitlines()[-lines:]
    return ":\n" + "\n".join(text) if text else ""
