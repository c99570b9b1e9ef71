"""A Ray Jobs client for foldwise: package a project as a job, reach a cluster, follow a job.

A job is a Ray Job: the project folder (the working directory, minus outputs, MLflow stores,
caches, .git and virtualenvs) is uploaded as the job's `working_dir`, so the cluster runs
exactly the code and specs on the laptop; its entrypoint is a foldwise command line (`foldwise
run|sweep|ablate SPEC [args]`, already checked by the `foldwise submit` command), which drives
the DAG from the head node as usual. The tracking URI is the one given (passed as
MLFLOW_TRACKING_URI), else the cluster's own (`foldwise cluster up` and cluster.yaml set it on
the head).

Ray's token authentication stays on: requests carry `Authorization: Bearer <token>` with the
token Ray itself would use (`infra.ray_token`).

This is an HTTP client of a cluster's dashboard, not task execution (foldwise's Ray executor
connects a driver to a cluster and submits tasks), and it runs on the user's laptop where no Ray
runtime starts. It prints nothing and knows no exit codes: every failure is a one-line JobsError,
which the `foldwise submit`, `jobs`, `logs` and `stop` commands report.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import shlex
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from foldwise.infra.cluster_state import DEFAULT_DIR, ClusterState
from foldwise.infra.ray_token import RayTokenError, auth_headers

TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
# Never uploaded: results, stores and environments (gitignore-style, relative to the project root).
EXCLUDES = [".git", ".venv", ".venv-*", "venv", "outputs", "mlflow.db", "mlruns", "mlartifacts", ".foldwise",
            "__pycache__", "*.pyc", ".pytest_cache", "*.egg-info", "build", "dist", "benchmarks/out",
            "basic_auth.db"]
CONNECT_TIMEOUT = 5.0


class JobsError(RuntimeError):
    """The job cannot be built, the cluster cannot be reached or refuses us, or the job does not exist."""


@dataclass(frozen=True)
class Job:
    """What is sent: entrypoint, runtime env, id and metadata (built without any network)."""

    entrypoint: str
    runtime_env: dict[str, Any]
    submission_id: str
    metadata: dict[str, str]


# --------------------------------------------------------------------------- packaging a job


def locate_spec(spec: str, working_dir: str) -> tuple[Path, str]:
    """(the project folder to upload, the spec's path inside it as the job will see it)."""
    root = Path(working_dir).expanduser().resolve()
    if not root.is_dir():
        raise JobsError(f"--working-dir {working_dir!r} is not a folder")
    spec_path = Path(spec).expanduser().resolve()
    if not spec_path.is_file():
        raise JobsError(f"spec {spec!r} does not exist")
    if not spec_path.is_relative_to(root):
        raise JobsError(f"spec {spec!r} is outside the uploaded project folder {str(root)!r}; "
                        "move it into the project or pass --working-dir")
    return root, spec_path.relative_to(root).as_posix()


def build_job(root: Path, spec: str, argv: Sequence[str], *, name: str, experiment: str,
              tracking_uri: str | None) -> Job:
    """The job that runs `foldwise ARGV` in the uploaded `root` (arguments checked by the caller).

    `spec` is the spec's path inside `root`, `name` and `experiment` the loaded spec's (for the
    submission id and the job's metadata)."""
    cmd = argv[0]
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:40] or "spec"
    # `foldwise stop` interrupts the driver (SIGINT, as Ctrl-C would) instead of Ray's default
    # SIGTERM, so the run ends the way an interrupted run does: its MLflow runs are marked
    # FAILED and finished folds stay cached; SIGKILL follows only if it has not exited in 20 s.
    env_vars = {"PYTHONUNBUFFERED": "1", "RAY_JOB_STOP_SIGNAL": "SIGINT", "RAY_JOB_STOP_WAIT_TIME_S": "20"}
    if tracking_uri:
        env_vars["MLFLOW_TRACKING_URI"] = tracking_uri
    return Job(entrypoint=shlex.join(["foldwise", *argv]),
               runtime_env={"working_dir": str(root), "excludes": EXCLUDES, "env_vars": env_vars},
               submission_id=f"foldwise-{cmd}-{slug}-{stamp}-{secrets.token_hex(2)}",
               metadata={"foldwise.command": cmd, "foldwise.spec": spec, "foldwise.experiment": experiment})


