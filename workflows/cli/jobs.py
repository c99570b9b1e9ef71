"""`foldwise jobs`: the jobs of a Ray cluster, newest last (Jobs API; see foldwise.infra.jobs)."""

from __future__ import annotations

import argparse
from datetime import datetime


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", help="the head's dashboard, http://HOST:8265 (default: as for submit)")


def command(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from foldwise.infra.jobs import JobsError, call, connect, resolve_address, status_name
    from foldwise.workflows.cli.main import EXIT_OK, bad_input

    try:
        address = resolve_address(args.address)
        client = connect(address)
        jobs = call(client.list_jobs, address=address)
    except JobsError as e:
        return bad_input(str(e))
    table = Table(title=f"jobs at {address}")
    for col in ("job", "status", "started", "seconds", "entrypoint"):
        table.add_column(col, justify="right" if col == "seconds" else "left")
    for job in sorted(jobs, key=lambda j: j.start_time or 0):
        started = datetime.fromtimestamp(job.start_time / 1000).strftime("%Y-%m-%d %H:%M:%S") if job.start_time else ""
        seconds = f"{(job.end_time - job.start_time) / 1000:.1f}" if job.end_time and job.start_time else ""
        table.add_row(job.submission_id or job.job_id or "", status_name(job.status), started, seconds, job.entrypoint)
    Console(width=200).print(table)
    return EXIT_OK
