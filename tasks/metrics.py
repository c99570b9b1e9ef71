"""Scoring predictions with sklearn's scorers, in the scorer's own sign.

foldwise works on stored predictions (OOF, blends), not on fitted estimators, so it
calls the scorer's underlying metric on those predictions exactly as the scorer would:
same function, same kwargs, same sign. Greater is therefore always better.
"""

from __future__ import annotations

from functools import cache

import numpy as np
from sklearn.metrics import get_scorer, get_scorer_names

METRIC_NAMES: tuple[str, ...] = tuple(sorted(get_scorer_names()))

# What people type -> sklearn's scorer name (a spec may use either; the note says which scorer it is).
METRIC_ALIASES: dict[str, str] = {
    "auc": "roc_auc", "roc": "roc_auc", "acc": "accuracy", "logloss": "neg_log_loss", "log_loss": "neg_log_loss",
    "cross_entropy": "neg_log_loss", "f1_score": "f1", "ap": "average_precision", "pr_auc": "average_precision",
    "brier": "neg_brier_score", "rmse": "neg_root_mean_squared_error", "mse": "neg_mean_squared_error",
    "mae": "neg_mean_absolute_error", "rmsle": "neg_root_mean_squared_log_error", "msle": "neg_mean_squared_log_error",
    "mape": "neg_mean_absolute_percentage_error", "medae": "neg_median_absolute_error", "r2": "r2", "r2_score": "r2",
}

DEFAULT_METRIC = {"binary": "roc_auc", "multiclass": "accuracy", "regression": "neg_root_mean_squared_error"}

_REGRESSION_PREFIXES = ("neg_mean", "neg_median", "neg_root_mean", "neg_max_error", "r2", "explained_variance",
                        "max_error", "d2_", "neg_mean_poisson", "neg_mean_gamma")
_CLUSTERING = ("adjusted_", "completeness", "fowlkes", "homogeneity", "mutual_info", "normalized_mutual",
               "rand_score", "v_measure")


def metric_suggestions(name: str, n: int = 3) -> list[str]:
    """Scorer names (or aliases) close to a misspelled `name`, closest first."""
    import difflib

    return difflib.get_close_matches(name, [*METRIC_NAMES, *METRIC_ALIASES], n=n, cutoff=0.75)


@cache
def _scorer(name: str):  # noqa: ANN202 - sklearn's private _Scorer type
    """sklearn's scorer for `name`. Private attributes are read from it (`_response_method`,
    `_sign`, `_score_func`, `_kwargs`): sklearn has no public API that applies a named scorer to
    predictions (a scorer is only callable on a fitted estimator and X, which would refit or
    re-predict each fold). They are the attributes `make_scorer` documents as its arguments."""
    return get_scorer(name)


def response_of(metric: str) -> str:
    """'predict' (labels/values) or 'proba' (probabilities/scores)."""
    method = _scorer(metric)._response_method
    methods = method if isinstance(method, tuple) else (method,)
    return "predict" if methods == ("predict",) else "proba"


def score(metric: str, task: str, y_true: np.ndarray, pred: np.ndarray) -> float:
    """Score `pred` (see tasks.models: (n,) or (n, K)) against encoded `y_true`."""
    s = _scorer(metric)
    if response_of(metric) == "predict" and task != "regression":
        pred = labels_of(pred, task)
    return float(s._sign * s._score_func(y_true, pred, **s._kwargs))


def rank_auc(y_true: np.ndarray, pred: np.ndarray) -> float:
    """Binary ROC AUC as the Mann-Whitney statistic (ties get average ranks): equals sklearn's
    roc_auc_score, without its per-call validation (~100x faster on small inputs, which
    matters for bootstraps and per-column scans). NaN when only one class is present."""
    from scipy.stats import rankdata

    pos = np.asarray(y_true) == 1
    n1 = int(pos.sum())
    n0 = len(pos) - n1
    if n1 == 0 or n0 == 0:
        return float("nan")
    return float((rankdata(pred)[pos].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def ovr_auc(y_true: np.ndarray, proba: np.ndarray) -> float:
    """Macro one-vs-rest AUC over classes 0..K-1 (sklearn's roc_auc_score(multi_class='ovr')).

    NaN when a class is absent from y_true, where sklearn raises."""
    return float(np.mean([rank_auc(np.asarray(y_true) == k, proba[:, k]) for k in range(proba.shape[1])]))


def labels_of(pred: np.ndarray, task: str) -> np.ndarray:
    if task == "binary":
        return (np.asarray(pred) > 0.5).astype(int)
    return np.asarray(pred).argmax(axis=1)


def check_metric(metric: str, task: str, n_classes: int) -> str | None:
    """None if `metric` can score this task, else the reason (checked on a tiny sample)."""
    if metric.startswith(_CLUSTERING):
        return f"metric {metric!r} is a clustering metric; foldwise scores supervised predictions"
    is_regression_metric = metric.startswith(_REGRESSION_PREFIXES)
    if task == "regression" and not is_regression_metric:
        return f"metric {metric!r} is for classification, but the task is regression (try r2 or neg_root_mean_squared_error)"
    if task != "regression" and is_regression_metric:
        return f"metric {metric!r} is for regression, but the task is {task} (try {DEFAULT_METRIC[task]})"
    rng = np.random.default_rng(0)
    k = max(n_classes, 2)
    y = np.arange(24) % k if task != "regression" else rng.normal(size=24)
    if task == "binary":
        pred = rng.uniform(size=24)
    elif task == "multiclass":
        pred = rng.dirichlet(np.ones(k), size=24)
    else:
        pred = y + rng.normal(size=24)
    try:
        score(metric, task, y, pred)
    except Exception as e:  # noqa: BLE001 - any failure means "unfit for this task"
        hint = " (for multiclass AUC use roc_auc_ovr)" if metric.startswith("roc_auc") else ""
        return f"metric {metric!r} cannot score a {task} task: {str(e).splitlines()[0]}{hint}"
    return None
