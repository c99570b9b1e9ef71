"""`foldwise logs JOB [--follow]`: a Ray job's driver log (Jobs API; see foldwise.infra.jobs)."""

from __future__ import annotations

import argparse
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("job", help="the job's submission id (see `foldwise jobs`)")
    p.add_argument("--address", help="the head's dashboard, http://HOST:8265 (default: as for submit)")
    p.add_argument("--follow", action="store_true", help="keep printing until the job ends; exit with its status")


def command(args: argparse.Namespace) -> int:
    from foldwise.infra.jobs import JobsError, call, connect, follow, resolve_address, status_name
    from foldwise.workflows.cli.main import EXIT_FAILED, EXIT_OK, bad_input

    try:
        address = resolve_address(args.address)
        client = connect(address)
        call(client.get_job_info, args.job, address=address, job_id=args.job)
        if not args.follow:
            sys.stdout.write(call(client.get_job_logs, args.job, address=address, job_id=args.job))
            return EXIT_OK
        final = follow(client, args.job, _write)
    except JobsError as e:
        return bad_input(str(e))
    except KeyboardInterrupt:
        return EXIT_FAILED
    print(f"job {args.job} {status_name(final)}", file=sys.stderr)
    return EXIT_OK if final == "SUCCEEDED" else EXIT_FAILED


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()
