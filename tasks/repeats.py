"""Repeated CV: one ensemble per repeat, averaged; OOF per repeat; scores per repeat.

Each repeat is a complete cross-validation of its own (every row held out once), so anything
fitted on OOF labels (weights, a stacking meta-model) is cross-fitted within a repeat, on that
repeat's folds, and the repeats' ensembles are then averaged: fold scores of every repeat x fold,
weights and predictions averaged over repeats.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from foldwise.tasks.ensemble import EnsembleResult, blend
from foldwise.tasks.folds import FoldPlan


def oof_by_repeat(results: Sequence[Any], plan: FoldPlan, n_rows: int) -> list[np.ndarray]:
    """One OOF array per repeat from a model's split results (`valid_rows`, `oof`, `fold` = split);
    rows a repeat never holds out (time scheme) stay NaN."""
    first = results[0].oof
    out = [np.full((n_rows, *first.shape[1:]), np.nan) for _ in range(plan.repeats)]
    for r in results:
        out[r.fold // plan.n_folds][r.valid_rows] = r.oof
    return out


def mean_over_repeats(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """The element-wise mean of per-repeat predictions (a row held out in every repeat gets the
    mean of its R honest predictions; NaN where no repeat holds it out)."""
    if len(arrays) == 1:
        return arrays[0]
    stacked = np.stack(arrays)
    held = ~np.isnan(stacked)
    with np.errstate(invalid="ignore"):
        return np.where(held.any(axis=0), np.nansum(stacked, axis=0) / np.maximum(held.sum(axis=0), 1), np.nan)


def repeat_scores(split_scores: Sequence[float], n_folds: int) -> list[float]:
    """The mean fold score of each repeat (splits come repeat by repeat)."""
    scores = np.asarray(split_scores, dtype=np.float64).reshape(-1, n_folds)
    return [float(s) for s in scores.mean(axis=1)]


def repeat_std(split_scores: Sequence[float], n_folds: int) -> float:
    """Standard deviation of the repeat means (ddof=1; 0 for one repeat): how much the score moves
    when only the fold assignment changes."""
    means = repeat_scores(split_scores, n_folds)
    return float(np.std(means, ddof=1)) if len(means) > 1 else 0.0


def blend_repeats(method: str, oof: dict[str, list[np.ndarray]], test: dict[str, np.ndarray] | None, y: np.ndarray,
                  plan: FoldPlan, metric: str, task: str, seed: int, meta: str | None = None,
                  meta_params: dict | None = None, layers: int = 1, passthrough: bool = False,
                  X: np.ndarray | None = None, X_test: np.ndarray | None = None) -> EnsembleResult:
    """`blend` on each repeat's OOF with that repeat's folds, then averaged over repeats.

    `oof`: model -> one OOF array per repeat. The result's fold_scores run repeat by repeat
    (repeats x folds), its oof / test / weights are the repeats' means, and `repeat_oof` keeps
    each repeat's ensemble OOF."""
    per = [blend(method, {m: oofs[r] for m, oofs in oof.items()}, test, y, plan.repeat(r), metric, task, seed,
                 meta, meta_params, layers, passthrough, X, X_test)
           for r in range(plan.repeats)]
    if len(per) == 1:
        return per[0]
    weights = {m: float(np.mean([p.weights[m] for p in per])) for m in per[0].weights}
    ens_test = None if per[0].test is None else np.mean([p.test for p in per], axis=0)
    fold_scores = [s for p in per for s in p.fold_scores]
    return replace(per[0], weights=weights, oof=mean_over_repeats([p.oof for p in per]), test=ens_test,
                   fold_scores=fold_scores, cv_score=float(np.mean(fold_scores)),
                   repeat_oof=tuple(p.oof for p in per))


def corrected_t_test(deltas: Sequence[float], n_folds: int, level: float = 0.95) -> tuple[float, float, tuple[float, float]]:
    """The corrected repeated k-fold t-test on paired split deltas (B - A), repeats x folds of them.

    Bouckaert & Frank (2004) with Nadeau & Bengio's (2003) variance correction: the training sets of
    k-fold splits overlap, so split scores are correlated and the plain variance of their mean,
    s^2 / n, is far too small. It is replaced by (1/n + n_test/n_train) s^2 with n_test/n_train =
    1/(k - 1), and t has n - 1 degrees of freedom (n = repeats x folds). Returns (t, two-sided p,
    the `level` interval of the mean delta); NaN when undefined (fewer than two splits, one fold),
    and t = +-inf, p = 0 when every delta is the same non-zero value."""
    from scipy import stats

    d = np.asarray(deltas, dtype=np.float64)
    n = len(d)
    if n < 2 or n_folds < 2:
        return float("nan"), float("nan"), (float("nan"), float("nan"))
    mean, var = float(d.mean()), float(d.var(ddof=1))
    if var == 0:
        if mean == 0:
            return float("nan"), float("nan"), (0.0, 0.0)
        return float(np.sign(mean) * np.inf), 0.0, (mean, mean)
    se = float(np.sqrt((1.0 / n + 1.0 / (n_folds - 1)) * var))
    t = mean / se
    half = float(stats.t.ppf(1 - (1 - level) / 2, n - 1) * se)
    return float(t), float(2 * stats.t.sf(abs(t), n - 1)), (mean - half, mean + half)
