"""A sweep's end: plots, the trials table, the optional refit, summary.json; all logged on the parent run."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from foldwise.infra import storage
from foldwise.tasks.folds import FoldPlan
from foldwise.tasks.report import write_json
from foldwise.tasks.sweep_report import (
    FINAL_STATES,
    TrialOutcome,
    best_per_model,
    counts,
    importances,
    pareto_front,
    plot_sample,
    study_of,
    trials_frame,
    write_plots,
)
from foldwise.workflows.commands.sweep.ensemble import log_ensemble_trials, search_refit_ensemble, trial_row
from foldwise.workflows.commands.sweep.plan import SweepPlan
from foldwise.workflows.commands.sweep.state import SweepState
from foldwise.workflows.engine.tune import BASELINE_TRIAL, Slots
from foldwise.workflows.pipeline.cross_validation import cross_validate
from foldwise.workflows.pipeline.inputs import Inputs
from foldwise.workflows.pipeline.plan import plan_run
from foldwise.workflows.pipeline.search_space import MODEL_KEY
from foldwise.workflows.pipeline.spec import WorkflowSpec, load_spec, to_yaml
from foldwise.workflows.pipeline.sweep_frames import is_step_key, with_step_params
from foldwise.workflows.tracking import tracker as tk

TAG_PARETO = "foldwise.pareto"  # "true" on the trial runs of a multi-objective sweep's Pareto front
PLOT_TRIALS = 400  # the history and parallel-coordinate plots show at most this many trials ...
PLOT_KEEP_BEST = 50  # ... always the best ones among them


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
    rungs: dict[int, int] = field(default_factory=dict)  # trials the pruner saw per folds done, over the whole sweep
    progress: bool = False  # the refit's options, as `foldwise run` takes them
    no_cache: bool = False
    cache_root: str | None = None
    register: str | None = None  # the refit's logged model becomes a new version of this registered model


def finish(ctx: SweepContext, outcomes: list[TrialOutcome], best: TrialOutcome) -> SweepResult:
    """Plots, the trials table, the optional refit, summary.json; all logged on the parent run."""
    spec, plan, tracker, parent, folds, phases = ctx.spec, ctx.plan, ctx.tracker, ctx.parent, ctx.folds, ctx.phases
    tick = time.perf_counter()
    out_dir = storage.staging_folder(ctx.out)  # `ctx.out` itself, or a local folder uploaded to it at the end
    dists = plan.distributions()
    study = study_of(plot_sample(outcomes, PLOT_TRIALS, PLOT_KEEP_BEST), dists, plan.objectives)
    plots, skipped = write_plots(study, out_dir / "plots", plan.seed, ctx.inputs.metric, plan.objectives)
    importance = importances(study_of(outcomes, dists, plan.objectives), plan.seed)
    front = pareto_front(outcomes, plan.objectives) if len(plan.objectives) > 1 else []
    for o in front:
        if o.run_id:
            tracker.log(o.run_id, tags={TAG_PARETO: "true"})
    per_model = best_per_model(outcomes, MODEL_KEY) if plan.multi else {}
    trials_csv = out_dir / "trials.csv"
    trials_frame(outcomes, folds.n_splits).to_csv(trials_csv, index=False)
    c = counts(outcomes)
    phases["plots"] = time.perf_counter() - tick
    refit_summary = None
    ensemble_summary = ensemble_skipped(plan, per_model)
    if plan.refit:
        tick = time.perf_counter()
        refit_summary = refit(ctx, best, per_model, storage.join(ctx.out, "refit"))
        tracker.log(refit_summary["run_id"], tags={"foldwise.refit_of": parent, "foldwise.best_trial_run": best.run_id or ""})
        phases["refit"] = time.perf_counter() - tick
        ensemble_summary = ensemble_outputs(ctx, refit_summary.pop("ensemble_search", None), out_dir)
    (out_dir / "spec.yaml").write_text(to_yaml(spec))
    summary = {
        "command": "sweep",
        "experiment": spec.experiment,
        "run_id": parent,
        "tracking_uri": ctx.tracking_uri,
        "metric": ctx.inputs.metric,
        "greater_is_better": True,
        "model": [m.name for m in plan.models] if plan.multi else plan.model.name,
        "sampler": {"name": plan.sampler, "seed": plan.sampler_seed},
        "objectives": list(plan.objectives),
        "optuna_storage": {"url": plan.storage, "study": f"{spec.name}-{parent}"} if plan.storage else None,
        "folds": {"scheme": folds.scheme, "n": folds.n_folds, "seed": folds.seed, "hash": folds.hash, "repeats": folds.repeats},
        "data_fingerprint": ctx.data_fingerprint,
        "space": dict(spec.search.space) if spec.search else {},
        "pruner": plan.pruner,
        "pruner_rungs": {str(k): v for k, v in ctx.rungs.items()},
        "parallel_folds": plan.parallel_folds,
        "concurrency": ctx.slots.concurrency,
        "best": {"params": best.params, "cv_score": best.cv_score,
                 "fold_scores": [best.fold_scores[k] for k in sorted(best.fold_scores)],
                 "run_id": best.run_id, "trial": best.number},
        "best_per_model": {name: _trial(o) for name, o in per_model.items()} if plan.multi else None,
        "pareto_front": [_trial(o) for o in front] if len(plan.objectives) > 1 else None,
        "baseline_trial": baseline_trial(plan, outcomes),
        "baseline_trials": [baseline_trial(plan, outcomes, i) for i in range(len(plan.baselines))],
        "baseline_skipped": dict(plan.baseline_skipped),
        "trials": c,
        "trials_requested": plan.trials,
        "importances": importance,
        "refit": refit_summary,
        "ensemble_search": ensemble_summary,
        "resumes": ctx.state.resumes,
        "tune_path": ctx.state.tune_path,
        "wall_seconds": time.perf_counter() - ctx.wall_start,
        "startup_seconds": ctx.startup_seconds,
        "phase_seconds": phases,
        "outputs": {"trials": storage.relocate(trials_csv, out_dir, ctx.out),
                    "plots": {k: storage.relocate(v, out_dir, ctx.out) for k, v in plots.items()},
                    "plots_skipped": skipped,
                    **({"ensemble_trials": storage.relocate(out_dir / "ensemble_trials.csv", out_dir, ctx.out)}
                       if (out_dir / "ensemble_trials.csv").exists() else {})},
    }
    write_json(out_dir / "summary.json", summary)
    tracker.log(parent, metrics={tk.M_CV_SCORE: best.cv_score, "wall_seconds": summary["wall_seconds"],
                                 **{f"trials.{k}": float(v) for k, v in c.items()}},
                tags={"foldwise.best_trial_run": best.run_id or "", "foldwise.best_params": json.dumps(best.params)})
    tracker.log_artifacts(parent, out_dir if not plan.refit else artifact_view(out_dir))
    storage.publish_folder(out_dir, ctx.out)
    return SweepResult(summary=summary, out_dir=out_dir if not storage.is_uri(ctx.out) else ctx.out,
                       outcomes=tuple(outcomes))


def ensemble_skipped(plan: SweepPlan, per_model: dict[str, TrialOutcome]) -> dict[str, Any] | None:
    """summary.json's `ensemble_search` before the refit: None without ensemble keys, else why it did not run."""
    if plan.ensemble is None:
        return None
    return {"trials": [], "best": None, "models": sorted(per_model),
            "skipped": "fewer than two models completed a trial" if len(per_model) < 2 else "the refit did not run"}


