"""Scoring stored predictions, in the metric's own sign (greater is always better).

foldwise works on stored predictions (OOF, blends), not on fitted estimators, so it applies each
metric to those predictions itself. A metric is sklearn's scorer name (its public metric
function, keyword arguments, sign and response, tabulated here from sklearn's documentation;
no private scorer attributes are read) or the user's own function by import path,
`mypkg.metrics:weighted_mae`: `(y_true, y_pred) -> float`, with the attributes
`greater_is_better` (default True) and `needs` (`proba`, `label` or `value`; default `proba`),
set by hand or with the `custom_metric` decorator. `y_true` holds the encoded classes (0..K-1;
for binary 1 is the positive class) or the regression target.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import sklearn.metrics as skm
from sklearn.metrics import get_scorer_names

NEEDS: tuple[str, ...] = ("proba", "label", "value")


@dataclass(frozen=True)
class Metric:
    """A metric as foldwise applies it: `sign * fn(y_true, pred, **kwargs)`, pred as `needs` says."""

    name: str
    fn: Callable[..., float]
    greater_is_better: bool
    needs: str  # proba: probabilities as the models return them; label: class labels; value: as is
    kwargs: dict[str, Any] = field(default_factory=dict)
    custom: bool = False


def _lr_pos(y: np.ndarray, p: np.ndarray) -> float:
    return float(skm.class_likelihood_ratios(y, p)[0])


def _lr_neg(y: np.ndarray, p: np.ndarray) -> float:
    return float(skm.class_likelihood_ratios(y, p)[1])


def _table() -> dict[str, Metric]:
    """sklearn's supervised scorers, each as the public function, kwargs, sign and response that
    sklearn's scorer documentation gives it (make_scorer's arguments); tested equal to the scorers."""
    out: dict[str, Metric] = {}

    def add(name: str, fn: Callable, gib: bool, needs: str, **kwargs: Any) -> None:
        out[name] = Metric(name, fn, gib, needs, kwargs)

    for name, fn in [("accuracy", skm.accuracy_score), ("balanced_accuracy", skm.balanced_accuracy_score),
                     ("matthews_corrcoef", skm.matthews_corrcoef)]:
        add(name, fn, True, "label")
    add("positive_likelihood_ratio", _lr_pos, True, "label")
    add("neg_negative_likelihood_ratio", _lr_neg, False, "label")
    for base, fn in [("f1", skm.f1_score), ("precision", skm.precision_score), ("recall", skm.recall_score),
                     ("jaccard", skm.jaccard_score)]:
        add(base, fn, True, "label", average="binary")
        for avg in ("macro", "micro", "samples", "weighted"):
            add(f"{base}_{avg}", fn, True, "label", pos_label=None, average=avg)
    add("roc_auc", skm.roc_auc_score, True, "proba")
    add("average_precision", skm.average_precision_score, True, "proba")
    add("top_k_accuracy", skm.top_k_accuracy_score, True, "proba")
    for mc in ("ovr", "ovo"):
        add(f"roc_auc_{mc}", skm.roc_auc_score, True, "proba", multi_class=mc)
        add(f"roc_auc_{mc}_weighted", skm.roc_auc_score, True, "proba", multi_class=mc, average="weighted")
    add("neg_log_loss", skm.log_loss, False, "proba")
    add("neg_brier_score", skm.brier_score_loss, False, "proba")
    add("d2_brier_score", skm.d2_brier_score, True, "proba")
    add("d2_log_loss_score", skm.d2_log_loss_score, True, "proba")
    for name, fn in [("r2", skm.r2_score), ("explained_variance", skm.explained_variance_score),
                     ("d2_absolute_error_score", skm.d2_absolute_error_score)]:
        add(name, fn, True, "value")
    for name, fn in [("max_error", skm.max_error), ("mean_absolute_error", skm.mean_absolute_error),
                     ("mean_squared_error", skm.mean_squared_error), ("root_mean_squared_error", skm.root_mean_squared_error),
                     ("mean_squared_log_error", skm.mean_squared_log_error),
                     ("root_mean_squared_log_error", skm.root_mean_squared_log_error),
                     ("median_absolute_error", skm.median_absolute_error),
                     ("mean_absolute_percentage_error", skm.mean_absolute_percentage_error),
                     ("mean_poisson_deviance", skm.mean_poisson_deviance), ("mean_gamma_deviance", skm.mean_gamma_deviance)]:
        add(f"neg_{name}", fn, False, "value")
    return out


BUILTIN_METRICS: dict[str, Metric] = {n: m for n, m in _table().items() if n in set(get_scorer_names())}
METRIC_NAMES: tuple[str, ...] = tuple(sorted(get_scorer_names()))  # what a spec may name (check_metric says which fit)
_CLUSTERING_NAMES = tuple(sorted(set(get_scorer_names()) - set(BUILTIN_METRICS)))

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
                        "max_error", "d2_absolute", "neg_mean_poisson", "neg_mean_gamma")


class MetricError(ValueError):
    """A custom metric that cannot be imported or is not usable (named in one line)."""


def custom_metric(greater_is_better: bool = True, needs: str = "proba") -> Callable[[Callable], Callable]:
    """Decorator marking a `(y_true, y_pred) -> float` function as a foldwise metric."""
    if needs not in NEEDS:
        raise MetricError(f"needs must be one of {', '.join(NEEDS)} (got {needs!r})")

    def mark(fn: Callable) -> Callable:
        fn.greater_is_better = bool(greater_is_better)
        fn.needs = needs
        return fn

    return mark


def is_custom(metric: str) -> bool:
    """'pkg.module:function' names the user's own metric; anything else is a scorer name."""
    return ":" in metric


