"""Per-slice metrics: how a model scores on named row subsets of the training data.

A change that is better on average can be worse where it matters, so foldwise scores OOF
predictions on slices: the spec's own `slices` (pandas query strings over the training
columns, plus `fold`) and automatic ones (quantile bins of the top features, category
levels). Slices are query strings throughout, so an automatic slice can be pasted into a
spec as is. Plain functions, no Ray, no MLflow.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from foldwise.tasks.metrics import rank_auc, score

ALL_ROWS = "all rows (pooled OOF)"


class SliceError(ValueError):
    """A slice query that pandas cannot evaluate on the frame (names the slice and why)."""


def slice_mask(frame: pd.DataFrame, name: str, query: str) -> np.ndarray:
    """Boolean row mask of `query` on `frame` (positional, same length as the frame)."""
    if query == "":
        return np.ones(len(frame), dtype=bool)
    try:
        mask = frame.eval(query, engine="python")
    except Exception as e:  # noqa: BLE001 - pandas raises many kinds; all mean "bad query"
        raise SliceError(f"slice {name!r}: cannot evaluate {query!r}: {type(e).__name__}: {str(e).splitlines()[0]}") from None
    values = np.asarray(mask)
    if values.dtype != bool or values.shape != (len(frame),):
        raise SliceError(f"slice {name!r}: {query!r} is not a row condition (it gives {values.dtype} values)")
    return values


def safe_score(metric: str, task: str, y: np.ndarray, pred: np.ndarray) -> float:
    """The score, or NaN where the metric is undefined on these rows (one class for AUC, < 2 rows)."""
    if len(y) < 2:
        return float("nan")
    with warnings.catch_warnings():  # sklearn warns, then returns NaN, for one-class AUC
        warnings.simplefilter("ignore")
        try:
            return score(metric, task, y, pred)
        except (ValueError, ZeroDivisionError, IndexError):
            return float("nan")


def slice_scores(frame: pd.DataFrame, slices: Mapping[str, str], y: np.ndarray, preds: Mapping[str, np.ndarray],
                 metric: str, task: str) -> dict[str, dict[str, float]]:
    """{slice: {"rows": n, model: score, ...}} on the rows each query selects.

    `frame`, `y` and every prediction array are row-aligned (frame position i is row i).
    Rows with a NaN prediction (never held out, time scheme) are left out of that model's
    score. A score the metric cannot define on the slice (e.g. AUC with one class) is NaN.
    Raises SliceError for a query pandas cannot evaluate.
    """
    frame = frame.reset_index(drop=True)
    out: dict[str, dict[str, float]] = {}
    for name, query in slices.items():
        mask = slice_mask(frame, name, query)
        row: dict[str, float] = {"rows": float(mask.sum())}
        for model, pred in preds.items():
            pred = np.asarray(pred)
            keep = mask & held_out(pred)
            row[model] = safe_score(metric, task, y[keep], pred[keep])
        out[name] = row
    return out


def held_out(pred: np.ndarray) -> np.ndarray:
    """Rows that have a prediction (NaN marks rows never held out)."""
    pred = np.asarray(pred, dtype=float)
    return ~np.isnan(pred).any(axis=1) if pred.ndim == 2 else ~np.isnan(pred)


def feature_frame(X: np.ndarray, columns: Sequence[str], categories: Mapping[str, Sequence[str]]) -> pd.DataFrame:
    """The prepared feature matrix as a frame slice queries can read: category codes back to labels.

    For `run_cv`, which holds `PreparedData` rather than the raw table. Categorical levels
    come back as their string labels (as `prepare_data` stored them).
    """
    cols: dict[str, np.ndarray | pd.Categorical] = {}
    for j, col in enumerate(columns):
        if col in categories:
            levels = np.asarray(list(categories[col]), dtype=object)
            codes = X[:, j]
            labels = np.full(len(codes), None, dtype=object)
            ok = ~np.isnan(codes)
            labels[ok] = levels[codes[ok].astype(int)]
            cols[col] = labels
        else:
            cols[col] = X[:, j]
    return pd.DataFrame(cols)


# --------------------------------------------------------------------------- automatic slices


@dataclass(frozen=True)
class AutoSliceConfig:
    top_features: int = 3  # numeric features binned
    bins: int = 4  # quantile bins per feature
    max_categorical: int = 2  # categorical columns whose levels become slices
    max_levels: int = 6  # most frequent levels per categorical column
    min_rows: int = 20  # smaller slices are too noisy to read


def is_categorical(s: pd.Series) -> bool:
    return not (pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s)
                or pd.api.types.is_datetime64_any_dtype(s))


def quote(col: str) -> str:
    return "`" + col.replace("`", "") + "`"


def auto_slices(frame: pd.DataFrame, ranked_features: Sequence[str],
                config: AutoSliceConfig = AutoSliceConfig()) -> dict[str, str]:
    """Quantile bins of the first `top_features` numeric columns of `ranked_features`, and the
    most frequent levels of the first categorical ones, as {name: query}."""
    out: dict[str, str] = {}
    numeric = [c for c in ranked_features if c in frame.columns and not is_categorical(frame[c])
               and frame[c].nunique(dropna=True) > config.bins]
    for col in numeric[:config.top_features]:
        values = frame[col].to_numpy(dtype=float)
        edges = np.unique(np.nanquantile(values, np.linspace(0, 1, config.bins + 1)[1:-1]))
        q = quote(col)
        for i in range(len(edges) + 1):
            lo = edges[i - 1] if i > 0 else None
            hi = edges[i] if i < len(edges) else None
            parts = ([f"{q} > {float(lo)!r}"] if lo is not None else []) + ([f"{q} <= {float(hi)!r}"] if hi is not None else [])
            label = (f"{col} <= {hi:.4g}" if lo is None else f"{col} > {lo:.4g}" if hi is None
                     else f"{col} in ({lo:.4g}, {hi:.4g}]")
            out[label] = " and ".join(parts)
        if np.isnan(values).sum() >= config.min_rows:
            out[f"{col} missing"] = f"{q}.isna()"
    categorical = [c for c in ranked_features if c in frame.columns and is_categorical(frame[c])]
    for col in categorical[:config.max_categorical]:
        counts = frame[col].value_counts(dropna=True)
        for level in counts.index[:config.max_levels]:
            if counts[level] >= config.min_rows:
                out[f"{col} = {level}"] = f"{quote(col)} == {str(level)!r}"
    return out


def rank_features(frame: pd.DataFrame, signal: np.ndarray, columns: Sequence[str]) -> list[str]:
    """Columns ordered by |Spearman correlation| of the column with `signal` (categoricals by
    the spread of the signal's mean across levels): where that signal varies most."""
    signal = np.asarray(signal, dtype=float)
    ranks = pd.Series(signal).rank().to_numpy()
    strength: dict[str, float] = {}
    for col in columns:
        s = frame[col]
        if is_categorical(s):
            means = pd.Series(signal).groupby(s.astype(str).to_numpy()).mean()
            strength[col] = float(means.std() / (signal.std() + 1e-12)) if len(means) > 1 else 0.0
        else:
            x = s.to_numpy(dtype=float)
            ok = ~np.isnan(x)
            if ok.sum() < 3 or np.nanstd(x) == 0:
                strength[col] = 0.0
                continue
            r = np.corrcoef(pd.Series(x[ok]).rank().to_numpy(), ranks[ok])[0, 1]
            strength[col] = 0.0 if np.isnan(r) else abs(float(r))
    return sorted(strength, key=lambda c: -strength[c])


# --------------------------------------------------------------------------- paired delta on a slice


def _r2(y: np.ndarray, p: np.ndarray) -> float:
    ss = float(((y - y.mean()) ** 2).sum())
    return float(1 - ((y - p) ** 2).sum() / ss) if ss > 0 else float("nan")


# metric -> (tasks, function of (y, pred)): exact closed forms, ~50x faster than the sklearn scorer
# call per bootstrap resample; anything else falls back to tasks.metrics.score
_FAST = {
    "roc_auc": (("binary",), rank_auc),
    "accuracy": (("binary", "multiclass"), lambda y, p: float(
        (((p > 0.5).astype(int) if p.ndim == 1 else p.argmax(axis=1)) == y).mean())),
    "neg_root_mean_squared_error": (("regression",), lambda y, p: -float(np.sqrt(((y - p) ** 2).mean()))),
    "neg_mean_squared_error": (("regression",), lambda y, p: -float(((y - p) ** 2).mean())),
    "neg_mean_absolute_error": (("regression",), lambda y, p: -float(np.abs(y - p).mean())),
    "r2": (("regression",), _r2),
}


def fast_score(metric: str, task: str, y: np.ndarray, pred: np.ndarray) -> float:
    """Same value as `safe_score`, computed in closed form for the common metrics (bootstrap speed)."""
    fast = _FAST.get(metric)
    if fast is not None and task in fast[0] and len(y) >= 2:
        return fast[1](y, pred)
    return safe_score(metric, task, y, pred)



@dataclass(frozen=True)
class SliceDelta:
    """B minus A on one slice, with a paired bootstrap interval over the slice's rows."""

    name: str
    query: str
    rows: int
    score_a: float
    score_b: float
    delta: float
    lo: float
    hi: float
    verdict: str  # better | worse | within noise | n/a (B relative to A)
    source: str  # spec | auto | overall


def bootstrap_delta(y: np.ndarray, a: np.ndarray, b: np.ndarray, metric: str, task: str,
                    n_boot: int, seed: int, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of score(B) - score(A) when the slice's rows are resampled (paired:
    the same resample scores both), i.e. how much of the delta is row-sampling noise."""
    rng = np.random.default_rng(seed)
    n = len(y)
    deltas = []
    for _ in range(n_boot):
        idx = rng.integers(0, n, n)
        d = fast_score(metric, task, y[idx], b[idx]) - fast_score(metric, task, y[idx], a[idx])
        if not np.isnan(d):
            deltas.append(d)
    if len(deltas) < max(10, n_boot // 2):
        return float("nan"), float("nan")
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(deltas, [tail, 100 - tail])
    return float(lo), float(hi)


def slice_deltas(frame: pd.DataFrame, slices: Mapping[str, tuple[str, str]], y: np.ndarray, a: np.ndarray,
                 b: np.ndarray, metric: str, task: str, n_boot: int = 200, seed: int = 0,
                 min_rows: int = 20) -> list[SliceDelta]:
    """Score A and B on each slice ({name: (query, source)}) and mark B better/worse beyond noise
    (the bootstrap interval excludes 0). Slices under `min_rows` rows get no verdict."""
    frame = frame.reset_index(drop=True)
    ok_rows = held_out(a) & held_out(b)
    out = []
    for i, (name, (query, source)) in enumerate(slices.items()):
        mask = slice_mask(frame, name, query) & ok_rows
        ys, sa, sb = y[mask], a[mask], b[mask]
        score_a, score_b = safe_score(metric, task, ys, sa), safe_score(metric, task, ys, sb)
        delta = score_b - score_a
        lo = hi = float("nan")
        if n_boot > 0 and mask.sum() >= min_rows and not np.isnan(delta):
            lo, hi = bootstrap_delta(ys, sa, sb, metric, task, n_boot, seed + i)
        if np.isnan(lo):
            verdict = "n/a"
        elif lo > 0:
            verdict = "better"
        elif hi < 0:
            verdict = "worse"
        else:
            verdict = "within noise"
        out.append(SliceDelta(name=name, query=query, rows=int(mask.sum()), score_a=score_a, score_b=score_b,
                              delta=delta, lo=lo, hi=hi, verdict=verdict, source=source))
    return out
