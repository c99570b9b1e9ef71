"""`foldwise submit SPEC --address http://HOST:8265`: run a foldwise command on a Ray cluster.

The job (project upload, entrypoint, environment) and the Jobs API client are
`foldwise.infra.jobs`. This module checks the spec and the trailing arguments first, with the
same parser and spec loader the cluster will use, so a typo fails in a second with exit code 2
instead of after an upload; then it submits and, with --wait, streams the job's log and exits
with its status.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from foldwise.infra.jobs import Job

JOB_COMMANDS = ("run", "sweep", "ablate")  # the foldwise commands a job may run


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", help="workflow spec (YAML) inside the project folder")
    p.usage = "foldwise submit SPEC [--address URL] [--wait] [--tracking-uri URI] [options] [-- ARGS for the command]"
    p.set_defaults(args=[])
    _split_at_double_dash(p)
    p.add_argument("--address", help="the head's dashboard, http://HOST:8265 (default $RAY_API_SERVER_ADDRESS, "
                                     "or the desktop cluster of `foldwise cluster up`)")
    p.add_argument("--command", dest="job_command", choices=JOB_COMMANDS, default="run",
                   help="foldwise command to run on the cluster (default run)")
    p.add_argument("--wait", action="store_true", help="stream the job's logs and exit with its status (0 succeeded)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI for the job (default: the cluster's MLFLOW_TRACKING_URI)")
    p.add_argument("--working-dir", default=".", help="project folder uploaded as the job's working_dir (default .)")


def _split_at_double_dash(p: argparse.ArgumentParser) -> None:
    """Everything after `--` goes to the job's command verbatim (as `args`).

    argparse cannot do this itself: a positional list after options is consumed (empty)
    at the first positional, so `SPEC --wait -- --set k=v` would be rejected. The parent
    parser hands this sub-parser its arguments through `parse_known_args`, so splitting
    there keeps main.py unchanged.
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
    from foldwise.infra import jobs
    from foldwise.workflows.cli.main import EXIT_FAILED, EXIT_OK, bad_input

    try:
        job = prepare_job(args.spec, args.job_command, args.args, args.working_dir, args.tracking_uri)
        address = jobs.resolve_address(args.address)
        client = jobs.connect(address)
        job_id = jobs.submit(client, job, address)
    except jobs.JobsError as e:
        return bad_input(str(e))
    print(f"submitted job {job_id} to {address}: {job.entrypoint}", flush=True)
    print(f"tracking: {args.tracking_uri or 'the cluster default (its MLFLOW_TRACKING_URI)'}", flush=True)
    if not args.wait:
        print(f"follow: foldwise logs {job_id} --address {address} --follow")
        print(f"stop:   foldwise stop {job_id} --address {address}")
        print(job_id)
        return EXIT_OK
    try:
        final = jobs.follow(client, job_id, write_stdout)
    except KeyboardInterrupt:
        print(f"\ndetached; job {job_id} keeps running (foldwise stop {job_id} --address {address})", file=sys.stderr)
        return EXIT_FAILED
    info = client.get_job_info(job_id)
    seconds = ((info.end_time or 0) - (info.start_time or 0)) / 1000
    print(f"job {job_id} {final} in {seconds:.1f} s" + (f": {info.message}" if final != "SUCCEEDED" and info.message else ""),
          file=sys.stderr if final != "SUCCEEDED" else sys.stdout)
    return EXIT_OK if final == "SUCCEEDED" else EXIT_FAILED


def write_stdout(text: str) -> None:
    """A job's log as it arrives (for `jobs.follow`)."""
    sys.stdout.write(text)
    sys.stdout.flush()


def prepare_job(spec: str, cmd: str, extra: list[str], working_dir: str, tracking_uri: str | None) -> Job:
    """Check the spec and arguments as the cluster will see them; build the job (JobsError when they are bad)."""
    from foldwise.infra.jobs import JobsError, build_job, locate_spec
    from foldwise.workflows.cli.main import COMMANDS, build_parser
    from foldwise.workflows.errors import SpecError
    from foldwise.workflows.pipeline.spec import load_spec

    root, rel = locate_spec(spec, working_dir)
    if cmd not in COMMANDS:
        raise JobsError(f"--command {cmd}: this foldwise has no `{cmd}` command (available: "
                        f"{', '.join(c for c in JOB_COMMANDS if c in COMMANDS)})")
    for flag in ("--address", "--executor"):
        if any(a == flag or a.startswith(flag + "=") for a in extra):
            raise JobsError(f"{flag} after `--`: a job always runs on the cluster it is submitted to; drop it")
    argv = [cmd, rel, *extra]
    try:
        parsed = _parse_quietly(build_parser(), argv)
    except ValueError as e:
        raise JobsError(f"arguments after `--` for `foldwise {cmd}`: {e}") from None
    try:
        loaded = load_spec(root / rel, list(getattr(parsed, "overrides", []) or []))
    except SpecError as e:
        raise JobsError(str(e)) from None
    return build_job(root, rel, argv, name=loaded.name, experiment=loaded.experiment, tracking_uri=tracking_uri)


def _parse_quietly(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """argparse without printing usage or exiting: its error message as a ValueError."""
    def fail(message: str) -> None:
        raise ValueError(message)

    for action in parser._subparsers._group_actions if parser._subparsers else []:  # noqa: SLF001
        for sub in getattr(action, "choices", {}).values():
            sub.error = fail  # type: ignore[method-assign]
    parser.error = fail  # type: ignore[method-assign]
    return parser.parse_args(argv)
