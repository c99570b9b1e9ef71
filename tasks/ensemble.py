"""Blending stored OOF predictions of several models into one, with an honest CV score.

Only OOF predictions are used, on the same FoldPlan the base models were scored on, so
the ensemble's fold scores are paired with theirs. Anything fitted on labels (greedy
weights, a stacking meta-model) is cross-fitted: fold k's ensemble predictions come from
weights or a meta-model chosen on the *other* held-out folds only, because choosing them
on fold k itself would leak fold k's labels into its own score. The final weights /
meta-model (reported, and applied to the test set) are then fitted on all held-out rows.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata

from foldwise.tasks.folds import FoldPlan
from foldwise.tasks.metrics import score

METHODS: tuple[str, ...] = ("mean", "rank_mean", "weights", "stack")
TASKS: tuple[str, ...] = ("binary", "multiclass", "regression")
MAX_GREEDY_STEPS = 100
CLIP = 1e-6


@dataclass(frozen=True)
class EnsembleResult:
    method: str  # mean | rank_mean | weights | stack
    # model -> weight. mean / rank_mean: equal; weights: Caruana counts / total chosen on all
    # held-out rows; stack: the final meta-model's absolute coefficients summed per base
    # model (over its feature columns and classes), normalised to sum to 1 -- a measure of
    # reliance, not weights of an average.
    weights: dict[str, float]
    oof: np.ndarray  # (n,) or (n, K); NaN on rows outside plan.held_out
    test: np.ndarray | None  # ensemble test predictions, None without a test set
    fold_scores: list[float]  # per fold k: metric on plan.valid_rows(k)
    cv_score: float  # mean of fold_scores


def blend(method: str, oof: dict[str, np.ndarray], test: dict[str, np.ndarray] | None, y: np.ndarray,
          plan: FoldPlan, metric: str, task: str, seed: int,
          meta: str | None = None, meta_params: dict | None = None) -> EnsembleResult:
    """Blend the models' OOF (and test) predictions by `method`; see the module docstring."""
    names = _check_inputs(method, oof, test, y, plan, task)
    held = plan.held_out
    n = len(y)

    if len(names) == 1:  # nothing to blend: identity, whatever the method
        name = names[0]
        ens_oof = _nan_outside(np.asarray(oof[name], dtype=np.float64), held)
        ens_test = None if test is None else np.asarray(test[name], dtype=np.float64).copy()
        return _result(method, {name: 1.0}, ens_oof, ens_test, y, plan, metric, task)

    preds = {m: np.asarray(oof[m], dtype=np.float64) for m in names}
    tests = None if test is None else {m: np.asarray(test[m], dtype=np.float64) for m in names}
    ens_oof = np.full(preds[names[0]].shape, np.nan)

    if method == "mean":
        ens_oof[held] = np.mean([preds[m][held] for m in names], axis=0)
        ens_test = None if tests is None else np.mean([tests[m] for m in names], axis=0)
        weights = {m: 1.0 / len(names) for m in names}
    elif method == "rank_mean":
        # Ranks use no labels, so ranking over all held-out rows at once leaks nothing.
        ens_oof[held] = np.mean([_ranks(preds[m][held]) for m in names], axis=0)
        ens_test = None if tests is None else np.mean([_ranks(tests[m]) for m in names], axis=0)
        weights = {m: 1.0 / len(names) for m in names}
    elif method == "weights":
        for k in range(plan.n_folds):
            fit_rows, valid = _other_folds(plan, k), plan.valid_rows(k)
            w = greedy_weights([preds[m][fit_rows] for m in names], y[fit_rows], metric, task)
            ens_oof[valid] = _weighted([preds[m][valid] for m in names], w)
        w = greedy_weights([preds[m][held] for m in names], y[held], metric, task)
        ens_test = None if tests is None else _weighted([tests[m] for m in names], w)
        weights = dict(zip(names, map(float, w)))
    else:  # stack
        features = {m: _meta_features(preds[m], task) for m in names}
        X = np.column_stack([features[m] for m in names])
        n_classes = preds[names[0]].shape[1] if task == "multiclass" else 2
        for k in range(plan.n_folds):
            fit_rows, valid = _other_folds(plan, k), plan.valid_rows(k)
            model = _fit_meta(X[fit_rows], y[fit_rows], task, seed, meta, meta_params)
            ens_oof[valid] = _meta_predict(model, X[valid], task, n_classes)
        model = _fit_meta(X[held], y[held], task, seed, meta, meta_params)
        if tests is None:
            ens_test = None
        else:
            X_test = np.column_stack([_meta_features(tests[m], task) for m in names])
            ens_test = _meta_predict(model, X_test, task, n_classes)
        widths = [1 if features[m].ndim == 1 else features[m].shape[1] for m in names]
        weights = _meta_weights(model, names, widths)
    assert ens_oof.shape[0] == n
    return _result(method, weights, ens_oof, ens_test, y, plan, metric, task)


