"""The sweep's ensemble phase: the ensemble's method and settings searched on the best trials' OOF, before the refit.

A trial of the models' study trains one model; the ensemble of several models is a function of
their OOF predictions only, so it is searched once the study knows each model's best trial:
the refit's folds (cached, so the refit itself trains nothing again) give each model's OOF, and
`tasks.ensemble_search` scores `search.ensemble_trials` settings on them, each cross-fitted on
the other held-out folds. The refit then runs the best setting: its ensemble score is the best
ensemble trial's, and every ensemble trial is a child run of the sweep (`ensemble-trial-NNN`).
"""

from __future__ import annotations

import time
from typing import Any

from foldwise.tasks.ensemble_search import EnsembleSearchResult, EnsembleTrial, search_ensemble
from foldwise.tasks.repeats import oof_by_repeat
from foldwise.tasks.seeds import base_name
from foldwise.workflows.pipeline.cross_validation import model_folds
from foldwise.workflows.pipeline.plan import plan_run
from foldwise.workflows.pipeline.spec import load_spec
from foldwise.workflows.tracking import tracker as tk

TAG_ENSEMBLE_TRIAL = "sweep-ensemble-trial"  # foldwise.command of an ensemble trial's run


def search_refit_ensemble(raw: dict[str, Any], space: Any, tracking_uri: str, metric: str,
                          cache_root: str | None) -> tuple[dict[str, Any], EnsembleSearchResult, list[str]]:
    """The refit's spec (`raw`, each model with its best trial's params) with the best ensemble setting in
    its `ensemble` section; the search's trials; the models blended."""
    run_plan = plan_run(load_spec(raw), tracking_uri)
    dag = model_folds(run_plan, cache_root=cache_root)
    spec = run_plan.spec
    names = spec.ensemble.models or list(dict.fromkeys(base_name(m.name) for m in run_plan.models))
    oof = {n: oof_by_repeat(dag.folds[n], dag.plan, len(dag.data.y)) for n in names}
    result = search_ensemble(space, oof, dag.data.y, dag.plan, metric, dag.data.task, spec.cv.seed, dag.data.X)
    s = result.best.setting
    raw = {**raw, "ensemble": {**raw["ensemble"], "method": s["method"], "params": dict(s["params"]),
                               "layers": int(s["layers"]), "passthrough": bool(s["passthrough"])}}
    return raw, result, names


def log_ensemble_trials(tracker: tk.Tracker, parent: str, trials: tuple[EnsembleTrial, ...],
                        base_tags: dict[str, str]) -> dict[int, str]:
    """Each ensemble trial as a child run of the sweep: its sampled params, cv_score, fold scores. Returns run ids."""
    out = {}
    now = time.time()
    for t in trials:
        tags = {**base_tags, tk.TAG_COMMAND: TAG_ENSEMBLE_TRIAL, "foldwise.ensemble_trial": str(t.number),
                tk.TAG_TRIAL_STATE: "completed" if t.cv_score is not None else "failed"}
        if t.error:
            tags["foldwise.failure"] = t.error[:5000]
        if t.repeat_of is not None:
            tags["foldwise.repeat_of"] = str(t.repeat_of)
        run = tracker.start_run(f"ensemble-trial-{t.number:03d}", tags, parent_id=parent, start_time=now)
        params = t.params or {"ensemble.method": t.setting["method"]}
        tracker.log(run, params=params, metrics={tk.M_CV_SCORE: t.cv_score} if t.cv_score is not None else None,
                    steps={tk.M_FOLD_SCORE: list(t.fold_scores)} if t.fold_scores else None)
        tracker.end(run, "FINISHED" if t.cv_score is not None else "FAILED")
        out[t.number] = run
    return out


def trial_row(t: EnsembleTrial, run_id: str | None = None) -> dict[str, Any]:
    """An ensemble trial as summary.json lists it."""
    return {"trial": t.number, "run_id": run_id, "params": dict(t.params), "setting": dict(t.setting),
            "cv_score": t.cv_score, "error": t.error, "repeat_of": t.repeat_of}
