"""`foldwise ablate SPEC [--groups a,b] [--steps s1,s2|all] [--models m1,m2]`: what each feature group is worth."""

from __future__ import annotations

import argparse
from typing import Any

from foldwise.infra import storage
from foldwise.workflows.cli.main import EXIT_OK, add_common_arguments, bad_input, failed


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common_arguments(p)
    p.add_argument("--groups", help="comma-separated names from features.groups to ablate (default: every group)")
    p.add_argument("--steps", help="comma-separated frame steps (steps:) to ablate, or 'all': each variant drops the "
                   "columns a step and its descendants made (default: none; alone, without features.groups, only steps)")
    p.add_argument("--models", help="comma-separated model names to use (default: every model of the spec)")
    p.add_argument("--bootstrap", type=int, default=None, metavar="N",
                   help="bootstrap resamples for the 95%% intervals (default 1000; 200 for metrics without a closed form)")
    p.add_argument("--repeats", type=int, default=3, metavar="N",
                   help="shuffles per group for permutation importance (default 3)")


def command(args: argparse.Namespace) -> int:
    from foldwise.workflows.commands.ablate import run_ablation
    from foldwise.workflows.errors import InputError, RunFailed, SpecError

    try:
        result = run_ablation(args.spec, groups=_names(args.groups), steps=_names(args.steps), models=_names(args.models),
                              overrides=args.overrides, out=args.out, tracking_uri=args.tracking_uri,
                              address=args.address, executor=args.executor, progress=not args.no_progress,
                              no_cache=args.no_cache, cache_root=args.cache_root, n_boot=args.bootstrap,
                              repeats=args.repeats)
    except (SpecError, InputError) as e:
        return bad_input(str(e))
    except RunFailed as e:
        return failed(str(e), e.run_id)
    print_table(result.summary)
    print(storage.join(result.out_dir, "summary.json"))
    return EXIT_OK


def _names(text: str | None) -> list[str] | None:
    return None if text is None else [n.strip() for n in text.split(",") if n.strip()]


def print_table(summary: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    base = summary["baseline"]
    folds = summary["folds"]
    table = Table(title=f"{summary['experiment']}: feature ablation, {summary['metric']} "
                        f"(baseline {base['cv_score']:.5f}{', cached' if base['cached'] else ''})",
                  caption=f"{folds['n']} {folds['scheme']} folds, seed {folds['seed']}; delta = variant - baseline, "
                          "< 0: the group helps; 95% paired bootstrap over OOF rows; fit s saved = baseline - "
                          "variant fit seconds, all models and folds (> 0: dropping the group saves time)")
    for col in ("group", "verdict", "delta", "95% interval", "columns", "fit s saved"):
        table.add_column(col, justify="left" if col in ("group", "verdict") else "right")
    style = {"helps": "green", "hurts": "red", "neutral": "dim"}
    for v in summary["variants"]:
        ci = v["delta_ci"]
        table.add_row(v["dropped"], f"[{style[v['verdict']]}]{v['verdict']}[/]", f"{v['delta']:+.5f}",
                      "n/a" if ci is None else f"[{ci[0]:+.5f}, {ci[1]:+.5f}]", str(len(v["columns"])),
                      f"{v['fit_seconds_saved']:+.2f}")
    console = Console()
    console.print(table)
    if summary["removal_candidates"]:
        console.print(f"candidates to remove: {', '.join(summary['removal_candidates'])}")
    console.print(f"MLflow run {summary['run_id']} in experiment {summary['experiment']!r} ({summary['tracking_uri']}); "
                  f"report {summary['outputs']['report']}")
