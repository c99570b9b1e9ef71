"""A persistent desktop cluster (Ray head + MLflow server): start it, stop it (`foldwise cluster`).

`up` starts, each in its own session so they outlive the command: the MLflow tracking
server from `infra.mlflow_server` (data in DIR/mlflow, on 127.0.0.1) and a Ray head (`ray start
--head --block`, Ray's token authentication on) whose every port listens on 127.0.0.1 only, unless
`--listen ADDRESS` makes it a head other machines can join (see `ray_env` for how, and
docs/clusters.md for the ports Ray then opens on every interface). Jobs on it
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

import ipaddress
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from foldwise.infra import secrets
from foldwise.infra.cluster_state import DEFAULT_DIR, HOST, STATE_FILE, ClusterState, Service, alive
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
    listen: str = HOST  # the address Ray advertises and binds; 127.0.0.1: nothing reachable from the network
    warm: bool = True  # start the warm command server (`--no-warm`: not)


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
    check_listen(config.listen)
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
    if state is not None and all(alive(s) for s in core(state.services)):
        return  # already up: `up` reports it
    for flag, port in ports.items():
        if not port_free(port, config.listen):
            raise ClusterConfigError(f"{flag}: {HOST}:{port} is already in use (another Ray or MLflow?); "
                                     f"pick another port with {flag}")


def check_listen(listen: str) -> None:
    """--listen must be 127.0.0.1 or one address of this machine: Ray advertises it to other nodes."""
    try:
        ip = ipaddress.ip_address(listen)
    except ValueError:
        raise ClusterConfigError(f"--listen: {listen!r} is not an IP address (use 127.0.0.1, the default, or "
                                 "this machine's address on the network other nodes join from)") from None
    if ip.is_unspecified:
        raise ClusterConfigError(f"--listen: {listen} names no single address; Ray advertises this address to "
                                 "the nodes that join, so name this machine's address on their network")
    if ip.is_loopback and listen != HOST:
        raise ClusterConfigError(f"--listen: {listen}: Ray keeps its ports on loopback only for {HOST} "
                                 f"(it binds every interface for any other address); use {HOST}")
    with socket.socket(socket.AF_INET6 if ip.version == 6 else socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((listen, 0))
        except OSError as e:
            raise ClusterConfigError(f"--listen: {listen} is not an address of this machine ({e.strerror})") from None


def loopback(config: ClusterConfig) -> bool:
    return config.listen == HOST


# --------------------------------------------------------------------------- up


def up(directory: Path, config: ClusterConfig) -> Started:
    """Start MLflow, then the Ray head; on any failure stop what was started (call check_config first)."""
    from foldwise.infra.mlflow_server import start, wait_ready

    existing = ClusterState.load(directory)
    if existing is not None:
        if all(alive(s) for s in core(existing.services)):
            return Started(state=keep_warm(existing, config), already_up=True)
        stop_services(existing.services)  # half-dead leftovers of a crashed machine or a killed process
        (directory / STATE_FILE).unlink()
    try:
        token_note = ensure_ray_token()
    except RayTokenError as e:
        raise ClusterError(f"Ray token authentication: {e}") from None
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)  # the MLflow store, logs and the warm server's socket: this user's only
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
        ports = ray_ports(config)
        with open(ray_log, "ab") as log:
            ray = subprocess.Popen(ray_start_command(config, temp_dir, ports), env=os.environ | env | ray_env(config, ports),
                                   stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=directory,
                                   start_new_session=True)
        started.append(service("ray", ray.pid, ray_log))
        dashboard = f"http://{url_host(config.listen)}:{config.dashboard_port}"
        if config.warm:  # it imports for seconds while the others come up; it is not waited for
            started.append(start_warm(directory))
        wait_ready(mlflow.url, proc, timeout=120, log_file=mlflow_log)
        wait_jobs_api(dashboard, ray, ray_log)
    except BaseException as e:
        stop_services(started)
        if isinstance(e, ClusterError | RuntimeError):
            raise ClusterError(str(e)) from None
        raise
    state = ClusterState(dir=str(directory), gcs_address=f"{url_host(config.listen)}:{config.ray_port}",
                         dashboard_url=dashboard, mlflow_url=mlflow.url, temp_dir=temp_dir, services=tuple(started),
                         env={k: v for k, v in env.items() if "PASSWORD" not in k}, listen=config.listen, ports=ports)
    state.save()
    return Started(state=state, already_up=False, token_note=token_note)


# The warm command server (`foldwise.workflows.cli.warm`, started by module name: infra imports
# nothing from workflows). A service like the others, except that the cluster is up without it.
WARM = "warm"
WARM_MODULE = "foldwise.workflows.cli.warm"


def core(services: tuple[Service, ...]) -> list[Service]:
    """The services the cluster is up with (Ray and MLflow; not the warm server)."""
    return [s for s in services if s.name != WARM]


def start_warm(directory: Path) -> Service:
    """The warm server on DIR/warm.sock, in its own session, logging to DIR/warm-server.log. It gets
    this process's environment as it is (not the head's): commands compare theirs with it."""
    log_file = directory / "warm-server.log"
    with open(log_file, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", WARM_MODULE, str(directory)], stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=directory, start_new_session=True)
    return service(WARM, proc.pid, log_file)


def keep_warm(state: ClusterState, config: ClusterConfig) -> ClusterState:
    """An `up` on a running cluster: (re)start the warm server if it is wanted and not running."""
    if not config.warm or any(s.name == WARM and alive(s) for s in state.services):
        return state
    stop_services([s for s in state.services if s.name == WARM])  # a recorded pid that was reused: not ours
    os.chmod(state.dir, 0o700)
    state = replace(state, services=(*core(state.services), start_warm(Path(state.dir))))
    state.save()
    return state


def mlflow_config(directory: Path, config: ClusterConfig) -> ServerConfig:
    from foldwise.infra.mlflow_server import ServerConfig

    return ServerConfig(data_dir=directory / "mlflow", port=config.mlflow_port,
                        backend_store_uri=config.backend_store_uri,
                        artifacts_destination=config.artifacts_destination, basic_auth=config.mlflow_basic_auth)


# Every port the head opens, by the `ray start` flag (or environment variable) that sets it. All are
# fixed here, none left to Ray's defaults, so several clusters share a machine and the firewall list
# in docs/clusters.md is this list. Workers' own ports are OS-assigned (--min/max-worker-port 0).
PORT_FLAGS = ("--port", "--dashboard-port", "--node-manager-port", "--object-manager-port", "--ray-client-server-port",
              "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port", "--runtime-env-agent-port",
              "--metrics-export-port")
PORT_ENV = ("AUTOSCALER_METRIC_PORT", "DASHBOARD_METRIC_PORT")  # Ray's defaults 44217, 44227: one cluster a machine
# With --listen ADDRESS, Ray 2.60 binds these on every interface (0.0.0.0 / ::) whatever ADDRESS is, and
# each worker's and driver's gRPC port too; the other ports bind ADDRESS (some also 127.0.0.1). The
# firewall table in docs/clusters.md; tests/infra_tests/test_cluster_jobs.py checks it against the kernel.
EVERY_INTERFACE_WITH_LISTEN = ("--port", "--node-manager-port", "--object-manager-port", "--dashboard-agent-grpc-port",
                               "--metrics-export-port", "AUTOSCALER_METRIC_PORT", "DASHBOARD_METRIC_PORT")


def ray_ports(config: ClusterConfig) -> dict[str, int]:
    """The ports of `PORT_FLAGS` and `PORT_ENV`: the two given, the rest picked free now."""
    free = iter(free_ports(len(PORT_FLAGS) + len(PORT_ENV) - 2))
    given = {"--port": config.ray_port, "--dashboard-port": config.dashboard_port}
    return {name: given[name] if name in given else next(free) for name in (*PORT_FLAGS, *PORT_ENV)}


def ray_start_command(config: ClusterConfig, temp_dir: str, ports: dict[str, int]) -> list[str]:
    """`ray start --head --block` on `ports`, advertising and binding `config.listen` (see `ray_env`)."""
    cmd = [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block", "--disable-usage-stats",
           "--node-ip-address", config.listen, "--dashboard-host", config.listen, "--temp-dir", temp_dir,
           "--min-worker-port", "0", "--max-worker-port", "0"]  # workers: OS-assigned ports, no clashes
    for flag in PORT_FLAGS:
        cmd += [flag, str(ports[flag])]
    if config.gpus is not None:
        cmd += ["--num-gpus", str(config.gpus)]
    if config.cpus is not None:
        cmd += ["--num-cpus", str(config.cpus)]
    return cmd


# Ray 2.60 on Linux rewrites a node IP (and a bootstrap address) of 127.0.0.1 to the machine's
# outward address (services.resolve_ip_for_localhost) unless this switch, meant for single-machine
# Windows/macOS clusters, is off; the GCS, raylet, object manager, agents and workers then bind
# 127.0.0.1 instead of every interface (measured: tests/infra_tests/test_cluster_ports.py). With
# it off no other machine can join, which is what a loopback cluster means. Read at import time,
# so it is set in the head's environment and thereby in every process and job driver it starts.
LOOPBACK_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def ray_env(config: ClusterConfig, ports: dict[str, int]) -> dict[str, str]:
    """Token auth on for the head and everything it starts (job drivers connect with it too); the
    loopback switch (see LOOPBACK_SWITCH) unless --listen; the metrics ports Ray takes from the
    environment; this interpreter's bin first on PATH, so a job's `foldwise` is this installation's."""
    bin_dir = os.path.dirname(sys.executable)
    env = {"RAY_AUTH_MODE": "token", "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
           **{name: str(ports[name]) for name in PORT_ENV}}
    if loopback(config):
        env[LOOPBACK_SWITCH] = "0"
    return env


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
    """SIGTERM each tree (the warm server first: its commands stop cleanly while Ray and MLflow are up;
    then Ray: its jobs may still log to MLflow), then SIGKILL what is left.

    Returns the pids still alive afterwards (empty when all stopped)."""
    import psutil

    left: set[int] = set()
    for s in sorted(services, key=lambda s: {WARM: 0, "ray": 1}.get(s.name, 2)):
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
    """Nothing holds `port` on `host` nor on every interface (where Ray binds it with --listen)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for bind_host in {host, "::" if family == socket.AF_INET6 else "0.0.0.0"}:
        with socket.socket(family, socket.SOCK_STREAM) as s:
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


def url_host(address: str) -> str:
    return f"[{address}]" if ":" in address else address


def log_tail(log_file: Path, lines: int = 8) -> str:
    if not log_file.exists():
        return ""
    text = log_file.read_text(errors="replace").strip().splitlines()[-lines:]
    return ":\n" + "\n".join(text) if text else ""
