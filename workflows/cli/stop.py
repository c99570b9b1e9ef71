"""`foldwise stop JOB`: stop a Ray job (its driver and tasks); its MLflow run is marked FAILED."""

from __future__ import annotations

import argparse
import time


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("job", help="the job's submission id (see `foldwise jobs`)")
    p.add_argument("--address", help="the head's dashboard, http://HOST:8265 (default: as for submit)")


def command(args: argparse.Namespace) -> int:
    from foldwise.infra.jobs import TERMINAL, JobsError, call, connect, resolve_address, status_name
    from foldwise.workflows.cli.main import EXIT_OK, bad_input

    try:
        address = resolve_address(args.address)
        client = connect(address)
        before = status_name(call(client.get_job_status, args.job, address=address, job_id=args.job))
        if before in TERMINAL:
            print(f"job {args.job} already ended: {before}")
            return EXIT_OK
        call(client.stop_job, args.job, address=address, job_id=args.job)
        deadline = time.monotonic() + 30
        while (now := status_name(client.get_job_status(args.job))) not in TERMINAL and time.monotonic() < deadline:
            time.sleep(0.5)
    except JobsError as e:
        return bad_input(str(e))
    print(f"job {args.job}: {now}" + ("" if now in TERMINAL else " (still stopping)"))
    return EXIT_OK
