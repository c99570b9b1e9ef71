"""The paired row bootstrap of `tasks.ablation`, at numpy speed.

A resample is a row of draw counts over a held-out fold's rows (rows drawn with replacement,
within each class for classification), so two predictions are scored on exactly the same rows.
The common metrics are scored in closed form on a whole block of resamples at once (AUC by
one cumulative sum in integers, means as one matrix-vector product); the rest call the scorer
per resample. Plain functions, no Ray, no MLflow.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from foldwise.tasks.folds import FoldPlan
from foldwise.tasks.metrics import score

if TYPE_CHECKING:
    from foldwise.tasks.data import PreparedData
    from foldwise.tasks.train import FoldResult

_CHUNK_CELLS = 4_000_000  # bootstrap resamples are scored in blocks of at most this many cells


def strata_of(y: np.ndarray, task: str) -> list[np.ndarray]:
    """The row sets resampled separately: each class (classification keeps its class mix), else all rows."""
    return [np.flatnonzero(y == c) for c in np.unique(y)] if task != "regression" else [np.arange(len(y))]


def fold_bootstrap(metric: str, task: str, y: np.ndarray, baseline: np.ndarray, variants: Mapping[str, np.ndarray],
                   n_boot: int, seed: int | tuple[int, ...]) -> dict[str, np.ndarray]:
    """One held-out fold: per variant, (n_boot,) score(variant) - score(baseline) on the same
    resamples, which are drawn and scored for the baseline once for all variants."""
    rng = np.random.default_rng(seed)
    strata = strata_of(y, task)
    out = {name: np.empty(n_boot) for name in variants}
    step = max(1, _CHUNK_CELLS // max(len(y), 1))
    for start in range(0, n_boot, step):
        counts = resample_counts(rng, strata, len(y), min(step, n_boot - start))
        base = weighted_scores(metric, task, y, baseline, counts)
        for name, pred in variants.items():
            out[name][start:start + len(counts)] = weighted_scores(metric, task, y, pred, counts) - base
    return out


def fold_bootstrap_of_fits(data: PreparedData, plan: FoldPlan, split: int, metric: str, n_boot: int, seed: int,
                           names: tuple[str, ...], baseline: FoldResult, *variants: FoldResult) -> dict[str, np.ndarray]:
    """`fold_bootstrap` of one split (repeat x fold) read from its fold results, the baseline's and one per
    name in `names`: as a task it takes their handles (top-level arguments), so it runs as soon as that
    split's fits are done rather than after every fit. Same resamples, seeded (seed, split)."""
    rows = plan.valid_rows(split)
    for r in (baseline, *variants):
        if r.fold != split or not np.array_equal(r.valid_rows, rows):
            raise ValueError(f"fold_bootstrap_of_fits: {r.model} fold {r.fold} is not split {split} of this plan")
    return fold_bootstrap(metric, data.task, data.y[rows], baseline.oof,
                          {n: r.oof for n, r in zip(names, variants, strict=True)}, n_boot, (seed, split))


