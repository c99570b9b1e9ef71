"""The MLflow tracking server of a foldwise cluster: one store every job and every user reads.

Runs `mlflow server` with a sqlite or PostgreSQL backend, artifacts under a local path or
an `s3://` prefix served through the server (`--serve-artifacts`, so clients and job
drivers need no bucket credentials), bound to 127.0.0.1 unless told otherwise (reach it
from a laptop through an SSH tunnel), optionally behind MLflow's basic auth. The head
node of `cluster.yaml` and `foldwise cluster up` both start it from here:

    python -m foldwise.infra.mlflow_server --data-dir ~/foldwise-mlflow --port 5000 \
        [--backend-store-uri postgresql://user:pw@db/mlflow] [--artifacts-destination s3://bucket/mlflow] \
        [--host 127.0.0.1] [--basic-auth] [--detach --pid-file F --log-file F]

Why a launcher and not a bare `mlflow server` line: it checks the URIs before starting
(one clear line instead of a stack trace on the head), writes the basic-auth config with
its own user database next to the data (MLflow's default puts `basic_auth.db` in the
working directory), and can detach with a pid file and wait until `/health` answers, which
is what a cluster start-up script and `foldwise cluster down` need.
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from foldwise.infra.secrets import private_umask, write_private

LOCALHOST = "127.0.0.1"
BACKEND_SCHEMES = ("sqlite", "postgresql", "postgresql+psycopg2", "postgresql+psycopg", "postgresql+pg8000")
ARTIFACT_SCHEMES = ("s3", "gs", "file")  # or a plain path
ADMIN_PASSWORD_FILE = "mlflow-admin-password"


class ServerConfigError(ValueError):
    """A backend or artifact location the server cannot use: one line, exit code 2."""


@dataclass(frozen=True)
class ServerConfig:
    """Everything that defines the server; `data_dir` holds the defaults and the auth files."""

    data_dir: Path
    port: int = 5000
    host: str = LOCALHOST
    backend_store_uri: str | None = None  # default sqlite:///<data_dir>/mlflow.db
    artifacts_destination: str | None = None  # default <data_dir>/artifacts
    basic_auth: bool = False
    workers: int = 1

    @property
    def backend(self) -> str:
        return self.backend_store_uri or f"sqlite:///{(self.data_dir / 'mlflow.db').resolve()}"

    @property
    def artifacts(self) -> str:
        return self.artifacts_destination or str((self.data_dir / "artifacts").resolve())

    @property
    def url(self) -> str:
        host = LOCALHOST if self.host in ("0.0.0.0", "::") else self.host
        return f"http://{host}:{self.port}"


def postgres_driver(scheme: str) -> str:
    """The module SQLAlchemy will import for this URI scheme (plain postgresql:// is psycopg2 before
    SQLAlchemy 2.1 and psycopg 3 from 2.1 on, so ask SQLAlchemy rather than assume)."""
    if "+" in scheme:
        return scheme.split("+", 1)[1]
    from sqlalchemy.dialects import registry

    return registry.load("postgresql").driver


def validate(config: ServerConfig) -> None:
    """Catch what `mlflow server` would only report with a traceback (or not at all)."""
    scheme = config.backend.split("://", 1)[0] if "://" in config.backend else ""
    if scheme not in BACKEND_SCHEMES:
        raise ServerConfigError(f"--backend-store-uri {config.backend!r}: use sqlite:///PATH or "
                                "postgresql://USER:PASSWORD@HOST:PORT/DB")
    if scheme.startswith("postgresql"):
        driver = postgres_driver(scheme)
        try:
            __import__(driver)
        except ImportError:
            package = {"psycopg2": "psycopg2-binary", "psycopg": "'psycopg[binary]'"}.get(driver, driver)
            raise ServerConfigError(f"--backend-store-uri is PostgreSQL ({scheme}://) but its driver {driver} is not "
                                    f"installed (pip install {package}, or name the driver you have: "
                                    "postgresql+psycopg2://, postgresql+psycopg://, postgresql+pg8000://)") from None
    if scheme == "sqlite":
        db = Path(config.backend.removeprefix("sqlite:///"))
        if not db.parent.exists() and db.parent != config.data_dir.resolve():  # the data dir is created
            raise ServerConfigError(f"--backend-store-uri {config.backend!r}: folder {str(db.parent)!r} does not exist")
    art = config.artifacts
    if "://" in art and art.split("://", 1)[0] not in ARTIFACT_SCHEMES:
        raise ServerConfigError(f"--artifacts-destination {art!r}: use a path, file://PATH, s3://BUCKET/PREFIX "
                                "or gs://BUCKET/PREFIX")
    if art.startswith("s3://"):
        try:
            import boto3  # noqa: F401 - MLflow's S3 artifact repository needs it
        except ImportError:
            raise ServerConfigError("--artifacts-destination is s3:// but boto3 is not installed "
                                    "(pip install boto3, or pip install 'foldwise[cluster]')") from None
    if config.basic_auth:
        try:
            import flask_wtf  # noqa: F401 - MLflow's basic-auth app needs it
        except ImportError:
            raise ServerConfigError("--basic-auth needs MLflow's auth extra (pip install 'mlflow[auth]', "
                                    "or pip install 'foldwise[cluster]')") from None
    if not 0 < config.port < 65536:
        raise ServerConfigError(f"--port {config.port}: not a TCP port (1-65535)")


def auth_files(config: ServerConfig) -> tuple[Path, Path]:
    """(basic-auth ini, admin password file) in the data dir; creates both on first use.

    The admin password is $MLFLOW_AUTH_ADMIN_PASSWORD when set, else a random one saved
    with mode 0600 (clients read it as MLFLOW_TRACKING_PASSWORD). The user database sits
    next to the runs, so users survive restarts like the runs do.
    """
    ini, password_file = config.data_dir / "basic_auth.ini", config.data_dir / ADMIN_PASSWORD_FILE
    if not password_file.exists():
        if os.environ.get("MLFLOW_AUTH_ADMIN_PASSWORD"):
            write_private(password_file, os.environ["MLFLOW_AUTH_ADMIN_PASSWORD"].encode())
        _secret(password_file)
    write_private(ini, "\n".join([
        "[mlflow]",
        "default_permission = READ",
        f"database_uri = sqlite:///{(config.data_dir / 'basic_auth.db').resolve()}",
        f"admin_username = {os.environ.get('MLFLOW_AUTH_ADMIN_USERNAME', 'admin')}",
        f"admin_password = {password_file.read_text().strip()}",
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth",
        "",
    ]).encode(), replace=True)  # 0600 from its first byte (it holds the admin password)
    return ini, password_file


def command(config: ServerConfig) -> list[str]:
    """The `mlflow server` command line (artifacts served through the server)."""
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", config.backend,
           "--artifacts-destination", config.artifacts, "--serve-artifacts",
           "--host", config.host, "--port", str(config.port), "--workers", str(config.workers)]
    if config.basic_auth:
        cmd += ["--app-name", "basic-auth"]
    return cmd


def environment(config: ServerConfig) -> dict[str, str]:
    """The server's environment. MLflow's job runner (GenAI background jobs: 8 huey worker
    processes foldwise never uses) is off unless MLFLOW_SERVER_ENABLE_JOB_EXECUTION says otherwise."""
    env = dict(os.environ)
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    if config.basic_auth:
        ini, _ = auth_files(config)
        env["MLFLOW_AUTH_CONFIG_PATH"] = str(ini)
        env.setdefault("MLFLOW_FLASK_SERVER_SECRET_KEY", _secret(config.data_dir / "flask-secret-key"))
    return env


def _secret(path: Path) -> str:
    """A random secret kept in `path` (0600), so restarts keep sessions and CSRF tokens valid."""
    if not path.exists():
        write_private(path, secrets.token_urlsafe(32).encode())
    return path.read_text().strip()


def start(config: ServerConfig, log_file: Path) -> subprocess.Popen:
    """Start the server detached (its own session, so it outlives the caller); not yet ready."""
    validate(config)
    config.data_dir.mkdir(parents=True, exist_ok=True)
    if "://" not in config.artifacts:
        Path(config.artifacts).mkdir(parents=True, exist_ok=True)
    log = open(log_file, "ab")  # noqa: SIM115 - handed to the child
    try:
        # The server inherits a umask of 077: basic_auth.db (users and password hashes), the store and
        # its artifacts are created private to this user, not readable by the machine's other users.
        with private_umask():
            return subprocess.Popen(command(config), env=environment(config), stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, cwd=config.data_dir, start_new_session=True)
    finally:
        log.close()


def wait_ready(url: str, proc: subprocess.Popen | None = None, timeout: float = 60.0, log_file: Path | None = None) -> None:
    """Poll `/health` until the server answers; raise with the log's tail if it died or hung."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"MLflow server exited with code {proc.returncode}{_tail(log_file)}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.3)
    raise RuntimeError(f"MLflow server at {url} did not answer /health within {timeout:.0f} s{_tail(log_file)}")


