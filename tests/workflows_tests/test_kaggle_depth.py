"""End to end through Ray and MLflow: custom metrics, repeated CV, seed averaging, multi-layer stacking."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from foldwise.tasks.folds import assign_folds
from foldwise.workflows.commands.run import run_cv
from tests.workflows_tests.custom_metrics import weighted_mae


@pytest.fixture(scope="module")
def uri(session_dir: Path) -> str:
    return f"sqlite:///{session_dir / 'mlflow-kaggle.db'}"


def test_custom_metric_equals_its_direct_computation_on_the_oof(ray_cluster, uri: str, tmp_path: Path) -> None:
    spec = {"name": "custom-metric", "data": {"train": "sklearn:diabetes"},
            "metric": "tests.workflows_tests.custom_metrics:weighted_mae", "cv": {"folds": 4, "seed": 3},
            "models": [{"name": "ridge", "type": "sklearn", "estimator": "sklearn.linear_model.Ridge"},
                       {"name": "lgbm", "type": "lightgbm", "params": {"n_estimators": 60, "num_leaves": 7}}],
            "ensemble": {"method": "weights"}, "slices": {"old": "age > 0"}}
    r = run_cv(spec, out=tmp_path, tracking_uri=uri)
    s = r.summary
    assert s["metric"] == "tests.workflows_tests.custom_metrics:weighted_mae" and s["greater_is_better"] is True
    y, fold = r.oof["target"].to_numpy(), r.oof["fold"].to_numpy()
    for col, scores in [*((m, s["models"][m]["fold_scores"]) for m in ("ridge", "lgbm")),
                        ("ensemble", s["ensemble"]["fold_scores"])]:
        direct = [-weighted_mae(y[fold == k], r.oof[col].to_numpy()[fold == k]) for k in range(4)]
        np.testing.assert_allclose(scores, direct, rtol=1e-12)
    from sklearn.datasets import load_diabetes

    old = load_diabetes(as_frame=True).frame["age"].to_numpy() > 0  # the slice's rows score with the metric too
    assert s["slices"]["old"]["scores"]["ridge"] == pytest.approx(-weighted_mae(y[old], r.oof["ridge"].to_numpy()[old]))


@pytest.fixture(scope="module")
def random_label_run(ray_cluster, uri: str, tmp_path_factory):
    """Random labels through repeated CV (and the other depth features as they land): everything scores chance."""
    d = tmp_path_factory.mktemp("random-depth")
    rng = np.random.default_rng(5)
    frame = pd.DataFrame(rng.normal(size=(1200, 6)), columns=[f"x{i}" for i in range(6)])
    frame["y"] = rng.integers(0, 2, size=1200)
    frame.to_parquet(d / "random.parquet")
    spec = {"name": "random-depth", "data": {"train": str(d / "random.parquet"), "target": "y"}, "metric": "roc_auc",
            "cv": {"scheme": "stratified", "folds": 3, "repeats": 2, "seed": 0},
            "models": [{"name": "logreg", "type": "sklearn", "estimator": "sklearn.linear_model.LogisticRegression"},
                       {"name": "lgbm", "type": "lightgbm", "seeds": [0, 1],
                        "params": {"n_estimators": 60, "num_leaves": 31, "feature_fraction": 0.7}}],
            "ensemble": {"method": "stack", "layers": 2, "passthrough": True}}
    return run_cv(spec, out=d / "out", tracking_uri=uri)


def test_random_labels_score_chance_through_repeats_seeds_and_two_layer_passthrough_stacking(random_label_run) -> None:
    s = random_label_run.summary
    for entry in [*s["models"].values(), s["ensemble"]]:
        assert entry["cv_score"] == pytest.approx(0.5, abs=0.05)
        assert len(entry["fold_scores"]) == 6 and len(entry["repeat_scores"]) == 2


def test_repeats_are_one_plan_with_per_repeat_oof_and_scores(random_label_run) -> None:
    from sklearn.model_selection import RepeatedStratifiedKFold

    r = random_label_run
    s = r.summary
    assert s["folds"] == {"scheme": "stratified", "n": 3, "seed": 0, "hash": s["folds"]["hash"], "repeats": 2}
    y = r.oof["y"].to_numpy().astype(int)
    plan = assign_folds(y, None, "stratified", 3, 0, repeats=2)
    assert s["folds"]["hash"] == plan.hash
    per_repeat = pd.read_parquet(s["outputs"]["oof_repeats"])
    splits = list(RepeatedStratifiedKFold(n_splits=3, n_repeats=2, random_state=0).split(np.zeros((len(y), 1)), y))
    for name, entry in [*s["models"].items(), ("ensemble", s["ensemble"])]:
        expected = []
        for split, (_, valid) in enumerate(splits):
            rows = per_repeat[per_repeat["repeat"] == split // 3]
            assert (rows["fold"].to_numpy()[valid] == split % 3).all()  # the repeat's folds are sklearn's
            expected.append(roc_auc_score(y[valid], rows[name].to_numpy()[valid]))
        np.testing.assert_allclose(entry["fold_scores"], expected, rtol=1e-12)
        means = np.asarray(expected).reshape(2, 3).mean(axis=1)
        np.testing.assert_allclose(entry["repeat_scores"], means, rtol=1e-12)
        assert entry["repeat_std"] == pytest.approx(np.std(means, ddof=1))
        # oof.parquet: the mean of the repeats' OOF (every row held out once per repeat)
        mean_oof = per_repeat.groupby("row")[name].mean().to_numpy()
        np.testing.assert_allclose(r.oof[name].to_numpy(), mean_oof, rtol=1e-12)


def _signal_data(d: Path) -> Path:
    rng = np.random.default_rng(8)
    n = 600
    frame = pd.DataFrame({"s1": rng.normal(size=n), "s2": rng.normal(size=n), "n1": rng.normal(size=n),
                          "n2": rng.normal(size=n)})
    frame["y"] = (frame.s1 + frame.s2 + rng.normal(0, 1.5, n) > 0).astype(int)
    path = d / "signal.parquet"
    frame.to_parquet(path)
    return path


def _repeated_spec(train: Path, c: float) -> dict:
    return {"name": "repeated-pairs", "data": {"train": str(train), "target": "y"}, "metric": "roc_auc",
            "cv": {"scheme": "stratified", "folds": 3, "repeats": 2, "seed": 4},
            "features": {"groups": {"signal": ["s*"], "noise": ["n*"]}},
            "models": [{"name": "logreg", "type": "sklearn", "estimator": "sklearn.linear_model.LogisticRegression",
                        "params": {"C": c}}]}


def test_compare_and_ablate_pair_every_repeat_x_fold(ray_cluster, uri: str, tmp_path: Path) -> None:
    from foldwise.tasks.repeats import corrected_t_test
    from foldwise.workflows.commands.ablate import run_ablation
    from foldwise.workflows.commands.compare import compare

    train = _signal_data(tmp_path)
    a = run_cv(_repeated_spec(train, 1.0), out=tmp_path / "a", tracking_uri=uri)
    b = run_cv(_repeated_spec(train, 0.001), out=tmp_path / "b", tracking_uri=uri)
    assert a.summary["folds"]["hash"] == b.summary["folds"]["hash"]  # same folds, repeats, seed: paired
    c = compare(a.run_id, b.run_id, out=tmp_path / "cmp", tracking_uri=uri, n_boot=0, log=False).summary
    assert c["same_folds"] is True and len(c["fold_deltas"]) == 6
    by_hand = np.asarray(b.summary["ensemble"]["fold_scores"]) - np.asarray(a.summary["ensemble"]["fold_scores"])
    np.testing.assert_allclose(c["fold_deltas"], by_hand, rtol=1e-9)
    assert c["p_values"]["corrected_t"] == pytest.approx(corrected_t_test(by_hand, 3)[1], rel=1e-9)

    ab = run_ablation(_repeated_spec(train, 1.0), out=tmp_path / "ablate", tracking_uri=uri, n_boot=200).summary
    variants = {v["dropped"]: v for v in ab["variants"]}
    base = ab["baseline"]["fold_scores"]
    assert len(base) == 6
    for v in variants.values():
        d = np.asarray(v["fold_scores"]) - np.asarray(base)
        np.testing.assert_allclose(v["fold_deltas"], d, rtol=1e-9)
        assert v["p_corrected"] == pytest.approx(corrected_t_test(d, 3)[1], rel=1e-9)
    assert variants["signal"]["verdict"] == "helps" and variants["signal"]["delta"] < -0.05


def test_seed_averaging_scores_the_mean_of_each_seeds_fit(ray_cluster, uri: str, tmp_path: Path) -> None:
    """Each seed is its own node; the model scored (and ensembled) is their average, fold by fold."""
    from foldwise.tasks.data import DataConfig, prepare_data
    from foldwise.tasks.metrics import score
    from foldwise.tasks.models import ModelConfig
    from foldwise.tasks.train import train_fold

    params = {"n_estimators": 40, "num_leaves": 7, "feature_fraction": 0.6, "bagging_fraction": 0.7, "bagging_freq": 1}
    spec = {"name": "seeds", "data": {"train": "sklearn:breast_cancer"}, "cv": {"folds": 3, "seed": 2},
            "models": [{"name": "lgbm", "type": "lightgbm", "seeds": [5, 6, 7], "params": params}]}
    r = run_cv(spec, out=tmp_path, tracking_uri=uri)
    s = r.summary
    data = prepare_data(DataConfig(train="sklearn:breast_cancer"))
    plan = assign_folds(data.y, None, "stratified", 3, 2)
    expected, single = [], []
    for k in range(3):
        fits = [train_fold(data, plan, ModelConfig(name="x", type="lightgbm", params=params, seed=sd), k, "roc_auc", 2)
                for sd in (5, 6, 7)]
        assert len({f.oof.tobytes() for f in fits}) == 3  # the seeds really differ
        mean = np.mean([f.oof for f in fits], axis=0)
        expected.append(score("roc_auc", "binary", data.y[plan.valid_rows(k)], mean))
        single.append(fits[0].score)
        np.testing.assert_allclose(r.oof["lgbm"].to_numpy()[plan.valid_rows(k)], mean, rtol=1e-12)
    np.testing.assert_allclose(s["models"]["lgbm"]["fold_scores"], expected, rtol=1e-12)
    assert list(s["models"]) == ["lgbm"] and s["ensemble"]["weights"] == {"lgbm": 1.0}
    assert len(s["models"]["lgbm"]["fit_seconds"]) == 3  # one entry per fold: the seeds' fits summed
