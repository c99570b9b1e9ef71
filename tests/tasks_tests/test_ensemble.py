"""Ensembles are scored honestly: only OOF predictions, weights and meta-models cross-fitted."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import make_classification, make_regression
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.naive_bayes import GaussianNB
from sklearn.neighbors import KNeighborsRegressor
from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

from foldwise.tasks.ensemble import METHODS, blend, greedy_weights
from foldwise.tasks.folds import FoldPlan, assign_folds
from foldwise.tasks.metrics import score

CLASSIFIERS = {
    "lr": lambda: LogisticRegression(max_iter=1000),
    "tree": lambda: DecisionTreeClassifier(max_depth=4, random_state=0),
    "nb": GaussianNB,
}
REGRESSORS = {
    "ridge": lambda: Ridge(alpha=1.0),
    "tree": lambda: DecisionTreeRegressor(max_depth=4, random_state=0),
    "knn": lambda: KNeighborsRegressor(n_neighbors=15),
}


def oof_and_test(models: dict, X: np.ndarray, y: np.ndarray, X_test: np.ndarray, plan: FoldPlan,
                 task: str) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Real OOF (NaN outside held-out) and fold-averaged test predictions, on the plan's folds."""
    oof, test = {}, {}
    for name, make in models.items():
        rows = []
        for k in range(plan.n_folds):
            model = make().fit(X[plan.train_rows(k)], y[plan.train_rows(k)])
            predict = model.predict if task == "regression" else model.predict_proba
            valid = plan.valid_rows(k)
            p_valid, p_test = predict(X[valid]), predict(X_test)
            if task == "binary":
                p_valid, p_test = p_valid[:, 1], p_test[:, 1]
            if name not in oof:
                oof[name] = np.full((len(y), *p_valid.shape[1:]), np.nan)
            oof[name][valid] = p_valid
            rows.append(p_test)
        test[name] = np.mean(rows, axis=0)
    return oof, test


def model_cv(pred: np.ndarray, y: np.ndarray, plan: FoldPlan, metric: str, task: str) -> float:
    return float(np.mean([score(metric, task, y[plan.valid_rows(k)], pred[plan.valid_rows(k)])
                          for k in range(plan.n_folds)]))


@pytest.fixture(scope="module")
def random_labels():
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(2000, 10)), rng.integers(0, 2, size=2000)
    plan = assign_folds(y, None, "stratified", 5, 0)
    models = {**CLASSIFIERS, "deep_tree": lambda: DecisionTreeClassifier(random_state=0)}
    oof, test = oof_and_test(models, X, y, rng.normal(size=(300, 10)), plan, "binary")
    oof["noise"] = np.where(plan.fold_of_row >= 0, rng.uniform(size=2000), np.nan)
    test["noise"] = rng.uniform(size=300)
    return oof, test, y, plan


@pytest.fixture(scope="module")
def binary_data():
    X, y = make_classification(2300, 12, n_informative=5, flip_y=0.1, random_state=1)
    plan = assign_folds(y[:2000], None, "stratified", 5, 0)
    oof, test = oof_and_test(CLASSIFIERS, X[:2000], y[:2000], X[2000:], plan, "binary")
    return oof, test, y[:2000], plan


@pytest.mark.parametrize("method", METHODS)
def test_random_labels_score_chance(random_labels, method: str) -> None:
    """No method may find signal in labels that have none: cross-fitting keeps stacking honest."""
    oof, test, y, plan = random_labels
    res = blend(method, oof, test, y, plan, "roc_auc", "binary", seed=0)
    assert abs(res.cv_score - 0.5) < 0.05, res.cv_score
    assert res.test is not None and res.test.shape == (300,)


