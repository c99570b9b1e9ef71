"""The `foldwise` command: parse, call a workflow, print, exit with 0 / 1 (failed) / 2 (bad input).

Heavy imports (Ray, MLflow, models) happen inside the commands so `--help` stays instant.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", help="workflow spec (YAML)")
    p.add_argument("--out", help="output folder (default outputs/<spec name>/<run id>/)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: spec, $MLFLOW_TRACKING_URI, sqlite:///mlflow.db)")
    p.add_argument("--address", help="Ray address (default: start a local Ray)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override a spec key, e.g. --set cv.folds=10 --set models.0.params.C=0.5")
    p.add_argument("--executor", choices=("ray", "local"), default="ray",
                   help="'local' runs the same DAG in this process (for pdb)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="foldwise", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="cross-validate every model of a spec, ensemble, write a submission")
    _common(run)
    init = sub.add_parser("init", help="write a starter spec for your data file")
    init.add_argument("data", help="training data (.csv/.parquet path or URI, or sklearn:NAME)")
    init.add_argument("--target", required=True, help="target column")
    init.add_argument("--id", help="id column (kept out of features, written to the submission)")
    init.add_argument("--test", help="test data with the same columns minus the target")
    init.add_argument("--name", help="spec name (default: the data file's stem)")
    init.add_argument("--out", help="where to write the spec (default: <name>.yaml)")
    init.add_argument("--force", action="store_true", help="overwrite an existing spec file")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = {"run": _cmd_run, "init": _cmd_init}[args.command]
    try:
        return handler(args)
    except KeyboardInterrupt:
        print("foldwise: interrupted", file=sys.stderr)
        return EXIT_FAILED


def _bad_input(message: str) -> int:
    print(f"foldwise: error: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT


def _cmd_run(args: argparse.Namespace) -> int:
    from workflows.check import InputError
    from workflows.cv import RunFailed, run_cv
    from workflows.spec import SpecError

    try:
        result = run_cv(args.spec, overrides=args.overrides, out=args.out, tracking_uri=args.tracking_uri,
                        address=args.address, executor=args.executor, progress=not args.no_progress)
    except (SpecError, InputError) as e:
        return _bad_input(str(e))
    except RunFailed as e:
        where = f" (MLflow run {e.run_id} marked FAILED)" if e.run_id else ""
        print(f"foldwise: run failed: {e}{where}", file=sys.stderr)
        return EXIT_FAILED
    _print_leaderboard(result.summary)
    print(str(Path(result.out_dir) / "summary.json"))
    return EXIT_OK


def _print_leaderboard(summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    metric = summary["metric"]
    import numpy as np

    table = Table(title=f"{summary['experiment']}: {metric}",
                  caption=f"{summary['folds']['n']} {summary['folds']['scheme']} folds, seed {summary['folds']['seed']}; "
                          "mean of fold scores, greater is better")
    for col in ("model", "cv score", "std", "min fold", "fit s", "note"):
        table.add_column(col, justify="left" if col in ("model", "note") else "right")
    rows = [(name, m["cv_score"], m["fold_scores"], sum(m["fit_seconds"]), "") for name, m in summary["models"].items()]
    if len(summary["models"]) > 1:
        ens = summary["ensemble"]
        weights = ", ".join(f"{k} {v:.2f}" for k, v in ens["weights"].items())
        rows.append((f"ensemble ({ens['method']})", ens["cv_score"], ens["fold_scores"], 0.0, weights))
    for name, cv, folds, fit, note in sorted(rows, key=lambda r: -r[1]):
        table.add_row(name, f"{cv:.5f}", f"{np.std(folds, ddof=1):.5f}", f"{min(folds):.5f}", f"{fit:.2f}", note)
    console = Console()
    console.print(table)
    console.print(f"MLflow run {summary['run_id']} in experiment {summary['experiment']!r} ({summary['tracking_uri']})")


def _cmd_init(args: argparse.Namespace) -> int:
    from workflows.starter import StarterError, write_starter_spec

    try:
        path = write_starter_spec(args.data, target=args.target, id_column=args.id, test=args.test, name=args.name,
                                  out=args.out, force=args.force)
    except StarterError as e:
        return _bad_input(str(e))
    print(f"wrote a starter spec; run it with: foldwise run {path}", file=sys.stderr)
    print(str(path))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