def greedy_weights(preds: list[np.ndarray], y: np.ndarray, metric: str, task: str,
                   max_steps: int = MAX_GREEDY_STEPS) -> np.ndarray:
    """Caruana et al. (2004) forward selection with replacement: weights = counts / total.

    Works for any metric, differentiable or not (AUC, accuracy). Starts from the best single
    model, adds whichever model most improves the score of the averaged predictions on
    these rows (pooled), and stops when no addition strictly improves it. Ties go to the
    earlier model, so the result is deterministic.
    """
    scores = [score(metric, task, y, p) for p in preds]
    best = int(np.argmax(scores))
    counts = np.zeros(len(preds), dtype=np.int64)
    counts[best] = 1
    total_pred, best_score = preds[best].copy(), scores[best]
    for step in range(1, max_steps):
        cand = [score(metric, task, y, (total_pred + p) / (step + 1)) for p in preds]
        j = int(np.argmax(cand))
        if not cand[j] > best_score:
            break
        counts[j] += 1
        total_pred += preds[j]
        best_score = cand[j]
    return counts / counts.sum()


def _check_inputs(method: str, oof: dict[str, np.ndarray], test: dict[str, np.ndarray] | None,
                  y: np.ndarray, plan: FoldPlan, task: str) -> list[str]:
    """Fail early and plainly on inputs that would otherwise give a silently wrong blend."""
    if method not in METHODS:
        raise ValueError(f"unknown ensemble method {method!r} (valid: {', '.join(METHODS)})")
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r} (valid: {', '.join(TASKS)})")
    if method == "rank_mean" and task != "binary":
        raise ValueError(f"rank_mean needs a binary task (ranks of P(class 1)); the task is {task}")
    if not oof:
        raise ValueError("no models to blend")
    names = list(oof)
    n = len(y)
    if len(plan.fold_of_row) != n:
        raise ValueError(f"fold plan has {len(plan.fold_of_row)} rows, y has {n}")
    held = plan.held_out
    shape = None
    for m in names:
        p = np.asarray(oof[m])
        want_ndim = 2 if task == "multiclass" else 1
        if p.ndim != want_ndim or p.shape[0] != n:
            raise ValueError(f"OOF of {m!r} has shape {p.shape}; expected {n} rows"
                             f"{' x K classes' if want_ndim == 2 else ''}")
        if shape is not None and p.shape != shape:
            raise ValueError(f"OOF of {m!r} has shape {p.shape}, others {shape}")
        shape = p.shape
        if not np.isfinite(p[held]).all():
            raise ValueError(f"OOF of {m!r} is missing (NaN/inf) on held-out rows")
    if test is not None:
        if set(test) != set(names):
            raise ValueError(f"test predictions are for {sorted(test)}, OOF for {sorted(names)}")
        test_shape = None
        for m in names:
            t = np.asarray(test[m])
            if t.shape[1:] != shape[1:] or (test_shape is not None and t.shape != test_shape):
                raise ValueError(f"test predictions of {m!r} have shape {t.shape}")
            test_shape = t.shape
    return names