def bootstrap_deltas(metric: str, task: str, y: np.ndarray, plan: FoldPlan, baseline: np.ndarray | Sequence[np.ndarray],
                     variant: np.ndarray | Sequence[np.ndarray], n_boot: int, seed: int) -> np.ndarray:
    """(n_boot,) mean over splits (repeats x folds) of score(variant) - score(baseline) on the same
    within-fold resample. With repeats, baseline and variant are one OOF array per repeat.

    A resample is a row of counts over the fold's rows (how often each row was drawn),
    so both predictions are scored on exactly the same rows.
    """
    base = [baseline] if isinstance(baseline, np.ndarray) else list(baseline)
    var = [variant] if isinstance(variant, np.ndarray) else list(variant)
    rng = np.random.default_rng(seed)
    total = np.zeros(n_boot)
    for s in range(plan.n_splits):
        rows, r = plan.valid_rows(s), s // plan.n_folds
        yk = y[rows]
        strata = [np.flatnonzero(yk == c) for c in np.unique(yk)] if task != "regression" else [np.arange(len(rows))]
        step = max(1, _CHUNK_CELLS // max(len(rows), 1))
        for start in range(0, n_boot, step):
            counts = resample_counts(rng, strata, len(rows), min(step, n_boot - start))
            total[start:start + len(counts)] += (weighted_scores(metric, task, yk, var[r][rows], counts)
                                                 - weighted_scores(metric, task, yk, base[r][rows], counts))
    return total / plan.n_splits


def resample_counts(rng: np.random.Generator, strata: Sequence[np.ndarray], n: int, b: int) -> np.ndarray:
    """(b, n) draw counts: each stratum's rows drawn with replacement, as many times as it has rows."""
    counts = np.zeros(b * n, dtype=np.int64)
    offsets = (np.arange(b) * n)[:, None]
    for s in strata:
        drawn = s[rng.integers(0, len(s), size=(b, len(s)))]
        counts += np.bincount((drawn + offsets).ravel(), minlength=b * n)
    return counts.reshape(b, n)


def weighted_scores(metric: str, task: str, y: np.ndarray, pred: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Per row of `counts` (b, n): the score of the resample that repeats row i counts[., i] times.

    The same values as `tasks.metrics.score` on `np.repeat`ed rows, in closed form for the
    common metrics (bootstrap speed; equality is tested); other metrics call the scorer
    once per resample. NaN where the metric is undefined on a resample.
    """
    if metric == "roc_auc" and task == "binary":
        return _weighted_auc(y, pred, counts)
    w = counts.astype(np.float64)
    n_drawn = w.sum(axis=1)
    per_row = _per_row_loss(metric, task, y, pred)
    if per_row is not None:
        return w @ per_row / n_drawn
    if task == "regression" and metric == "neg_root_mean_squared_error":
        return -np.sqrt(w @ ((y - pred) ** 2) / n_drawn)
    if task == "regression" and metric == "r2":
        yc, pc = y - y.mean(), pred - y.mean()  # r2 is shift-invariant; centring keeps the sums exact
        mean = w @ yc / n_drawn
        ss_tot = w @ (yc ** 2) - n_drawn * mean ** 2
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(ss_tot > 0, 1 - w @ ((yc - pc) ** 2) / ss_tot, np.nan)
    out = np.full(len(counts), np.nan)
    for i, c in enumerate(counts):
        idx = np.repeat(np.arange(len(y)), c)
        try:
            out[i] = score(metric, task, y[idx], pred[idx])
        except (ValueError, ZeroDivisionError, IndexError):
            pass  # undefined on this resample: NaN, dropped by the caller
    return out


def _per_row_loss(metric: str, task: str, y: np.ndarray, pred: np.ndarray) -> np.ndarray | None:
    """Metrics that are a mean over rows: each row's term, in the scorer's sign (None: not such a metric)."""
    if metric == "accuracy" and task in ("binary", "multiclass"):
        labels = (pred > 0.5).astype(int) if task == "binary" else pred.argmax(axis=1)
        return (labels == y).astype(np.float64)
    if metric == "neg_log_loss" and task in ("binary", "multiclass"):
        p_true = np.where(y == 1, pred, 1 - pred) if task == "binary" else pred[np.arange(len(y)), y]
        eps = np.finfo(np.float64).eps  # sklearn clips each class probability to [eps, 1 - eps]
        return np.log(np.clip(p_true, eps, 1 - eps))
    if task == "regression" and metric == "neg_mean_squared_error":
        return -((y - pred) ** 2)
    if task == "regression" and metric == "neg_mean_absolute_error":
        return -np.abs(y - pred)
    return None


def _weighted_auc(y: np.ndarray, p: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Mann-Whitney AUC with integer row multiplicities `counts` (b, n); tied scores count one half
    (as sklearn). In integers, so exact: with the negatives sorted by score and Z[:, k] the weight
    of the first k, a positive row that scores above s negatives and ties e - s of them wins
    2 x (Z[s] + (Z[e] - Z[s]) / 2) = Z[s] + Z[e] halves; one cumulative sum and two gathers (one
    without ties) per block of resamples."""
    pos = y == 1
    neg_rows, pos_rows = np.flatnonzero(~pos), np.flatnonzero(pos)
    neg_order = neg_rows[np.argsort(p[neg_rows], kind="stable")]
    neg_p = p[neg_order]
    below = np.searchsorted(neg_p, p[pos_rows], side="left")  # negatives scoring strictly lower
    upto = np.searchsorted(neg_p, p[pos_rows], side="right")  # ... lower or tied
    z = np.zeros((len(counts), len(neg_order) + 1), dtype=np.int64)
    np.cumsum(counts[:, neg_order], axis=1, out=z[:, 1:])
    w_pos = counts[:, pos_rows]
    halves = 2 * z[:, below] if np.array_equal(below, upto) else z[:, below] + z[:, upto]
    wins2 = np.einsum("ij,ij->i", w_pos, halves)
    n1, n0 = w_pos.sum(axis=1), z[:, -1]
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = wins2 / (2.0 * n1 * n0)
    return np.where((n1 > 0) & (n0 > 0), auc, np.nan)
