"""`foldwise sweep`'s ensemble phase: ensemble.* space keys searched on the best trials' OOF, then refit.

Real Tune, Optuna and MLflow sqlite on the session Ray cluster; small models on breast cancer, 2 folds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.workflows_tests.test_sweep_study import LGBM, LOGREG, assert_refused, study_spec, sweep

METHODS = ["mean", "weights", "stack"]
SPACE = {"lgbm.num_leaves": {"int": [4, 32]}, "logreg.C": {"loguniform": [0.01, 10.0]},
         "ensemble.method": {"categorical": METHODS}, "ensemble.params.C": {"loguniform": [0.01, 10.0]}}


def ensemble_runs(uri: str, parent: str) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_run(parent).info.experiment_id
    runs = client.search_runs([exp], f"tags.mlflow.parentRunId = '{parent}'", max_results=1000)
    return [r for r in runs if r.data.tags.get("foldwise.command") == "sweep-ensemble-trial"]


def test_the_ensemble_is_searched_on_the_best_trials_oof_and_the_refit_runs_the_best(ray_cluster, tmp_path: Path) -> None:
    spec = study_spec([LGBM, LOGREG], models=["lgbm", "logreg"], trials=6, refit=True, space=SPACE,
                      sampler="random", ensemble_trials=8)
    result = sweep(spec, tmp_path)
    s = result.summary
    # the models' study never sees the ensemble keys: its trials' params are one model's own
    for o in result.outcomes:
        assert not any(k.startswith("ensemble.") for k in o.params), o.params
    search = s["ensemble_search"]
    assert search["skipped"] is None and search["models"] == ["lgbm", "logreg"]
    trials = search["trials"]
    assert len(trials) == 8
    for t in trials:  # define-by-run: the meta-model's C only in stack trials
        assert t["params"]["ensemble.method"] in METHODS
        assert ("ensemble.params.C" in t["params"]) == (t["params"]["ensemble.method"] == "stack"), t
        assert t["cv_score"] is not None
    best = search["best"]
    assert best["cv_score"] == max(t["cv_score"] for t in trials)
    assert best["trial"] == min(t["trial"] for t in trials if t["cv_score"] == best["cv_score"])
    # the refit runs exactly the best setting, on the same OOF: the same score
    refit = s["refit"]
    assert refit["ensemble"]["method"] == best["setting"]["method"]
    assert refit["ensemble"]["params"] == best["setting"]["params"]
    assert refit["ensemble_cv_score"] == pytest.approx(best["cv_score"], abs=1e-12)
    for name, b in s["best_per_model"].items():
        assert refit["models"][name] == pytest.approx(b["cv_score"], abs=1e-12)
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    from mlflow.tracking import MlflowClient

    refit_params = MlflowClient(uri).get_run(refit["run_id"]).data.params
    assert refit_params["ensemble.method"] == best["setting"]["method"]
    # every ensemble trial is a child run of the sweep with its sampled params and score
    runs = ensemble_runs(uri, s["run_id"])
    assert len(runs) == 8 and all(r.info.status == "FINISHED" for r in runs)
    by_trial = {int(r.data.tags["foldwise.ensemble_trial"]): r for r in runs}
    for t in trials:
        r = by_trial[t["trial"]]
        assert r.data.params == {k: str(v) for k, v in t["params"].items()}
        assert r.data.metrics["cv_score"] == pytest.approx(t["cv_score"], abs=1e-12)
    table = Path(s["outputs"]["ensemble_trials"])
    assert table == Path(result.out_dir) / "ensemble_trials.csv" and len(table.read_text().splitlines()) == 9


def test_each_ensemble_trial_is_the_cross_fitted_blend_of_its_setting() -> None:
    """The phase scores a setting by `blend_repeats` (weights / meta-model fitted on the other folds), nothing else."""
    import optuna

    from foldwise.tasks.ensemble_search import EnsembleSpace, search_ensemble
    from foldwise.tasks.folds import assign_folds
    from foldwise.tasks.repeats import blend_repeats

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    plan = assign_folds(y, None, "stratified", 3, 0)
    oof = {m: [np.clip(y * s + rng.normal(0, 1, 300), -3, 3) / 6 + 0.5] for m, s in (("a", 0.5), ("b", 1.0))}
    space = EnsembleSpace(methods=("mean", "weights", "stack"),
                          params=(("C", optuna.distributions.FloatDistribution(0.01, 10.0, log=True)),), trials=10, seed=3)
    result = search_ensemble(space, oof, y, plan, "roc_auc", "binary", 0)
    assert len(result.trials) == 10
    for t in result.trials:
        s = t.setting
        expected = blend_repeats(s["method"], oof, None, y, plan, "roc_auc", "binary", 0, None, dict(s["params"]),
                                 s["layers"], s["passthrough"])
        assert t.cv_score == pytest.approx(expected.cv_score, abs=1e-12)
        assert (t.repeat_of is not None) == any(u.setting == s for u in result.trials if u.number < t.number)
    assert result.best.cv_score == max(t.cv_score for t in result.trials)


BAD = {
    "a key that is not an ensemble setting": ({"ensemble.meta": {"categorical": ["x"]}},
                                              "search.space.ensemble.meta: not a searchable ensemble key"),
    "an unknown method": ({"ensemble.method": {"categorical": ["mean", "median"]}},
                          "search.space.ensemble.method: give {categorical: [...]} of the methods mean, rank_mean, "
                          "weights, stack (got 'median')"),
    "meta params without stack": ({"ensemble.method": {"categorical": ["mean", "weights"]},
                                   "ensemble.params.C": {"loguniform": [0.1, 1.0]}},
                                  "search.space.ensemble.params.C: only method stack takes it"),
    "a meta param the meta-model lacks": ({"ensemble.method": {"categorical": ["stack"]},
                                           "ensemble.params.bogus": {"uniform": [0.1, 1.0]}},
                                          "LogisticRegression has no parameter(s) 'bogus'"),
    "layers out of range": ({"ensemble.method": {"categorical": ["stack"]}, "ensemble.layers": {"int": [1, 9]}},
                            "search.space.ensemble.layers: give {int: [LOW, HIGH]} within 1..5"),
    "without a refit": ({"ensemble.method": {"categorical": METHODS}, "refit": False}, "set search.refit: true"),
    "with one model": ({"ensemble.method": {"categorical": METHODS}, "models": None, "model": "logreg",
                        "space": {"C": {"loguniform": [0.01, 1.0]}, "ensemble.method": {"categorical": METHODS}}},
                       "list two or more models in search.models"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_ensemble_keys_exit_2_and_log_nothing(case: str, tmp_path: Path, capsys) -> None:
    change, needle = BAD[case]
    spec = study_spec([LGBM, LOGREG], models=["lgbm", "logreg"], refit=True,
                      space={"logreg.C": {"loguniform": [0.01, 1.0]}})
    spec["search"]["space"].update({k: v for k, v in change.items() if k.startswith("ensemble.")})
    spec["search"].update({k: v for k, v in change.items() if not k.startswith("ensemble.")})
    if spec["search"].get("models") is None:
        spec["search"].pop("models")
    assert_refused(spec, needle, tmp_path, capsys)
