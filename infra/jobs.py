"""`foldwise submit SPEC --address http://HOST:8265`: run a foldwise command on a Ray cluster.

The job is a Ray Job: the project folder (the working directory, minus outputs, MLflow
stores, caches, .git and virtualenvs) is uploaded as the job's `working_dir`, so the
cluster runs exactly the code and specs on the laptop; its entrypoint is `foldwise
run|sweep|ablate SPEC [args]`, which drives the DAG from the head node as usual. The
tracking URI is `--tracking-uri` when given (passed as MLFLOW_TRACKING_URI), else the
cluster's own (`foldwise cluster up` and cluster.yaml set it on the head). The spec and the
trailing arguments are checked here first, so a typo fails in a second with exit code 2
instead of after an upload.

Ray's token authentication stays on: requests carry `Authorization: Bearer <token>` with
the token Ray itself would use ($RAY_AUTH_TOKEN, $RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token).

This module talks to the Jobs API of a cluster's dashboard (an HTTP client), which is not
task execution: `foldwise.workflows.engine.executor` connects a driver to a cluster and submits tasks,
while this code runs on the user's laptop where no Ray runtime starts. So the Jobs SDK
calls live here, with `jobs`, `logs` and `stop` (thin command modules) built on them.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import secrets
import shlex
import socket
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

COMMANDS = ("run", "sweep", "ablate")
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
# Never uploaded: results, stores and environments (gitignore-style, relative to the project root).
EXCLUDES = [".git", ".venv", ".venv-*", "venv", "outputs", "mlflow.db", "mlruns", "mlartifacts", ".foldwise",
            "__pycache__", "*.pyc", ".pytest_cache", "*.egg-info", "build", "dist", "benchmarks/out",
            "basic_auth.db"]
CONNECT_TIMEOUT = 5.0


class JobsError(RuntimeError):
    """The cluster cannot be reached or refuses us, or the job does not exist: exit code 2."""


# --------------------------------------------------------------------------- the `submit` command


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", help="workflow spec (YAML) inside the project folder")
    p.usage = "foldwise submit SPEC [--address URL] [--wait] [--tracking-uri URI] [options] [-- ARGS for the command]"
    p.set_defaults(args=[])
    _split_at_double_dash(p)
    p.add_argument("--address", help="the head's dashboard, http://HOST:8265 (default $RAY_API_SERVER_ADDRESS, "
                                     "or the desktop cluster of `foldwise cluster up`)")
    p.add_argument("--command", dest="job_command", choices=COMMANDS, default="run",
                   help="foldwise command to run on the cluster (default run)")
    p.add_argument("--wait", action="store_true", help="stream the job's logs and exit with its status (0 succeeded)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI for the job (default: the cluster's MLFLOW_TRACKING_URI)")
    p.add_argument("--working-dir", default=".", help="project folder uploaded as the job's working_dir (default .)")


def _split_at_double_dash(p: argparse.ArgumentParser) -> None:
    """Everything after `--` goes to the job's command verbatim (as `args`).

    argparse cannot do this itself: a positional list after options is consumed (empty)
    at the first positional, so `SPEC --wait -- --set k=v` would be rejected. The parent
    parser hands this sub-parser its arguments through `parse_known_args`, so splitting
    there keeps cli.py unchanged.
    """
    parse = p.parse_known_args

    def parse_known_args(args: list[str] | None = None, namespace: argparse.Namespace | None = None):
        args = list(sys.argv[1:] if args is None else args)
        tail: list[str] = []
        if "--" in args:
            at = args.index("--")
            args, tail = args[:at], args[at + 1:]
        parsed, extras = parse(args, namespace)
        parsed.args = tail
        return parsed, extras

    p.parse_known_args = parse_known_args  # type: ignore[method-assign]


def command(args: argparse.Namespace) -> int:
    from foldwise.workflows.cli.main import EXIT_FAILED, EXIT_OK, bad_input

    try:
        job = prepare_job(args.spec, args.job_command, args.args, args.working_dir, args.tracking_uri)
        address = resolve_address(args.address)
        client = connect(address)
        job_id = client.submit_job(entrypoint=job.entrypoint, runtime_env=job.runtime_env,
                                   submission_id=job.submission_id, metadata=job.metadata)
    except JobsError as e:
        return bad_input(str(e))
    print(f"submitted job {job_id} to {address}: {job.entrypoint}", flush=True)
    print(f"tracking: {args.tracking_uri or 'the cluster default (its MLFLOW_TRACKING_URI)'}", flush=True)
    if not args.wait:
        print(f"follow: foldwise logs {job_id} --address {address} --follow")
        print(f"stop:   foldwise stop {job_id} --address {address}")
        print(job_id)
        return EXIT_OK
    try:
        final = follow(client, job_id)
    except KeyboardInterrupt:
        print(f"\ndetached; job {job_id} keeps running (foldwise stop {job_id} --address {address})", file=sys.stderr)
        return EXIT_FAILED
    info = client.get_job_info(job_id)
    seconds = ((info.end_time or 0) - (info.start_time or 0)) / 1000
    print(f"job {job_id} {final} in {seconds:.1f} s" + (f": {info.message}" if final != "SUCCEEDED" and info.message else ""),
          file=sys.stderr if final != "SUCCEEDED" else sys.stdout)
    return EXIT_OK if final == "SUCCEEDED" else EXIT_FAILED


@dataclass(frozen=True)
class Job:
    """What is sent: entrypoint, runtime env, id and metadata (built without any network)."""

    entrypoint: str
    runtime_env: dict[str, Any]
    submission_id: str
    metadata: dict[str, str]


def prepare_job(spec: str, cmd: str, extra: list[str], working_dir: str, tracking_uri: str | None) -> Job:
    """Check the spec and arguments as the cluster will see them; build the job."""
    from foldwise.workflows.cli.main import COMMANDS as CLI_COMMANDS
    from foldwise.workflows.cli.main import build_parser
    from foldwise.workflows.errors import SpecError
    from foldwise.workflows.pipeline.spec import load_spec

    root = Path(working_dir).expanduser().resolve()
    if not root.is_dir():
        raise JobsError(f"--working-dir {working_dir!r} is not a folder")
    spec_path = Path(spec).expanduser().resolve()
    if not spec_path.is_file():
        raise JobsError(f"spec {spec!r} does not exist")
    if not spec_path.is_relative_to(root):
        raise JobsError(f"spec {spec!r} is outside the uploaded project folder {str(root)!r}; "
                        "move it into the project or pass --working-dir")
    if cmd not in CLI_COMMANDS:
        raise JobsError(f"--command {cmd}: this foldwise has no `{cmd}` command (available: "
                        f"{', '.join(c for c in COMMANDS if c in CLI_COMMANDS)})")
    for flag in ("--address", "--executor"):
        if any(a == flag or a.startswith(flag + "=") for a in extra):
            raise JobsError(f"{flag} after `--`: a job always runs on the cluster it is submitted to; drop it")
    rel = spec_path.relative_to(root).as_posix()
    argv = [cmd, rel, *extra]
    try:
        parsed = _parse_quietly(build_parser(), argv)
    except ValueError as e:
        raise JobsError(f"arguments after `--` for `foldwise {cmd}`: {e}") from None
    try:
        loaded = load_spec(spec_path, list(getattr(parsed, "overrides", []) or []))
    except SpecError as e:
        raise JobsError(str(e)) from None
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    name = re.sub(r"[^a-z0-9]+", "-", loaded.name.lower()).strip("-")[:40] or "spec"
    # `foldwise stop` interrupts the driver (SIGINT, as Ctrl-C would) instead of Ray's default
    # SIGTERM, so the run ends the way an interrupted run does: its MLflow runs are marked
    # FAILED and finished folds stay cached; SIGKILL follows only if it has not exited in 20 s.
    env_vars = {"PYTHONUNBUFFERED": "1", "RAY_JOB_STOP_SIGNAL": "SIGINT", "RAY_JOB_STOP_WAIT_TIME_S": "20"}
    if tracking_uri:
        env_vars["MLFLOW_TRACKING_URI"] = tracking_uri
    return Job(entrypoint=shlex.join(["foldwise", *argv]),
               runtime_env={"working_dir": str(root), "excludes": EXCLUDES, "env_vars": env_vars},
               submission_id=f"foldwise-{cmd}-{name}-{stamp}-{secrets.token_hex(2)}",
               metadata={"foldwise.command": cmd, "foldwise.spec": rel, "foldwise.experiment": loaded.experiment})


def _parse_quietly(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """argparse without printing usage or exiting: its error message as a ValueError."""
    def fail(message: str) -> None:
        raise ValueError(message)

    for action in parser._subparsers._group_actions if parser._subparsers else []:  # noqa: SLF001
        for sub in getattr(action, "choices", {}).values():
            sub.error = fail  # type: ignore[method-assign]
    parser.error = fail  # type: ignore[method-assign]
    return parser.parse_args(argv)


# --------------------------------------------------------------------------- talking to the cluster


def resolve_address(explicit: str | None) -> str:
    """--address, $RAY_API_SERVER_ADDRESS, an http $RAY_ADDRESS, or the desktop cluster's dashboard."""
    from foldwise.infra.cluster import DEFAULT_DIR, ClusterState

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


def auth_headers() -> dict[str, str]:
    """`Authorization: Bearer <token>` with the token Ray would load, or {} when there is none."""
    from ray._raylet import AuthenticationTokenLoader

    loader = AuthenticationTokenLoader.instance()
    if not loader.has_token(ignore_auth_mode=True):
        return {}
    return {"Authorization": f"Bearer {loader.get_raw_token(ignore_auth_mode=True).strip()}"}


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
        return JobSubmissionClient(address, headers=auth_headers())
    except AuthenticationError as e:
        raise JobsError(token_problem(address, e)) from None
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise JobsError(f"{address} is not a Ray dashboard with the Jobs API: {_first_line(e)}") from None


def token_problem(address: str, error: Exception) -> str:
    have = bool(auth_headers())
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


def follow(client: Any, job_id: str) -> str:
    """Print the job's log as it is written; return its final status."""
    async def stream() -> None:
        async for chunk in client.tail_job_logs(job_id):
            sys.stdout.write(chunk)
            sys.stdout.flush()

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
