"""`foldwise sweep`'s study: every Optuna sampler, several models in one study, score against cost.

Real Tune, real Optuna, real MLflow sqlite, on the session Ray cluster; the models are small
(logistic regression and a 20-tree LightGBM on breast cancer, 2 folds) so each sweep takes seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pandas as pd
import pytest

from foldwise.workflows.cli.main import main
from tests.conftest import store_state
from tests.workflows_tests.test_sweep import trial_runs

LOGREG = {"name": "logreg", "type": "sklearn", "estimator": "sklearn.linear_model.LogisticRegression",
          "params": {"C": 1.0, "max_iter": 500}, "preprocess": ["standard_scaler"]}
LGBM = {"name": "lgbm", "type": "lightgbm", "params": {"n_estimators": 20, "learning_rate": 0.2, "num_leaves": 8}}


def study_spec(spec_models: list[dict], **search) -> dict:
    return {"name": "sweep-study", "data": {"train": "sklearn:breast_cancer"}, "task": "binary", "metric": "roc_auc",
            "cv": {"scheme": "stratified", "folds": 2, "seed": 7}, "models": spec_models,
            "search": {"trials": 6, "pruner": "none", **search}}


def sweep(spec: dict, d: Path, **kwargs):
    from foldwise.workflows.commands.sweep import run_sweep

    return run_sweep(spec, concurrency=2, out=d / "out", tracking_uri=f"sqlite:///{d / 'm.db'}",
                     storage=str(d / "store"), **kwargs)


@pytest.mark.parametrize("sampler", ["tpe", "random", "grid", "cmaes", "gp", "nsga2"])
def test_every_sampler_runs_six_trials_seeded_from_the_spec(ray_cluster, tmp_path: Path, sampler: str) -> None:
    space = {"C": {"uniform": [0.1, 2.0], "step": 0.1}, "fit_intercept": {"categorical": [True, False]}}
    result = sweep(study_spec([LOGREG], sampler=sampler, seed=11, space=space), tmp_path)
    s = result.summary
    assert s["sampler"] == {"name": sampler, "seed": 11}
    assert s["trials"]["total"] == s["trials"]["completed"] == 6
    params = [tuple(sorted(o.params.items())) for o in result.outcomes]
    assert all(0.1 <= dict(p)["C"] <= 2.0 for p in params)
    if sampler == "grid":
        assert len(set(params)) == 6, "a grid never repeats a point"
    runs = trial_runs(f"sqlite:///{tmp_path / 'm.db'}", s["run_id"])
    assert len(runs) == 6


def test_several_models_in_one_study(ray_cluster, tmp_path: Path) -> None:
    """Each trial's params are its own model's only; the best per model is reported; the refit runs both + ensemble."""
    space = {"lgbm.num_leaves": {"int": [4, 32]}, "lgbm.learning_rate": {"loguniform": [0.05, 0.3]},
             "logreg.C": {"loguniform": [0.01, 10.0]}}
    spec = study_spec([LGBM, LOGREG], models=["lgbm", "logreg"], trials=10, refit=True, space=space,
                      sampler="random")
    result = sweep(spec, tmp_path)
    s = result.summary
    assert s["model"] == ["lgbm", "logreg"]
    seen = set()
    for o in result.outcomes:
        model = o.params["model"]
        seen.add(model)
        assert set(o.params) - {"model"} <= {k for k in space if k.startswith(f"{model}.")}, o.params
        assert all(k.startswith(f"{model}.") for k in o.params if k != "model")
    assert seen == {"lgbm", "logreg"}
    for run in trial_runs(f"sqlite:///{tmp_path / 'm.db'}", s["run_id"]):
        model = run.data.params["model"]
        assert all(k == "model" or k.startswith(f"{model}.") for k in run.data.params)
    # the spec's own params of each model ran first (trials 0 and 1), never pruned
    assert [b["params"]["model"] for b in s["baseline_trials"]] == ["lgbm", "logreg"]
    assert s["baseline_trials"][1]["params"] == {"model": "logreg", "logreg.C": 1.0}
    for name, best in s["best_per_model"].items():
        done = [o.cv_score for o in result.outcomes if o.state == "completed" and o.params["model"] == name]
        assert best["cv_score"] == max(done) and best["params"]["model"] == name
    assert s["best"]["cv_score"] == max(b["cv_score"] for b in s["best_per_model"].values())
    refit = s["refit"]
    assert set(refit["models"]) == {"lgbm", "logreg"}
    for name, best in s["best_per_model"].items():
        assert refit["models"][name] == pytest.approx(best["cv_score"], abs=1e-12), "the refit reproduces each best"
    assert refit["ensemble_cv_score"] is not None


def test_score_against_cost_keeps_a_pareto_front_of_undominated_trials(ray_cluster, tmp_path: Path) -> None:
    space = {"lgbm.num_leaves": {"int": [2, 64], "log": True}, "lgbm.n_estimators": {"int": [5, 80]},
             "logreg.C": {"loguniform": [0.01, 10.0]}}
    db = tmp_path / "optuna.db"
    spec = study_spec([LGBM, LOGREG], models=["lgbm", "logreg"], trials=12, space=space, sampler="nsga2",
                      objectives=["cv_score", "model_bytes"], storage=f"sqlite:///{db}", pruner="asha")
    result = sweep(spec, tmp_path)
    s = result.summary
    table = pd.read_csv(s["outputs"]["trials"])
    done = table[table.state == "completed"]
    front = {t["trial"] for t in s["pareto_front"]}
    assert front and front <= set(done.trial)
    for t in s["pareto_front"]:  # no completed trial dominates a front trial (checked against trials.csv)
        better = done[(done.cv_score >= t["cv_score"]) & (done["cost.model_bytes"] <= t["costs"]["model_bytes"])
                      & ((done.cv_score > t["cv_score"]) | (done["cost.model_bytes"] < t["costs"]["model_bytes"]))]
        assert better.empty, (t, better)
    for _, row in done[~done.trial.isin(front)].iterrows():  # and every trial off the front is dominated
        assert any(f["cv_score"] >= row.cv_score and f["costs"]["model_bytes"] <= row["cost.model_bytes"]
                   for f in s["pareto_front"])
    runs = trial_runs(f"sqlite:///{tmp_path / 'm.db'}", s["run_id"])
    tagged = {int(r.data.tags["foldwise.trial"]) for r in runs if r.data.tags.get("foldwise.pareto") == "true"}
    assert tagged == front
    assert "pareto_front" in s["outputs"]["plots"]
    # the live study in the Optuna storage (what optuna-dashboard reads), written by the driver
    study = optuna.load_study(study_name=s["optuna_storage"]["study"], storage=f"sqlite:///{db}")
    assert len(study.directions) == 2
    states = [t.state for t in study.trials]
    assert len(states) == s["trials"]["total"] and optuna.trial.TrialState.RUNNING not in states
    assert sum(st == optuna.trial.TrialState.PRUNED for st in states) == s["trials"]["pruned"]


BAD = {
    "grid over a continuous range": ({"sampler": "grid", "space": {"C": {"loguniform": [0.01, 1.0]}}},
                                     "search.space.C: search.sampler grid needs a finite set of values"),
    "cmaes with costs": ({"sampler": "cmaes", "objectives": ["cv_score", "fit_seconds"]},
                         "search.sampler cmaes: optimises one objective"),
    "unknown sampler": ({"sampler": "anneal"}, "search.sampler"),
    "objectives without the score": ({"objectives": ["fit_seconds"]}, "must name cv_score once"),
    "storage not a url": ({"storage": "optuna.db"}, "must be an Optuna storage URL"),
    "storage folder missing": ({"storage": "sqlite:////nonexistent-folder/o.db"}, "folder /nonexistent-folder does not exist"),
    "model key without its model": ({"models": ["logreg"], "space": {"C": {"loguniform": [0.01, 1.0]}}},
                                    "search.space.C: with search.models, say whose param it is (logreg.C)"),
    "unknown model in models": ({"models": ["logreg", "xgb"]}, "search.models: unknown model(s) xgb"),
    "model and models": ({"model": "logreg", "models": ["logreg"]}, "search.model (one model) or search.models"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_study_settings_exit_2_and_log_nothing(case: str, tmp_path: Path, capsys) -> None:
    change, needle = BAD[case]
    spec = study_spec([LOGREG], space={"C": {"loguniform": [0.01, 1.0]}})
    spec["search"].update(change)
    assert_refused(spec, needle, tmp_path, capsys)


def assert_refused(spec: dict, needle: str, tmp_path: Path, capsys) -> None:
    """`foldwise sweep` of `spec` exits 2 naming `needle`, with no MLflow rows, outputs or storage."""
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    db = tmp_path / "m.db"
    code = main(["sweep", str(path), "--tracking-uri", f"sqlite:///{db}", "--storage", str(tmp_path / "store"),
                 "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert needle in err
    assert store_state(db) is None and not (tmp_path / "out").exists() and not (tmp_path / "store").exists()


@pytest.mark.parametrize("pruner", ["asha", "median"])
def test_a_restored_pruner_judges_new_trials_against_those_that_ended_before(pruner: str) -> None:
    """A resumed sweep's pruner is given the ended trials' reports: a bad new trial is stopped at once."""
    from foldwise.workflows.engine.tune_search import FOLDS_DONE, SCORE, make_scheduler, rung_counts, seed_pruner

    class Trial:
        trial_id, experiment_tag = "new", "7_x=1"

    history = [(f"old{i}", (0.90 + i / 100, 0.91 + i / 100, 0.92 + i / 100)) for i in range(6)]

    def first_decision(seeded: bool) -> tuple[str, dict[int, int]]:
        scheduler = make_scheduler(pruner, 4)
        scheduler.set_search_properties(SCORE, "max")
        if seeded:
            seed_pruner(scheduler, history)
        scheduler.on_trial_add(None, Trial())
        return scheduler.on_trial_result(None, Trial(), {FOLDS_DONE: 1, SCORE: 0.5}), rung_counts(scheduler)

    assert first_decision(seeded=False)[0] == "CONTINUE", "the premise: an empty pruner has no one to judge against"
    decision, counts = first_decision(seeded=True)
    assert decision == "STOP"
    assert counts[1] == 7 and counts[2] == 6, counts  # the six ended trials, and the new one at its first fold


def test_pareto_front_and_plot_sample_on_plain_records() -> None:
    from foldwise.tasks.sweep_report import TrialOutcome, pareto_front, plot_sample

    def trial(n: int, score: float, fit: float, state: str = "completed") -> TrialOutcome:
        return TrialOutcome(number=n, trial_id=f"t{n}", run_id=None, params={}, state=state,
                            fold_scores={0: score, 1: score}, costs={"fit_seconds": fit})

    trials = [trial(0, 0.9, 1.0), trial(1, 0.8, 0.5), trial(2, 0.85, 2.0), trial(3, 0.9, 1.0), trial(4, 0.95, 3.0),
              trial(5, 0.99, 0.1, "pruned")]
    front = [o.number for o in pareto_front(trials, ("cv_score", "fit_seconds"))]
    assert front == [0, 1, 3, 4], "2 is dominated by 0; equal points (0, 3) both stay; pruned never counts"
    many = [trial(i, i / 1000, 1.0) for i in range(1000)]
    sample = plot_sample(many, limit=100, keep_best=10)
    assert len(sample) == 100 and {o.number for o in sample} >= set(range(990, 1000))
    assert min(o.number for o in sample) == 0, "the rest spans the whole sweep"


def test_three_hundred_trivial_trials_each_logged_once(ray_cluster, tmp_path: Path) -> None:
    """Many cheap trials: every one ends, and MLflow holds exactly one finished run per trial."""
    import numpy as np
    from mlflow.tracking import MlflowClient

    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(120, 2)), columns=["a", "b"])
    frame["y"] = (frame.a > 0).astype(int)
    frame.to_csv(tmp_path / "train.csv", index=False)
    spec = study_spec([{"name": "dummy", "type": "sklearn", "estimator": "sklearn.dummy.DummyClassifier", "params": {}}],
                      trials=300, sampler="random", space={"strategy": {"categorical": ["prior", "stratified", "uniform"]}})
    spec["data"] = {"train": str(tmp_path / "train.csv"), "target": "y"}
    s = sweep(spec, tmp_path).summary
    assert s["trials"]["total"] == s["trials"]["completed"] == 300
    client = MlflowClient(f"sqlite:///{tmp_path / 'm.db'}")
    runs = client.search_runs([client.get_run(s["run_id"]).info.experiment_id],
                              f"tags.mlflow.parentRunId = '{s['run_id']}'", max_results=1000)
    trials = [r for r in runs if "foldwise.trial_id" in r.data.tags]
    assert len(trials) == s["trials"]["total"] == len({r.data.tags["foldwise.trial_id"] for r in trials})
    assert {r.info.status for r in trials} == {"FINISHED"}
    assert all("cv_score" in r.data.metrics and "strategy" in r.data.params for r in trials)
    assert len(pd.read_csv(s["outputs"]["trials"])) == 300


def test_a_grid_with_the_baseline_enqueued_tries_every_point_once() -> None:
    """The spec's own point, enqueued first, is one of the grid's points: trials running at once still
    cover the whole grid (Optuna's grid alone gave the enqueued trial no point, and repeated one)."""
    import optuna
    from optuna.distributions import CategoricalDistribution

    from foldwise.workflows.engine.tune_search import make_sampler

    space = {"C": CategoricalDistribution([1.0, 2.0, 3.0]), "k": CategoricalDistribution(["a", "b"])}
    for seed in range(3):
        study = optuna.create_study(sampler=make_sampler("grid", seed, 1, {"C": [1.0, 2.0, 3.0], "k": ["a", "b"]}))
        study.enqueue_trial({"C": 2.0, "k": "b"})
        trials = [study.ask(space) for _ in range(6)]  # all running at once, as Tune's concurrent trials are
        points = [(t.params["C"], t.params["k"]) for t in trials]
        assert points[0] == (2.0, "b") and len(set(points)) == 6, points