# --------------------------------------------------------------------------- talking to the cluster


def resolve_address(explicit: str | None) -> str:
    """--address, $RAY_API_SERVER_ADDRESS, an http $RAY_ADDRESS, or the desktop cluster's dashboard."""
    address = explicit or os.environ.get("RAY_API_SERVER_ADDRESS")
    if not address and os.environ.get("RAY_ADDRESS", "").startswith(("http://", "https://")):
        address = os.environ["RAY_ADDRESS"]
    if not address:
        state = ClusterState.load(Path(DEFAULT_DIR).resolve())
        if state is not None:
            address = state.dashboard_url
    if not address:
        raise JobsError("no --address: pass the head's dashboard as --address http://HOST:8265 "
                        "(or start a desktop cluster with `foldwise cluster up`)")
    if "://" not in address:
        address = f"http://{address}"
    parsed = urlparse(address)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise JobsError(f"--address {address!r}: use the dashboard's http://HOST:PORT (port 8265 by default), "
                        "not a ray:// or GCS address")
    return address.rstrip("/")


def _headers() -> dict[str, str]:
    try:
        return auth_headers()
    except RayTokenError as e:
        raise JobsError(f"Ray's token: {e}") from None


def connect(address: str) -> Any:
    """A JobSubmissionClient, or a JobsError within seconds that says what is wrong."""
    parsed = urlparse(address)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=CONNECT_TIMEOUT):
            pass
    except OSError as e:
        reason = "connection refused" if isinstance(e, ConnectionRefusedError) else (str(e) or type(e).__name__)
        raise JobsError(f"cannot reach a Ray cluster at {address} ({reason}); is it up? "
                        "(`foldwise cluster up`, or `ray up cluster.yaml` plus an SSH tunnel to port 8265)") from None
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address, headers=_headers())
    except AuthenticationError as e:
        raise JobsError(token_problem(address, e)) from None
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise JobsError(f"{address} is not a Ray dashboard with the Jobs API: {_first_line(e)}") from None


def token_problem(address: str, error: Exception) -> str:
    have = bool(_headers())
    what = "rejected this machine's Ray token" if have else "requires a Ray token and this machine has none"
    return (f"the Ray cluster at {address} {what}: copy the cluster's token (`ray get-auth-token` on the head) "
            "to ~/.ray/auth_token, or set RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH")


def call(fn: Any, *args: Any, address: str, job_id: str | None = None) -> Any:
    """A Jobs API call with its failures as one-line JobsErrors (unknown job, lost cluster)."""
    from ray.exceptions import AuthenticationError

    try:
        return fn(*args)
    except AuthenticationError as e:
        raise JobsError(token_problem(address, e)) from None
    except RuntimeError as e:
        if job_id is not None and ("404" in str(e) or "does not exist" in str(e)):
            raise JobsError(f"no job {job_id!r} at {address} (list them with `foldwise jobs --address {address}`)") from None
        raise JobsError(f"{address}: {_first_line(e)}") from None
    except (ConnectionError, OSError) as e:
        raise JobsError(f"lost the Ray cluster at {address}: {_first_line(e)}") from None


def submit(client: Any, job: Job, address: str) -> str:
    """Submit the job; its submission id."""
    return call(lambda: client.submit_job(entrypoint=job.entrypoint, runtime_env=job.runtime_env,
                                          submission_id=job.submission_id, metadata=job.metadata), address=address)


def follow(client: Any, job_id: str, write: Callable[[str], None]) -> str:
    """Hand the job's log to `write` as it is written; return its final status."""
    async def stream() -> None:
        async for chunk in client.tail_job_logs(job_id):
            write(chunk)

    try:
        asyncio.run(stream())
    except RuntimeError:
        pass  # the stream can close a moment before the status turns terminal: poll below
    while (state := status_name(client.get_job_status(job_id))) not in TERMINAL:
        time.sleep(0.5)
    return state


def status_name(status: Any) -> str:
    """'SUCCEEDED' for JobStatus.SUCCEEDED (a str enum) or a plain string."""
    return str(getattr(status, "value", status))


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