def _tail(log_file: Path | None) -> str:
    if log_file is None or not log_file.exists():
        return ""
    lines = log_file.read_text(errors="replace").strip().splitlines()[-5:]
    return ":\n" + "\n".join(lines) if lines else ""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m foldwise.infra.mlflow_server", description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default="mlflow-server", help="sqlite store, local artifacts, auth files, log")
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("--host", default=LOCALHOST, help="interface to bind (default 127.0.0.1: tunnel in over SSH)")
    p.add_argument("--backend-store-uri", help="sqlite:///PATH or postgresql://... (default sqlite in --data-dir)")
    p.add_argument("--artifacts-destination", help="a path or s3://BUCKET/PREFIX (default --data-dir/artifacts)")
    p.add_argument("--basic-auth", action="store_true", help="require a user and password (MLflow basic auth)")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--detach", action="store_true", help="start in the background, wait until ready, exit")
    p.add_argument("--pid-file", help="with --detach: write the server's pid here")
    p.add_argument("--log-file", help="with --detach: server log (default --data-dir/mlflow-server.log)")
    args = p.parse_args(argv)
    config = ServerConfig(data_dir=Path(args.data_dir).expanduser().resolve(), port=args.port, host=args.host,
                          backend_store_uri=args.backend_store_uri, artifacts_destination=args.artifacts_destination,
                          basic_auth=args.basic_auth, workers=args.workers)
    try:
        validate(config)
    except ServerConfigError as e:
        print(f"mlflow_server: error: {e}", file=sys.stderr)
        return 2
    if not args.detach:
        config.data_dir.mkdir(parents=True, exist_ok=True)
        os.chdir(config.data_dir)
        env = environment(config)
        os.umask(0o077)  # as `start`: the auth database and the store private to this user
        os.execve(sys.executable, command(config), env)
    log_file = Path(args.log_file).expanduser() if args.log_file else config.data_dir / "mlflow-server.log"
    proc = start(config, log_file)
    try:
        wait_ready(config.url, proc, log_file=log_file)
    except RuntimeError as e:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        print(f"mlflow_server: failed: {e}", file=sys.stderr)
        return 1
    if args.pid_file:
        Path(args.pid_file).expanduser().write_text(str(proc.pid))
    auth = f"; basic auth on (admin password in {config.data_dir / ADMIN_PASSWORD_FILE})" if config.basic_auth else ""
    print(f"MLflow server at {config.url} (pid {proc.pid}; store {config.backend}; artifacts {config.artifacts}{auth})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