@pytest.mark.parametrize("method", METHODS)
def test_informative_not_worse_than_worst(binary_data, method: str) -> None:
    oof, test, y, plan = binary_data
    singles = {m: model_cv(p, y, plan, "roc_auc", "binary") for m, p in oof.items()}
    res = blend(method, oof, test, y, plan, "roc_auc", "binary", seed=0)
    assert res.cv_score >= min(singles.values())
    assert np.isclose(res.cv_score, np.mean(res.fold_scores))
    assert res.oof.shape == (2000,) and res.test.shape == (300,)
    assert all(w >= 0 for w in res.weights.values()) and np.isclose(sum(res.weights.values()), 1.0)
    assert set(res.weights) == set(oof)
    if method in ("weights", "stack"):
        assert res.cv_score >= max(singles.values()) - 0.02


def test_weights_are_counts_and_deterministic(binary_data) -> None:
    oof, test, y, plan = binary_data
    a = blend("weights", oof, test, y, plan, "roc_auc", "binary", seed=0)
    b = blend("weights", oof, test, y, plan, "roc_auc", "binary", seed=1)
    np.testing.assert_array_equal(a.oof, b.oof)
    np.testing.assert_array_equal(a.test, b.test)
    assert a.weights == b.weights
    for w in a.weights.values():  # counts / total with total <= 100
        assert any(np.isclose(w * t, round(w * t)) for t in range(1, 101))
    s1 = blend("stack", oof, test, y, plan, "roc_auc", "binary", seed=3)
    s2 = blend("stack", oof, test, y, plan, "roc_auc", "binary", seed=3)
    np.testing.assert_array_equal(s1.oof, s2.oof)


def test_weights_chosen_without_the_held_out_fold(binary_data) -> None:
    """Fold k's weights are exactly the greedy weights of the other held-out folds."""
    oof, _, y, plan = binary_data
    names = list(oof)
    res = blend("weights", oof, None, y, plan, "roc_auc", "binary", seed=0)
    assert res.test is None
    for k in range(plan.n_folds):
        other = np.flatnonzero((plan.fold_of_row >= 0) & (plan.fold_of_row != k))
        w = greedy_weights([oof[m][other] for m in names], y[other], "roc_auc", "binary")
        valid = plan.valid_rows(k)
        np.testing.assert_allclose(res.oof[valid], sum(wi * oof[m][valid] for wi, m in zip(w, names)))


@pytest.mark.parametrize("method", ["weights", "stack"])
def test_model_perfect_on_one_fold_does_not_inflate_that_fold(method: str) -> None:
    """A model perfect on fold 0 only (constant elsewhere) is used by the final, all-rows fit,
    but fold 0's weights / meta-model never see fold 0, so fold 0 scores as the other model.
    A leaky (in-sample) blend would report AUC 1.0 on fold 0."""
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, size=1000)
    plan = assign_folds(y, None, "stratified", 5, 0)
    good = np.clip(0.5 + 0.25 * (y - 0.5) + rng.normal(0, 0.25, size=1000), 0.01, 0.99)
    leak = np.where(plan.fold_of_row == 0, y.astype(float), 0.5)
    res = blend(method, {"good": good, "leak": leak}, {"good": good, "leak": leak}, y, plan,
                "roc_auc", "binary", seed=0)
    assert res.weights["leak"] > 0  # used by the final fit on all held-out rows...
    f0 = plan.valid_rows(0)
    assert score("roc_auc", "binary", y[f0], res.test[f0]) == 1.0  # ...so in-sample it is perfect
    assert res.fold_scores[0] == pytest.approx(score("roc_auc", "binary", y[f0], good[f0]))
    assert res.cv_score == pytest.approx(model_cv(good, y, plan, "roc_auc", "binary"))


@pytest.mark.parametrize("method", METHODS)
def test_single_model_is_identity(binary_data, method: str) -> None:
    oof, test, y, plan = binary_data
    res = blend(method, {"lr": oof["lr"]}, {"lr": test["lr"]}, y, plan, "roc_auc", "binary", seed=0)
    np.testing.assert_array_equal(res.oof, oof["lr"])
    np.testing.assert_array_equal(res.test, test["lr"])
    assert res.weights == {"lr": 1.0}
    assert res.cv_score == model_cv(oof["lr"], y, plan, "roc_auc", "binary")


