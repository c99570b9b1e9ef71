"""Blending stored OOF predictions of several models into one, with an honest CV score.

Only OOF predictions are used, on the same FoldPlan the base models were scored on, so
the ensemble's fold scores are paired with theirs. Anything fitted on labels (greedy
weights, a stacking meta-model) is cross-fitted: fold k's ensemble predictions come from
weights or a meta-model chosen on the *other* held-out folds only, because choosing them
on fold k itself would leak fold k's labels into its own score. The final weights /
meta-model (reported, and applied to the test set) are then fitted on all held-out rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata

from foldwise.tasks.folds import FoldPlan
from foldwise.tasks.metrics import score
from foldwise.tasks.stacking import fit_rows_for, stack_layers

METHODS: tuple[str, ...] = ("mean", "rank_mean", "weights", "stack")
TASKS: tuple[str, ...] = ("binary", "multiclass", "regression")
MAX_GREEDY_STEPS = 100


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
    fold_scores: list[float]  # per fold k: metric on plan.valid_rows(k) (repeated CV: repeat by repeat)
    cv_score: float  # mean of fold_scores
    repeat_oof: tuple[np.ndarray, ...] = ()  # repeated CV: each repeat's ensemble OOF (oof is their mean)


def blend(method: str, oof: dict[str, np.ndarray], test: dict[str, np.ndarray] | None, y: np.ndarray,
          plan: FoldPlan, metric: str, task: str, seed: int,
          meta: str | None = None, meta_params: dict | None = None, layers: int = 1, passthrough: bool = False,
          X: np.ndarray | None = None, X_test: np.ndarray | None = None) -> EnsembleResult:
    """Blend the models' OOF (and test) predictions by `method`; see the module docstring.

    `layers`/`passthrough` (stack only): layer k learns from layer k-1's OOF, plus the original
    features `X` (test: `X_test`) with passthrough; see tasks.stacking."""
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
            fit_rows, valid = fit_rows_for(plan, k), plan.valid_rows(k)
            # time scheme: the first held-out fold has no earlier fold to learn weights from -> equal weights
            w = (greedy_weights([preds[m][fit_rows] for m in names], y[fit_rows], metric, task) if len(fit_rows)
                 else np.full(len(names), 1.0 / len(names)))
            ens_oof[valid] = _weighted([preds[m][valid] for m in names], w)
        w = greedy_weights([preds[m][held] for m in names], y[held], metric, task)
        ens_test = None if tests is None else _weighted([tests[m] for m in names], w)
        weights = dict(zip(names, map(float, w)))
    else:  # stack, in `layers` layers (tasks.stacking)
        ens_oof, ens_test, weights = stack_layers(preds, tests, y, plan, task, seed, meta, meta_params,
                                                  layers=layers, passthrough=passthrough, X=X, X_test=X_test)
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


def _nan_outside(pred: np.ndarray, held: np.ndarray) -> np.ndarray:
    out = np.full(pred.shape, np.nan)
    out[held] = pred[held]
    return out


def _ranks(p: np.ndarray) -> np.ndarray:
    return rankdata(p) / len(p)


def _weighted(preds: list[np.ndarray], w: np.ndarray) -> np.ndarray:
    return sum(wi * p for wi, p in zip(w, preds) if wi > 0)


def _result(method: str, weights: dict[str, float], ens_oof: np.ndarray, ens_test: np.ndarray | None,
            y: np.ndarray, plan: FoldPlan, metric: str, task: str) -> EnsembleResult:
    fold_scores = [score(metric, task, y[plan.valid_rows(k)], ens_oof[plan.valid_rows(k)])
                   for k in range(plan.n_folds)]
    return EnsembleResult(method=method, weights=weights, oof=ens_oof, test=ens_test,
                          fold_scores=fold_scores, cv_score=float(np.mean(fold_scores)))
