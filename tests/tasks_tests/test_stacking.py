"""Multi-layer stacking, without Ray or MLflow: honest layers, passthrough, and the time scheme's
blenders that never learn from a later fold (a canary with a drifting target)."""

from __future__ import annotations

import numpy as np
import pytest

from foldwise.tasks.ensemble import blend
from foldwise.tasks.folds import assign_folds
from foldwise.tasks.stacking import fit_rows_for


def _base_oof(y: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    return 1 / (1 + np.exp(-(strength * (2 * y - 1) + rng.normal(0, 1, len(y)))))


def test_random_labels_score_chance_through_two_layers_with_passthrough() -> None:
    rng = np.random.default_rng(0)
    n = 2000
    y = rng.integers(0, 2, n)
    X = rng.normal(size=(n, 6))
    plan = assign_folds(y, None, "stratified", 5, 0)
    oof = {m: rng.uniform(size=n) for m in ("a", "b", "c")}
    ens = blend("stack", oof, None, y, plan, "roc_auc", "binary", 0, layers=2, passthrough=True, X=X)
    assert ens.cv_score == pytest.approx(0.5, abs=0.03)


def test_passthrough_layers_use_the_features_the_base_models_missed() -> None:
    """y depends on x1 (which the base model saw) and x2 (which it did not): passthrough recovers x2."""
    rng = np.random.default_rng(1)
    n = 3000
    X = rng.normal(size=(n, 3))
    y = (X[:, 0] + X[:, 1] + rng.normal(0, 0.5, n) > 0).astype(int)
    plan = assign_folds(y, None, "stratified", 5, 0)
    base = 1 / (1 + np.exp(-(X[:, 0] + rng.normal(0, 0.3, n))))
    oof = {"m1": base, "m2": np.clip(base + rng.normal(0, 0.05, n), 0, 1)}
    test = {"m1": base[:100], "m2": base[:100]}
    plain = blend("stack", oof, test, y, plan, "roc_auc", "binary", 0)
    through = blend("stack", oof, test, y, plan, "roc_auc", "binary", 0, passthrough=True, X=X, X_test=X[:100])
    two = blend("stack", oof, test, y, plan, "roc_auc", "binary", 0, layers=2, passthrough=True, X=X, X_test=X[:100])
    assert through.cv_score > plain.cv_score + 0.05 and two.cv_score > plain.cv_score + 0.05
    assert two.test.shape == (100,) and np.isfinite(two.test).all()
    assert set(two.weights) == {"m1", "m2"} and sum(two.weights.values()) == pytest.approx(1.0)


@pytest.mark.parametrize(("method", "layers", "passthrough"), [("stack", 1, False), ("stack", 2, True), ("weights", 1, False)])
def test_time_scheme_never_fits_a_layer_on_a_later_fold(method: str, layers: int, passthrough: bool) -> None:
    """Canary: the target drifts over time; rewriting every later fold (labels, predictions, features)
    must leave each fold's ensemble prediction unchanged, and fold k's blender learns from folds < k."""
    rng = np.random.default_rng(2)
    n = 1200
    t = np.arange(n)
    X = rng.normal(size=(n, 2))
    drift = np.where(t < n // 2, 1.0, -1.0)  # the sign of the relation flips half way
    y = (drift * X[:, 0] + rng.normal(0, 0.5, n) > 0).astype(int)
    plan = assign_folds(y, None, "time", 4, 0)
    oof = {"a": _base_oof(y, rng, 1.0), "b": _base_oof(y, rng, 0.5)}
    for m in oof:
        oof[m][plan.fold_of_row < 0] = np.nan
    ref = blend(method, oof, None, y, plan, "roc_auc", "binary", 0, layers=layers, passthrough=passthrough, X=X)
    for k in range(plan.n_folds):
        assert (plan.fold_of_row[fit_rows_for(plan, k)] < k).all()
        later = plan.fold_of_row > k
        y2, X2 = y.copy(), X.copy()
        y2[later] = 1 - y2[later]
        X2[later] = rng.normal(size=(later.sum(), 2)) * 10
        oof2 = {m: np.where(later, rng.uniform(size=n), p) for m, p in oof.items()}
        other = blend(method, oof2, None, y2, plan, "roc_auc", "binary", 0, layers=layers, passthrough=passthrough, X=X2)
        upto = (plan.fold_of_row >= 0) & (plan.fold_of_row <= k)
        np.testing.assert_array_equal(other.oof[upto], ref.oof[upto])
    first = plan.valid_rows(0)  # nothing earlier to learn from: the plain mean of the inputs
    np.testing.assert_allclose(ref.oof[first], (oof["a"][first] + oof["b"][first]) / 2)


def test_other_schemes_still_cross_fit_on_every_other_fold() -> None:
    y = np.arange(100) % 2
    plan = assign_folds(y, None, "stratified", 4, 0)
    rows = fit_rows_for(plan, 2)
    assert set(plan.fold_of_row[rows]) == {0, 1, 3}