def _other_folds(plan: FoldPlan, k: int) -> np.ndarray:
    """Held-out rows of every fold but k: where fold k's weights / meta-model are fitted."""
    rows = np.flatnonzero((plan.fold_of_row >= 0) & (plan.fold_of_row != k))
    if len(rows) == 0:
        raise ValueError("cross-fitting an ensemble needs at least two held-out folds")
    return rows


def _nan_outside(pred: np.ndarray, held: np.ndarray) -> np.ndarray:
    out = np.full(pred.shape, np.nan)
    out[held] = pred[held]
    return out


def _ranks(p: np.ndarray) -> np.ndarray:
    return rankdata(p) / len(p)


def _weighted(preds: list[np.ndarray], w: np.ndarray) -> np.ndarray:
    return sum(wi * p for wi, p in zip(w, preds) if wi > 0)


def _meta_features(p: np.ndarray, task: str) -> np.ndarray:
    """Logits (binary) / log-probabilities (multiclass): linear meta-models behave on these."""
    if task == "binary":
        q = np.clip(p, CLIP, 1 - CLIP)
        return np.log(q) - np.log1p(-q)
    if task == "multiclass":
        return np.log(np.clip(p, CLIP, 1.0))
    return p


def _fit_meta(X: np.ndarray, y: np.ndarray, task: str, seed: int, meta: str | None,
              meta_params: dict | None):  # noqa: ANN202 - any sklearn estimator
    params = dict(meta_params or {})
    if meta is None:
        if task == "regression":
            from sklearn.linear_model import Ridge as cls
            params = {"alpha": 1.0, **params}
        else:
            from sklearn.linear_model import LogisticRegression as cls
            params = {"C": 1.0, "max_iter": 1000, **params}
    else:
        from foldwise.tasks.models.sklearn_model import estimator_class

        cls = estimator_class(meta)
    if "random_state" in inspect.signature(cls).parameters and "random_state" not in params:
        params["random_state"] = seed
    model = cls(**params)
    if task != "regression" and not hasattr(model, "predict_proba"):
        raise ValueError(f"stacking meta-model {cls.__name__} has no predict_proba; a {task} task needs one")
    model.fit(X, y)
    return model


def _meta_predict(model, X: np.ndarray, task: str, n_classes: int) -> np.ndarray:  # noqa: ANN001
    if task == "regression":
        return np.asarray(model.predict(X), dtype=np.float64)
    proba = model.predict_proba(X)
    full = np.zeros((len(X), n_classes))  # a class absent from the fit rows gets probability 0
    full[:, np.asarray(model.classes_, dtype=int)] = proba
    return full[:, 1] if task == "binary" else full


def _meta_weights(model, names: list[str], widths: list[int]) -> dict[str, float]:  # noqa: ANN001
    """Normalised |coefficients| per base model (feature_importances_ for trees; NaN if neither)."""
    if hasattr(model, "coef_"):
        imp = np.abs(np.atleast_2d(model.coef_)).sum(axis=0)
    elif hasattr(model, "feature_importances_"):
        imp = np.abs(np.asarray(model.feature_importances_))
    else:
        return {m: float("nan") for m in names}
    bounds = np.cumsum([0, *widths])
    per_model = np.array([imp[a:b].sum() for a, b in zip(bounds[:-1], bounds[1:])])
    total = per_model.sum()
    per_model = per_model / total if total > 0 else np.full(len(names), 1.0 / len(names))
    return dict(zip(names, map(float, per_model)))


def _result(method: str, weights: dict[str, float], ens_oof: np.ndarray, ens_test: np.ndarray | None,
            y: np.ndarray, plan: FoldPlan, metric: str, task: str) -> EnsembleResult:
    fold_scores = [score(metric, task, y[plan.valid_rows(k)], ens_oof[plan.valid_rows(k)])
                   for k in range(plan.n_folds)]
    return EnsembleResult(method=method, weights=weights, oof=ens_oof, test=ens_test,
                          fold_scores=fold_scores, cv_score=float(np.mean(fold_scores)))
