"""A sweep's end: plots, the trials table, the optional refit, summary.json; all logged on the parent run."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from foldwise.infra import storage
from foldwise.tasks.folds import FoldPlan
from foldwise.tasks.report import write_json
from foldwise.tasks.sweep_report import FINAL_STATES, TrialOutcome, counts, importances, study_of, trials_frame, write_plots
from foldwise.workflows.commands.sweep.plan import SweepPlan
from foldwise.workflows.commands.sweep.state import SweepState
from foldwise.workflows.engine.tune import BASELINE_TRIAL, Slots
from foldwise.workflows.pipeline.cross_validation import cross_validate
from foldwise.workflows.pipeline.inputs import Inputs
from foldwise.workflows.pipeline.plan import plan_run
from foldwise.workflows.pipeline.spec import WorkflowSpec, load_spec, to_yaml
from foldwise.workflows.tracking import tracker as tk


@dataclass(frozen=True)
class SweepResult:
    """What `foldwise sweep` produces: the summary.json data and its folder."""

    summary: dict[str, Any]
    out_dir: Path | str  # a URI when the outputs go to one
    outcomes: tuple[TrialOutcome, ...] = ()

    @property
    def run_id(self) -> str:
        return self.summary["run_id"]


@dataclass(frozen=True)
class SweepContext:
    """What the sweep fixed before its trials ran, for the steps after them."""

    spec: WorkflowSpec
    plan: SweepPlan
    inputs: Inputs
    folds: FoldPlan
    data_fingerprint: str
    tracker: tk.Tracker
    parent: str  # the sweep's MLflow run
    state: SweepState
    out: str  # where the outputs go: a folder or a URI
    slots: Slots
    startup_seconds: float  # the executor's
    tracking_uri: str
    wall_start: float  # perf_counter at the command's start
    phases: dict[str, float]  # seconds per phase so far; finish adds its own
    progress: bool = False  # the refit's options, as `foldwise run` takes them
    no_cache: bool = False
    cache_root: str | None = None


def finish(ctx: SweepContext, outcomes: list[TrialOutcome], best: TrialOutcome) -> SweepResult:
    """Plots, the trials table, the optional refit, summary.json; all logged on the parent run."""
    spec, plan, tracker, parent, folds, phases = ctx.spec, ctx.plan, ctx.tracker, ctx.parent, ctx.folds, ctx.phases
    tick = time.perf_counter()
    out_dir = storage.staging_folder(ctx.out)  # `ctx.out` itself, or a local folder uploaded to it at the end
    study = study_of(outcomes, plan.distributions())
    plots, skipped = write_plots(study, out_dir / "plots", plan.seed, ctx.inputs.metric)
    importance = importances(study, plan.seed)
    trials_csv = out_dir / "trials.csv"
    trials_frame(outcomes, folds.n_folds).to_csv(trials_csv, index=False)
    c = counts(outcomes)
    phases["plots"] = time.perf_counter() - tick
    refit_summary = None
    if plan.refit:
        tick = time.perf_counter()
        refit_summary = refit(ctx, best, storage.join(ctx.out, "refit"))
        tracker.log(refit_summary["run_id"], tags={"foldwise.refit_of": parent, "foldwise.best_trial_run": best.run_id or ""})
        phases["refit"] = time.perf_counter() - tick
    (out_dir / "spec.yaml").write_text(to_yaml(spec))
    summary = {
        "command": "sweep",
        "experiment": spec.experiment,
        "run_id": parent,
        "tracking_uri": ctx.tracking_uri,
        "metric": ctx.inputs.metric,
        "greater_is_better": True,
        "model": plan.model.name,
        "folds": {"scheme": folds.scheme, "n": folds.n_folds, "seed": folds.seed, "hash": folds.hash},
        "data_fingerprint": ctx.data_fingerprint,
        "space": dict(spec.search.space) if spec.search else {},
        "pruner": plan.pruner,
        "parallel_folds": plan.parallel_folds,
        "concurrency": ctx.slots.concurrency,
        "best": {"params": best.params, "cv_score": best.cv_score,
                 "fold_scores": [best.fold_scores[k] for k in sorted(best.fold_scores)],
                 "run_id": best.run_id, "trial": best.number},
        "baseline_trial": baseline_trial(plan, outcomes),
        "baseline_skipped": dict(plan.baseline_skipped),
        "trials": c,
        "trials_requested": plan.trials,
        "importances": importance,
        "refit": refit_summary,
        "resumes": ctx.state.resumes,
        "tune_path": ctx.state.tune_path,
        "wall_seconds": time.perf_counter() - ctx.wall_start,
        "startup_seconds": ctx.startup_seconds,
        "phase_seconds": phases,
        "outputs": {"trials": storage.relocate(trials_csv, out_dir, ctx.out),
                    "plots": {k: storage.relocate(v, out_dir, ctx.out) for k, v in plots.items()},
                    "plots_skipped": skipped},
    }
    write_json(out_dir / "summary.json", summary)
    tracker.log(parent, metrics={tk.M_CV_SCORE: best.cv_score, "wall_seconds": summary["wall_seconds"],
                                 **{f"trials.{k}": float(v) for k, v in c.items()}},
                tags={"foldwise.best_trial_run": best.run_id or "", "foldwise.best_params": json.dumps(best.params)})
    tracker.log_artifacts(parent, out_dir if not plan.refit else artifact_view(out_dir))
    storage.publish_folder(out_dir, ctx.out)
    return SweepResult(summary=summary, out_dir=out_dir if not storage.is_uri(ctx.out) else ctx.out,
                       outcomes=tuple(outcomes))


def baseline_trial(plan: SweepPlan, outcomes: list[TrialOutcome]) -> dict[str, Any] | None:
    """Trial 0, enqueued with the spec's own params (None when no space key had one inside the space).

    When it completes, the best is at least its score: a sweep never ends worse than where it started.
    """
    if not plan.baseline:
        return None
    attempts = [o for o in outcomes if o.number == BASELINE_TRIAL]
    if not attempts:  # --timeout ended the sweep before it started
        return {"number": BASELINE_TRIAL, "params": dict(plan.baseline), "state": "not run", "cv_score": None,
                "run_id": None}
    o = next((a for a in attempts if a.state in FINAL_STATES), attempts[-1])
    return {"number": o.number, "params": dict(o.params), "state": o.state, "cv_score": o.cv_score, "run_id": o.run_id}


def artifact_view(out_dir: Path) -> Path:
    """The sweep's own files (the refit logs its outputs on its own run)."""
    view = Path(tempfile.mkdtemp(prefix="foldwise-sweep-artifacts-"))
    for item in out_dir.iterdir():
        if item.name == "refit":
            continue
        (shutil.copytree if item.is_dir() else shutil.copy2)(item, view / item.name)
    return view


def refit(ctx: SweepContext, best: TrialOutcome, out: str) -> dict[str, Any]:
    """The best params through the whole `foldwise run` graph (OOF, test predictions, submission), as a child run."""
    plan = ctx.plan
    raw = ctx.spec.model_dump(mode="json")
    raw["models"][plan.model_index]["params"] = {**raw["models"][plan.model_index]["params"], **best.params}
    run_plan = plan_run(load_spec(raw), ctx.tracking_uri)
    result = cross_validate(run_plan, out=out, progress=ctx.progress, no_cache=ctx.no_cache, cache_root=ctx.cache_root,
                            parent_run_id=ctx.parent, run_name="refit")
    s = result.summary
    return {"run_id": s["run_id"], "params": best.params, "cv_score": s["models"][plan.model.name]["cv_score"],
            "ensemble_cv_score": s["ensemble"]["cv_score"], "out_dir": out, "outputs": s["outputs"]}