def ensemble_outputs(ctx: SweepContext, found: Any, out_dir: Path) -> dict[str, Any] | None:
    """The ensemble phase's trials: child runs of the sweep, `ensemble_trials.csv`, summary.json's `ensemble_search`."""
    if ctx.plan.ensemble is None:
        return None
    if found is None:
        return {"trials": [], "best": None, "models": [], "skipped": "fewer than two models completed a trial"}
    search, names = found
    tags = {tk.TAG_MODEL: ",".join(names)}
    runs = log_ensemble_trials(ctx.tracker, ctx.parent, search.trials, tags)
    rows = [trial_row(t, runs.get(t.number)) for t in search.trials]
    pd.DataFrame([{"trial": r["trial"], **r["params"], "method": r["setting"]["method"], "cv_score": r["cv_score"],
                   "error": r["error"], "repeat_of": r["repeat_of"], "run_id": r["run_id"]} for r in rows]
                 ).to_csv(out_dir / "ensemble_trials.csv", index=False)
    return {"trials": rows, "best": trial_row(search.best, runs.get(search.best.number)), "models": names,
            "skipped": None}


def _trial(o: TrialOutcome) -> dict[str, Any]:
    """A trial as summary.json lists it (the best per model, the Pareto front)."""
    return {"trial": o.number, "run_id": o.run_id, "params": dict(o.params), "cv_score": o.cv_score,
            "costs": dict(o.costs)}


