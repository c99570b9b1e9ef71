"""`foldwise check SPEC [--reference OLD_DATA]`: the data checks and drift from the command line
(the checks themselves: `foldwise.workflows.commands.check`)."""

from __future__ import annotations

import argparse
from typing import Any

from foldwise.infra import storage
from foldwise.workflows.cli.main import EXIT_OK, add_common_arguments, bad_input, failed


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common_arguments(p)
    p.add_argument("--reference", metavar="OLD_DATA",
                   help="compare data.train with this old version of it (instead of with data.test)")
    p.add_argument("--folds", type=int, help="adversarial validation folds (default: cv.folds)")
    p.add_argument("--max-rows", type=int, default=200_000,
                   help="rows sampled for adversarial validation (default 200000; drift statistics use every row)")


def command(args: argparse.Namespace) -> int:
    from foldwise.workflows.commands.check import run_check
    from foldwise.workflows.errors import InputError, RunFailed, SpecError

    if args.folds is not None and args.folds < 2:
        return bad_input(f"--folds must be at least 2 (got {args.folds})")
    try:
        result = run_check(args.spec, reference=args.reference, overrides=args.overrides, out=args.out,
                           tracking_uri=args.tracking_uri, address=args.address, executor=args.executor,
                           folds=args.folds, max_rows=args.max_rows)
    except (SpecError, InputError) as e:
        return bad_input(str(e))
    except RunFailed as e:
        return failed(str(e), e.run_id)
    print_result(result.summary)
    print(storage.join(result.out_dir, "summary.json"))
    return EXIT_OK


def print_result(summary: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.markup import escape

    from foldwise.tasks.drift import PSI_MAJOR
    from foldwise.workflows.commands.check import VERDICT_TEXT

    console = Console(soft_wrap=True)
    for w in summary["warning_details"]:
        console.print(f"[yellow]warning[/yellow]: {escape(w['message'])} [dim]\\[{w['code']}][/dim]")
    if summary["adversarial_auc"] is None:
        console.print(f"no drift check: {escape(summary['compared']['note'])}")
    else:
        lo, hi = summary["adversarial_auc_ci"]
        top = ", ".join(summary["top_adversarial_features"][:3])
        console.print(f"adversarial AUC {summary['adversarial_auc']:.3f} [{lo:.3f}, {hi:.3f}] "
                      f"({VERDICT_TEXT[summary['adversarial_verdict']]}; {summary['compared']['train_label']} vs "
                      f"{summary['compared']['other_label']}); relies most on: {escape(top)}")
        major = [d["feature"] for d in summary["drift"] if d["psi"] >= PSI_MAJOR]
        if major:
            console.print(f"PSI >= {PSI_MAJOR}: {escape(', '.join(major))}")
    console.print(f"{len(summary['warnings'])} warning(s); report {escape(summary['outputs']['report'])}; "
                  f"MLflow run {summary['run_id']} in experiment {summary['experiment']!r}")
