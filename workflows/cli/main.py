"""The `foldwise` command: parse, call a workflow, print, exit with 0 / 1 (failed) / 2 (bad input).

Each command lives in its own module exposing `add_arguments(parser)` and
`command(args) -> int`; this file only routes. Heavy imports (Ray, MLflow, models)
happen inside the commands so `--help` stays instant.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import threading

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2

# command -> (module, one-line help). Add a command by adding a line here.
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("foldwise.workflows.cli.run", "cross-validate every model of a spec, ensemble, write a submission"),
    "predict": ("foldwise.workflows.cli.predict", "a trained run's fold models + ensemble on new rows: Kaggle-shaped output, chunked"),
    "init": ("foldwise.workflows.cli.init", "write a starter spec for your data file"),
    "check": ("foldwise.workflows.cli.check", "check the data before compute: errors, warnings, leaks, train/test drift (adversarial AUC)"),
    "compare": ("foldwise.workflows.cli.compare", "write up a model change: RUN_B vs RUN_A per fold, per slice, efficiency"),
    "ui": ("foldwise.workflows.cli.ui", "the MLflow UI on foldwise's tracking store, on 127.0.0.1"),
    "sweep": ("foldwise.workflows.cli.sweep", "tune a model's hyperparameters: Optuna on Ray Tune, pruned by fold, resumable, every trial in MLflow"),
    "ablate": ("foldwise.workflows.cli.ablate", "what each feature group is worth: drop one group at a time, paired per-fold deltas"),
    "dag": ("foldwise.workflows.cli.dag", "the node graph of a spec (steps, data, folds, ensemble) with cache state and keys, and its picture"),
    "cache": ("foldwise.workflows.cli.cache", "list the result cache (ls) or remove old entries (prune [--older-than 7d])"),
    "cluster": ("foldwise.workflows.cli.cluster", "a desktop cluster: `up` starts a Ray head + MLflow server + warm command server, `down` stops them, `status`"),
    "submit": ("foldwise.workflows.cli.submit", "run a spec on a Ray cluster as a Ray Job (project uploaded, logs streamed with --wait)"),
    "jobs": ("foldwise.workflows.cli.jobs", "list a Ray cluster's jobs"),
    "logs": ("foldwise.workflows.cli.logs", "a Ray job's log (--follow to stream it)"),
    "stop": ("foldwise.workflows.cli.stop", "stop a Ray job"),
}


def add_common_arguments(p: argparse.ArgumentParser) -> None:
    """The flags every spec-driven command shares (DESIGN.md: common flags)."""
    p.add_argument("spec", help="workflow spec (YAML)")
    p.add_argument("--out", help="output folder (default outputs/<spec name>/<run id>/)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: spec, $MLFLOW_TRACKING_URI, sqlite:///mlflow.db)")
    p.add_argument("--address", help="Ray address (default: the desktop cluster `foldwise cluster up` started from "
                   "this folder if it runs, else a new local Ray; `local`: always a new local Ray)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override a spec key, e.g. --set cv.folds=10 --set models.0.params.C=0.5")
    p.add_argument("--executor", choices=("auto", "ray", "local"), default="auto",
                   help="auto: small work in this process, the rest on Ray; 'ray' always Ray; "
                        "'local' the same DAG in this process (for pdb)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-cache", action="store_true", help="recompute every node (results are still written to the cache)")
    p.add_argument("--cache", dest="cache_root", metavar="DIR_OR_URI",
                   help="cache root (default $FOLDWISE_CACHE or .foldwise/cache)")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """Every command's parser; with `only`, just that command's module is imported (the others keep
    their one-line help), so `foldwise --help` and each command start without the rest's imports."""
    parser = argparse.ArgumentParser(prog="foldwise", description="Kaggle-grade cross-validation pipelines on Ray, "
                                     "tracked in MLflow: `foldwise COMMAND --help` for a command's flags.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module, help_text) in COMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        if only is None or name == only:
            importlib.import_module(module).add_arguments(command)
    return parser


def bad_input(message: str) -> int:
    print(f"foldwise: error: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT


def failed(message: str, run_id: str | None = None) -> int:
    where = f" (MLflow run {run_id} marked FAILED)" if run_id else ""
    print(f"foldwise: failed: {message}{where}", file=sys.stderr)
    return EXIT_FAILED


def interruptible() -> None:
    """Ctrl-C and `foldwise stop` (SIGINT) end a command cleanly: its MLflow runs marked FAILED,
    finished folds cached. A process started in the background by a script (`nohup foldwise
    cluster up &`) inherits SIGINT ignored, and so would every Ray job driver of that cluster,
    which `foldwise stop` could then only kill after its grace period, leaving runs RUNNING."""
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    # SIGTERM (`kill`, a service manager, Ray stopping a job) ends a command as Ctrl-C does: its MLflow
    # runs marked FAILED, the local Ray it started shut down, finished folds cached. By default it would
    # kill the driver on the spot, leaving its runs RUNNING.
    if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _stop_as_interrupt)


def _stop_as_interrupt(signum: int, frame: object) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the clean-up short
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    if argv is None:  # the `foldwise` process itself: the desktop cluster's warm server may run it
        from foldwise.workflows.cli.warm_client import delegate

        delegated = delegate(sys.argv[1:])
        if delegated is not None:
            return delegated
    # As with `python -m`, the working directory is importable, so `type: mypkg.models:MyAdapter`
    # finds the user's own code (Ray workers get the driver's working directory too).
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    words = sys.argv[1:] if argv is None else argv
    first = next((w for w in words if not w.startswith("-")), None)
    args = build_parser(only=first if first in COMMANDS else "").parse_args(argv)
    on_term = signal.getsignal(signal.SIGTERM) if threading.current_thread() is threading.main_thread() else None
    interruptible()
    try:
        return importlib.import_module(COMMANDS[args.command][0]).command(args)
    except KeyboardInterrupt:
        print("foldwise: interrupted", file=sys.stderr)
        return EXIT_FAILED
    finally:
        if on_term is not None:  # main() called in a process that lives on (a test, a notebook)
            signal.signal(signal.SIGTERM, on_term)


if __name__ == "__main__":
    sys.exit(main())
