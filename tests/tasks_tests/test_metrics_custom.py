"""Metrics without sklearn's private scorer internals: the built-in table equals sklearn's own
scorers, and a user's metric function (`pkg.module:function`) scores like any scorer name."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer, load_diabetes, load_wine
from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor
from sklearn.metrics import get_scorer

from foldwise.tasks.metrics import (
    _CLUSTERING_NAMES,
    BUILTIN_METRICS,
    MetricError,
    check_metric,
    custom_metric,
    resolve_metric,
    score,
)
from foldwise.tasks.models.sklearn_model import _align_proba


def _fitted(task: str):  # noqa: ANN202
    if task == "regression":
        X, y = load_diabetes(return_X_y=True)
        # a forest predicts means of the (positive) targets: the log / poisson / gamma metrics apply
        return RandomForestRegressor(n_estimators=20, max_depth=4, random_state=0).fit(X, y), X, y
    X, y = (load_breast_cancer if task == "binary" else load_wine)(return_X_y=True)
    # a forest has predict_proba only, so sklearn's ranking scorers read probabilities, as foldwise
    # does on stored predictions (they prefer decision_function where a model has one)
    return RandomForestClassifier(n_estimators=20, max_depth=3, random_state=0).fit(X, y), X, y


@pytest.mark.parametrize("task", ["binary", "multiclass", "regression"])
def test_every_builtin_metric_equals_sklearns_scorer(task: str) -> None:
    """The table (public functions + documented kwargs) gives sklearn's scorer value on the same model."""
    est, X, y = _fitted(task)
    if task == "regression":
        pred = est.predict(X)
    else:
        from foldwise.tasks.models import FitContext

        ctx = FitContext(task=task, n_classes=len(np.unique(y)), categorical=(), seed=0)
        pred = _align_proba(est.predict_proba(X), est.classes_, ctx)
    compared = 0
    for name in BUILTIN_METRICS:
        if check_metric(name, task, len(np.unique(y)) if task != "regression" else 0) is not None:
            continue
        try:
            theirs = get_scorer(name)(est, X, y)
        except ValueError:
            continue  # sklearn cannot score this task either (e.g. f1 'binary' average on 3 classes)
        ours = score(name, task, y, pred)
        assert ours == pytest.approx(theirs, rel=1e-9, abs=1e-12), name
        compared += 1
    assert compared >= {"binary": 20, "multiclass": 15, "regression": 13}[task]


def test_clustering_scorers_are_refused() -> None:
    assert _CLUSTERING_NAMES and all("clustering" in check_metric(n, "binary", 2) for n in _CLUSTERING_NAMES)


@pytest.fixture
def metric_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    name = f"usermetrics_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent("""
        import numpy as np

        def weighted_mae(y_true, y_pred):
            w = 1.0 + (np.asarray(y_true) > np.median(y_true))
            return float(np.sum(w * np.abs(np.asarray(y_true) - y_pred)) / np.sum(w))
        weighted_mae.greater_is_better = False
        weighted_mae.needs = "value"

        def hit_rate(y_true, y_pred):
            return float(np.mean(np.asarray(y_true) == np.asarray(y_pred)))
        hit_rate.needs = "label"

        def brier(y_true, p):
            return float(np.mean((np.asarray(y_true) - p) ** 2))
        brier.greater_is_better = False

        def bad_needs(y_true, y_pred):
            return 0.0
        bad_needs.needs = "probability"

        NOT_A_FUNCTION = 3

        def returns_text(y_true, y_pred):
            return "high"
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def test_custom_metric_signs_and_needs(metric_module: str) -> None:
    y = np.array([0, 1, 1, 0, 1], dtype=float)
    p = np.array([0.2, 0.9, 0.4, 0.1, 0.8])
    # value: predictions as they are; greater_is_better false -> negated (the scorer convention)
    w = 1.0 + (y > np.median(y))
    assert score(f"{metric_module}:weighted_mae", "regression", y, p) == pytest.approx(-np.sum(w * np.abs(y - p)) / w.sum())
    # label: probabilities become classes (> 0.5) before the function sees them
    assert score(f"{metric_module}:hit_rate", "binary", y.astype(int), p) == pytest.approx(0.8)
    assert score(f"{metric_module}:brier", "binary", y.astype(int), p) == pytest.approx(-np.mean((y - p) ** 2))
    m = resolve_metric(f"{metric_module}:brier")
    assert m.custom and not m.greater_is_better and m.needs == "proba"
    assert check_metric(f"{metric_module}:weighted_mae", "regression", 0) is None


@pytest.mark.parametrize(("attr", "needle"), [
    ("bad_needs", "needs must be one of proba, label, value (got 'probability')"),
    ("NOT_A_FUNCTION", "is not a function of (y_true, y_pred)"),
    ("missing", "cannot import metric"),
])
def test_unusable_custom_metrics_are_named(metric_module: str, attr: str, needle: str) -> None:
    with pytest.raises(MetricError, match=None) as e:
        resolve_metric(f"{metric_module}:{attr}", fresh=True)
    assert needle in str(e.value)
    assert needle in check_metric(f"{metric_module}:{attr}", "binary", 2)


def test_a_custom_metric_that_returns_no_number_is_refused(metric_module: str) -> None:
    assert "cannot score" in check_metric(f"{metric_module}:returns_text", "binary", 2)


def test_decorator_marks_the_function() -> None:
    @custom_metric(greater_is_better=False, needs="value")
    def f(y_true, y_pred):  # noqa: ANN001, ANN202
        return 0.0

    assert f.greater_is_better is False and f.needs == "value"
    with pytest.raises(MetricError):
        custom_metric(needs="labels")
