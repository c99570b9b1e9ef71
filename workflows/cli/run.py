"""`foldwise run SPEC`: the CV pipeline from the command line."""

from __future__ import annotations

import argparse

from foldwise.infra import storage
from foldwise.workflows.cli.main import EXIT_OK, add_common_arguments, bad_input, failed


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common_arguments(p)
    p.add_argument("--no-checks", action="store_true",
                   help="skip the cheap data checks (warnings, full-file errors) that run before any task")
    p.add_argument("--register", metavar="NAME", default=None,
                   help="register the run's model (logged as `model/` on its MLflow run) as a new version of NAME")


def command(args: argparse.Namespace) -> int:
    from foldwise.workflows.commands.run import run_cv
    from foldwise.workflows.errors import InputError, RunFailed, SpecError

    try:
        result = run_cv(args.spec, overrides=args.overrides, out=args.out, tracking_uri=args.tracking_uri,
                        address=args.address, executor=args.executor, progress=not args.no_progress,
                        no_cache=args.no_cache, cache_root=args.cache_root, checks=not args.no_checks,
                        register=args.register)
    except (SpecError, InputError) as e:
        return bad_input(str(e))
    except RunFailed as e:
        return failed(str(e), e.run_id)
    print_leaderboard(result.summary)
    print(storage.join(result.out_dir, "summary.json"))
    return EXIT_OK


def print_leaderboard(summary: dict) -> None:
    import numpy as np
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{summary['experiment']}: {summary['metric']}",
                  caption=f"{summary['folds']['n']} {summary['folds']['scheme']} folds"
                          + (f" x {r} repeats" if (r := summary['folds'].get('repeats', 1)) > 1 else "")
                          + f", seed {summary['folds']['seed']}; mean of fold scores, greater is better")
    for col in ("model", "cv score", "std", "min fold", "fit s (all folds)", "note"):
        table.add_column(col, justify="left" if col in ("model", "note") else "right")
    rows = [(name, m["cv_score"], m["fold_scores"], sum(m["fit_seconds"]),
             f"{sum(m['cached'])}/{len(m['cached'])} folds cached" if any(m["cached"]) else "")
            for name, m in summary["models"].items()]
    if len(summary["models"]) > 1:
        ens = summary["ensemble"]
        weights = ", ".join(f"{k} {v:.2f}" for k, v in ens["weights"].items())
        rows.append((f"ensemble ({ens['method']})", ens["cv_score"], ens["fold_scores"], 0.0, weights))
    for name, cv, folds, fit, note in sorted(rows, key=lambda r: -r[1]):
        table.add_row(name, f"{cv:.5f}", f"{np.std(folds, ddof=1):.5f}", f"{min(folds):.5f}", f"{fit:.2f}", note)
    console = Console()
    console.print(table)
    if summary.get("submission"):
        sub = summary["submission"]
        console.print(f"submission.csv {', '.join(sub['columns'])}: {sub['holds']}", markup=False)
    console.print(f"MLflow run {summary['run_id']} in experiment {summary['experiment']!r} ({summary['tracking_uri']})")
