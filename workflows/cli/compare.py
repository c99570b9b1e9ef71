"""`foldwise compare RUN_A RUN_B`: a model-change write-up from the command line
(reading the runs and writing it up: `foldwise.workflows.commands.compare`)."""

from __future__ import annotations

import argparse

from foldwise.infra import storage
from foldwise.workflows.cli.main import EXIT_OK, bad_input


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_a", metavar="RUN_A", help="baseline: run id, run name, or PARENT/MODEL for one model's child run")
    p.add_argument("run_b", metavar="RUN_B", help="the change: run id, run name, or PARENT/MODEL")
    p.add_argument("--out", help="output folder (default outputs/<experiment>/compare-<A>-vs-<B>/, "
                                 "under $FOLDWISE_OUTPUTS when set)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI, sqlite:///mlflow.db)")
    p.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples per slice (default 200)")
    p.add_argument("--no-log", action="store_true", help="write the files only; do not touch B's MLflow run")


def command(args: argparse.Namespace) -> int:
    from foldwise.workflows.commands.compare import CompareInputError, compare

    if args.bootstrap < 10:
        return bad_input(f"--bootstrap: at least 10 resamples (got {args.bootstrap})")
    try:
        result = compare(args.run_a, args.run_b, out=args.out, tracking_uri=args.tracking_uri,
                         n_boot=args.bootstrap, log=not args.no_log)
    except CompareInputError as e:
        return bad_input(str(e))
    print(result.comparison.verdict)
    print(storage.join(result.out_dir, "summary.json"))
    return EXIT_OK