def baseline_trial(plan: SweepPlan, outcomes: list[TrialOutcome], index: int = BASELINE_TRIAL) -> dict[str, Any] | None:
    """Trial `index` (0 unless several models each have one), enqueued with the spec's own params
    (None when no space key had one inside the space).

    When it completes, the best is at least its score: a sweep never ends worse than where it started.
    """
    if index >= len(plan.baselines):
        return None
    point = plan.baselines[index]
    attempts = [o for o in outcomes if o.number == index]
    if not attempts:  # --timeout ended the sweep before it started
        return {"number": index, "params": dict(point), "state": "not run", "cv_score": None, "run_id": None}
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


def refit(ctx: SweepContext, best: TrialOutcome, per_model: dict[str, TrialOutcome], out: str) -> dict[str, Any]:
    """The best params through the whole `foldwise run` graph (OOF, test predictions, submission), as a child run.

    Several models in one study: each model's best trial, and their ensemble (the spec's method
    over the models that completed a trial; with `ensemble.*` space keys, the best setting of the
    ensemble phase, searched on those models' OOF first: see ensemble.py).
    """
    plan = ctx.plan
    # the best trial's frame-step params (one set for the whole graph, with several models too)
    raw = with_step_params(ctx.spec, best.params).model_dump(mode="json")
    search = None
    if not plan.multi:
        own = {k: v for k, v in best.params.items() if not is_step_key(k)}
        raw["models"][plan.model_index]["params"] = {**raw["models"][plan.model_index]["params"], **own}
    else:
        keep = [i for i, m in zip(plan.model_indices, plan.models, strict=True) if m.name in per_model]
        for i in keep:
            name = raw["models"][i]["name"]
            own = {k.removeprefix(f"{name}."): v for k, v in per_model[name].params.items() if k.startswith(f"{name}.")}
            raw["models"][i]["params"] = {**raw["models"][i]["params"], **own}
        raw["models"] = [raw["models"][i] for i in keep]
        if raw["ensemble"].get("models"):
            raw["ensemble"]["models"] = [m for m in raw["ensemble"]["models"] if m in per_model] or None
    no_cache, cache_root, scratch = ctx.no_cache, ctx.cache_root, None
    try:
        if plan.ensemble is not None and len(raw["models"]) > 1:
            if no_cache:  # the phase's folds are the refit's: a cache of their own, so they train once
                scratch = tempfile.mkdtemp(prefix="foldwise-refit-cache-")
                no_cache, cache_root = False, scratch
            raw, search, names = search_refit_ensemble(raw, plan.ensemble, ctx.tracking_uri, ctx.inputs.metric,
                                                       cache_root)
        run_plan = plan_run(load_spec(raw), ctx.tracking_uri)
        result = cross_validate(run_plan, out=out, progress=ctx.progress, no_cache=no_cache, cache_root=cache_root,
                                parent_run_id=ctx.parent, run_name="refit", register=ctx.register)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    s = result.summary
    name = str(best.params.get(MODEL_KEY, plan.model.name))
    summary = {"run_id": s["run_id"], "params": best.params, "cv_score": s["models"][name]["cv_score"],
               "models": {m: v["cv_score"] for m, v in s["models"].items()},
               "ensemble_cv_score": s["ensemble"]["cv_score"], "out_dir": out, "outputs": s["outputs"],
               "model": s.get("model"),
               "ensemble": {k: raw["ensemble"].get(k) for k in ("method", "params", "layers", "passthrough", "models")}}
    if search is not None:
        summary["ensemble_search"] = (search, names)
    return summary