@pytest.fixture(scope="module")
def multiclass_data():
    X, y = make_classification(1300, 10, n_informative=6, n_classes=3, random_state=2)
    plan = assign_folds(y[:1000], None, "stratified", 5, 0)
    oof, test = oof_and_test(CLASSIFIERS, X[:1000], y[:1000], X[1000:], plan, "multiclass")
    return oof, test, y[:1000], plan


def test_rank_mean_multiclass_raises(multiclass_data) -> None:
    oof, test, y, plan = multiclass_data
    with pytest.raises(ValueError, match="binary"):
        blend("rank_mean", oof, test, y, plan, "accuracy", "multiclass", seed=0)
    with pytest.raises(ValueError, match="binary"):
        blend("rank_mean", {"lr": oof["lr"]}, None, y, plan, "accuracy", "multiclass", seed=0)


@pytest.mark.parametrize("method", ["mean", "weights", "stack"])
def test_multiclass_rows_are_probabilities(multiclass_data, method: str) -> None:
    oof, test, y, plan = multiclass_data
    res = blend(method, oof, test, y, plan, "neg_log_loss", "multiclass", seed=0)
    assert res.oof.shape == (1000, 3) and res.test.shape == (300, 3)
    np.testing.assert_allclose(res.oof.sum(axis=1), 1.0)
    np.testing.assert_allclose(res.test.sum(axis=1), 1.0)
    singles = [model_cv(p, y, plan, "neg_log_loss", "multiclass") for p in oof.values()]
    assert res.cv_score >= min(singles)
    assert np.isclose(sum(res.weights.values()), 1.0)


def test_custom_meta_model(multiclass_data) -> None:
    oof, test, y, plan = multiclass_data
    res = blend("stack", oof, test, y, plan, "accuracy", "multiclass", seed=0,
                meta="sklearn.ensemble.RandomForestClassifier", meta_params={"n_estimators": 20, "max_depth": 3})
    assert res.cv_score > 0.6
    np.testing.assert_allclose(res.oof.sum(axis=1), 1.0)


def test_regression_stack_near_best_model() -> None:
    X, y = make_regression(1300, 8, n_informative=5, noise=20.0, random_state=3)
    y = y + 30 * np.sin(X[:, 0])  # something the trees and knn see that ridge does not
    plan = assign_folds(y[:1000], None, "kfold", 5, 0)
    oof, test = oof_and_test(REGRESSORS, X[:1000], y[:1000], X[1000:], plan, "regression")
    best = max(model_cv(p, y[:1000], plan, "r2", "regression") for p in oof.values())
    for method in ("mean", "weights", "stack"):
        res = blend(method, oof, test, y[:1000], plan, "r2", "regression", seed=0)
        assert res.oof.shape == (1000,) and res.test.shape == (300,)
        if method != "mean":
            assert res.cv_score >= best - 0.02, (method, res.cv_score, best)


def test_time_scheme_nan_rows_stay_nan() -> None:
    X, y = make_classification(1000, 8, n_informative=4, random_state=4)
    plan = assign_folds(y, None, "time", 4, 0)
    never = plan.fold_of_row < 0
    assert never.any()
    oof, test = oof_and_test(CLASSIFIERS, X, y, X[:50], plan, "binary")
    assert np.isnan(oof["lr"][never]).all()
    for method in METHODS:
        res = blend(method, oof, test, y, plan, "roc_auc", "binary", seed=0)
        assert np.isnan(res.oof[never]).all() and np.isfinite(res.oof[~never]).all()
        assert all(np.isfinite(res.fold_scores)) and res.cv_score > 0.8


def test_nan_on_held_out_rows_is_an_error(binary_data) -> None:
    oof, _, y, plan = binary_data
    bad = oof["lr"].copy()
    bad[plan.valid_rows(2)[0]] = np.nan
    with pytest.raises(ValueError, match="held-out"):
        blend("mean", {"lr": bad, "nb": oof["nb"]}, None, y, plan, "roc_auc", "binary", seed=0)