_CUSTOM: dict[str, Metric] = {}


def _import_custom(path: str) -> Metric:
    from foldwise.tasks.source import import_fresh

    module_name, _, attr = path.partition(":")
    try:
        fn = getattr(import_fresh(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise MetricError(f"cannot import metric {path!r}: {e}") from None
    except Exception as e:  # noqa: BLE001 - a user module may raise anything at import: one line, exit 2
        raise MetricError(f"metric {path!r}: importing {module_name!r} raised {type(e).__name__}: "
                          f"{(str(e).strip().splitlines() or [''])[0]}") from None
    if not callable(fn):
        raise MetricError(f"metric {path!r} is not a function of (y_true, y_pred)")
    gib = getattr(fn, "greater_is_better", True)
    needs = getattr(fn, "needs", "proba")
    if not isinstance(gib, bool | np.bool_):
        raise MetricError(f"metric {path!r}: greater_is_better must be true or false (got {gib!r})")
    if needs not in NEEDS:
        raise MetricError(f"metric {path!r}: needs must be one of {', '.join(NEEDS)} (got {needs!r})")
    return Metric(path, fn, bool(gib), needs, custom=True)


def resolve_metric(metric: str, fresh: bool = False) -> Metric:
    """The Metric a name means (a scorer name or 'pkg.module:function'); MetricError if none.

    A custom metric is imported once per process; `fresh` re-imports it when its source changed
    since (what a long-lived worker does at the start of a fold, as for a user's adapter)."""
    if is_custom(metric):
        if fresh or metric not in _CUSTOM:
            _CUSTOM[metric] = _import_custom(metric)
        return _CUSTOM[metric]
    found = BUILTIN_METRICS.get(metric)
    if found is None:
        raise MetricError(f"unknown metric {metric!r}")
    return found


def greater_is_better(metric: str) -> bool:
    return resolve_metric(metric).greater_is_better


def metric_suggestions(name: str, n: int = 3) -> list[str]:
    """Scorer names (or aliases) close to a misspelled `name`, closest first."""
    import difflib

    return difflib.get_close_matches(name, [*METRIC_NAMES, *METRIC_ALIASES], n=n, cutoff=0.75)


def response_of(metric: str) -> str:
    """'predict' (labels/values) or 'proba' (probabilities/scores)."""
    return "proba" if resolve_metric(metric).needs == "proba" else "predict"


def score(metric: str, task: str, y_true: np.ndarray, pred: np.ndarray) -> float:
    """Score `pred` (see tasks.models: (n,) or (n, K)) against encoded `y_true`, in the metric's
    own sign: a metric where smaller is better is negated, so greater is always better."""
    m = resolve_metric(metric)
    if m.needs == "label" and task != "regression":
        pred = labels_of(pred, task)
    value = float(m.fn(y_true, pred, **m.kwargs))
    return value if m.greater_is_better else -value


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
    if metric in _CLUSTERING_NAMES:
        return f"metric {metric!r} is a clustering metric; foldwise scores supervised predictions"
    if is_custom(metric):
        try:
            resolve_metric(metric)
        except MetricError as e:
            return str(e)
        return _try_on_sample(metric, task, n_classes)
    is_regression_metric = metric.startswith(_REGRESSION_PREFIXES)
    if task == "regression" and not is_regression_metric:
        return f"metric {metric!r} is for classification, but the task is regression (try r2 or neg_root_mean_squared_error)"
    if task != "regression" and is_regression_metric:
        return f"metric {metric!r} is for regression, but the task is {task} (try {DEFAULT_METRIC[task]})"
    return _try_on_sample(metric, task, n_classes)


def _try_on_sample(metric: str, task: str, n_classes: int) -> str | None:
    """None if `metric` scores a tiny random sample of this task's predictions, else why not."""
    rng = np.random.default_rng(0)
    k = max(n_classes, 2)
    # positive regression values, so the log / poisson / gamma metrics (rmsle, ...) pass too
    y = np.arange(24) % k if task != "regression" else rng.uniform(1.0, 3.0, size=24)
    if task == "binary":
        pred = rng.uniform(size=24)
    elif task == "multiclass":
        pred = rng.dirichlet(np.ones(k), size=24)
    else:
        pred = y + rng.uniform(-0.5, 0.5, size=24)
    try:
        value = score(metric, task, y, pred)
    except Exception as e:  # noqa: BLE001 - any failure means "unfit for this task"
        hint = " (for multiclass AUC use roc_auc_ovr)" if metric.startswith("roc_auc") else ""
        return f"metric {metric!r} cannot score a {task} task: {str(e).splitlines()[0] if str(e) else type(e).__name__}{hint}"
    if not isinstance(value, float) or (is_custom(metric) and not np.isfinite(value)):
        return f"metric {metric!r} must return a finite number (got {value!r} on a sample of {task} predictions)"
    return None
