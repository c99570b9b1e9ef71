"""`foldwise sweep SPEC`: tune one model's hyperparameters (Optuna TPE on Ray Tune), every trial in MLflow."""

from __future__ import annotations

import argparse

from foldwise.infra import storage
from foldwise.workflows.cli.main import EXIT_OK, add_common_arguments, bad_input, failed


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common_arguments(p)
    p.add_argument("--trials", type=int, help="number of trials (default: search.trials)")
    p.add_argument("--concurrency", type=int, help="trials at once (default: as many as the cluster holds)")
    p.add_argument("--timeout", type=float, metavar="SECONDS", help="stop starting and running trials after this long")
    p.add_argument("--resume", nargs="?", const="latest", metavar="RUN_ID",
                   help="continue the latest unfinished sweep of this spec (or the one with this parent run id)")
    p.add_argument("--storage", metavar="DIR",
                   help="where sweeps keep their Ray Tune state (default $FOLDWISE_SWEEPS or .foldwise/sweeps)")
    p.add_argument("--register", metavar="NAME", default=None,
                   help="register the refit's logged model (needs search.refit: true) as a new version of NAME")


def command(args: argparse.Namespace) -> int:
    from foldwise.workflows.errors import InputError, RunFailed, SpecError

    if args.executor == "local":
        return bad_input("--executor local: a sweep runs its trials on Ray Tune; leave --executor out")
    try:
        from foldwise.workflows.commands.sweep import run_sweep

        result = run_sweep(args.spec, overrides=args.overrides, trials=args.trials, concurrency=args.concurrency,
                           timeout=args.timeout, resume=args.resume, out=args.out, tracking_uri=args.tracking_uri,
                           address=args.address, storage=args.storage, progress=not args.no_progress,
                           no_cache=args.no_cache, cache_root=args.cache_root, register=args.register)
    except (SpecError, InputError) as e:
        return bad_input(str(e))
    except RunFailed as e:
        return failed(str(e), e.run_id)
    print_trials(result)
    print(storage.join(result.out_dir, "summary.json"))
    return EXIT_OK


def print_trials(result) -> None:  # noqa: ANN001 - a foldwise.workflows.commands.sweep.SweepResult
    from rich.console import Console
    from rich.table import Table

    s = result.summary
    done = sorted((o for o in result.outcomes if o.state == "completed"), key=lambda o: -o.cv_score)[:5]
    c = s["trials"]
    models = ", ".join(s["model"]) if isinstance(s["model"], list) else s["model"]
    table = Table(title=f"{s['experiment']}: sweep of {models} ({s['metric']}, greater is better)",
                  caption=f"{c['total']} trials: {c['completed']} completed, {c['pruned']} pruned, {c['failed']} failed"
                          + (f", {c['stopped']} stopped by --timeout" if c["stopped"] else "")
                          + (f"; {c['interrupted']} interrupted attempts" if c["interrupted"] else ""))
    table.add_column("trial", justify="right")
    table.add_column("cv score", justify="right")
    table.add_column("params")
    base = s.get("baseline_trial")
    for o in done:
        mark = " (spec)" if base and o.number == base["number"] else ""
        table.add_row(f"{o.number}{mark}", f"{o.cv_score:.5f}", ", ".join(f"{k}={_short(v)}" for k, v in o.params.items()))
    console = Console()
    console.print(table)
    console.print(baseline_line(s), highlight=False)
    for name, t in (s.get("best_per_model") or {}).items():
        console.print(f"best {name}: trial {t['trial']}, {s['metric']} {t['cv_score']:.5f}", highlight=False)
    if s.get("pareto_front"):
        costs = [o for o in s["objectives"] if o != "cv_score"]
        console.print(f"Pareto front of {s['metric']} against {', '.join(costs)}: " + "; ".join(
            f"trial {t['trial']} ({t['cv_score']:.5f}, " + ", ".join(f"{_short(t['costs'][c])}" for c in costs) + ")"
            for t in s["pareto_front"][:10]) + (" ..." if len(s["pareto_front"]) > 10 else ""), highlight=False)
    if s.get("refit"):
        console.print(f"refit of the best params: {s['metric']} {s['refit']['cv_score']:.5f} "
                      f"(MLflow run {s['refit']['run_id']}, outputs in {s['refit']['out_dir']})")
    console.print(f"MLflow run {s['run_id']} in experiment {s['experiment']!r} ({s['tracking_uri']})")


def baseline_line(s: dict) -> str:
    """Where the sweep started: trial 0 ran the spec's own params (or why it did not, or only partly)."""
    base, skipped = s.get("baseline_trial"), s.get("baseline_skipped") or {}
    why = "; ".join(f"{k}: {v}" for k, v in skipped.items())
    if not base:
        return f"no baseline trial: no search.space key has the model's own value inside the space ({why})"
    score = f"{s['metric']} {base['cv_score']:.5f}" if base["cv_score"] is not None else base["state"]
    params = ", ".join(f"{k}={_short(v)}" for k, v in base["params"].items() if k not in skipped)
    line = f"baseline: trial {base['number']} ran the spec's own params ({params}): {score}"
    if base["cv_score"] is not None and s["best"]["cv_score"] is not None:
        line += f"; the best is {s['best']['cv_score'] - base['cv_score']:+.5f} from it"
    return line + (f"; sampled instead: {why}" if why else "")


def _short(v: object) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
