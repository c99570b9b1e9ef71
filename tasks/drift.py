"""Drift between two versions of the data, and columns that know too much about the target.

Two views of "does test (or a new data version) look like train?":

* per feature: the population stability index (PSI; train is the expected distribution)
  plus a test of equal distributions (two-sample Kolmogorov-Smirnov for numerics,
  chi-square on the level counts for categoricals). PSI says *how much*, the p-value
  says *whether it could be chance*; with many rows tiny, harmless shifts are
  "significant", so read them together.
* jointly: adversarial validation. A LightGBM classifier learns to tell test rows from
  train rows; its cross-validated AUC is ~0.5 when the two are exchangeable and near 1
  when they are easy to tell apart, and its importances name the features that differ.
  One fold is one task (`adversarial_fold`) so the folds run in parallel.

And a cheap screen for leaks: every column alone, as a binned one-column model scored by
cross-validation (`single_column_scores`). A column that alone predicts the target
almost perfectly is far more often a leak than a gift; an id-like column whose order
predicts the target says the rows were sorted by (or collected with) the outcome.

Everything here is plain numpy/pandas (no Ray, no MLflow) and deterministic given a seed.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats
from sklearn.metrics import r2_score, roc_auc_score
from sklearn.model_selection import KFold, StratifiedKFold

from foldwise.tasks.data import PreparedData

PSI_BINS = 10
PSI_EPS = 1e-4  # floor on a bin's share, so an empty bin gives a large but finite PSI
PSI_MODERATE, PSI_MAJOR = 0.1, 0.25  # the usual credit-risk reading of PSI

LEAK_THRESHOLD = 0.99  # one column alone scoring this well (AUC / R^2) is a likely leak
ID_TRACKING_AUC, ID_TRACKING_R2 = 0.6, 0.1  # an id-like column this predictive "tracks" the target
ID_MIN_ROWS = 200  # below this the one-column score of an id is too noisy to call
ROW_ORDER = "(row order)"  # pseudo-column: the row number, the most common hidden id

ADVERSARIAL_PARAMS: dict[str, Any] = {
    "n_estimators": 200, "learning_rate": 0.05, "num_leaves": 31, "min_child_samples": 20,
    "subsample": 0.8, "subsample_freq": 1, "colsample_bytree": 0.8, "verbose": -1,
}


# --------------------------------------------------------------------------- per-feature drift


@dataclass(frozen=True)
class Histogram:
    """What the drift plot draws: shares per bin (numeric) or per level (categorical)."""

    kind: str  # numeric | categorical
    edges: tuple[float, ...]  # numeric: bin edges (len = shares + 1); categorical: ()
    levels: tuple[str, ...]  # categorical: level labels; numeric: ()
    train: tuple[float, ...]  # shares of the non-missing rows
    test: tuple[float, ...]


@dataclass(frozen=True)
class FeatureDrift:
    feature: str
    kind: str  # numeric | categorical
    psi: float
    ks_pvalue: float | None  # numerics only
    chi2_pvalue: float | None  # categoricals only
    missing_train: float  # share of missing values
    missing_test: float
    hist: Histogram

    @property
    def pvalue(self) -> float | None:
        return self.ks_pvalue if self.kind == "numeric" else self.chi2_pvalue

    @property
    def level(self) -> str:
        """none | moderate | major, by PSI."""
        return "major" if self.psi >= PSI_MAJOR else "moderate" if self.psi >= PSI_MODERATE else "none"


def psi(expected_counts: np.ndarray, actual_counts: np.ndarray, eps: float = PSI_EPS) -> float:
    """Population stability index sum((a - e) * ln(a / e)) over shares of the same bins.

    Symmetric KL divergence in disguise: 0 for identical shares, < 0.1 stable,
    0.1-0.25 moderate shift, > 0.25 major shift.
    """
    e = np.asarray(expected_counts, dtype=float)
    a = np.asarray(actual_counts, dtype=float)
    if e.sum() == 0 or a.sum() == 0:
        return 0.0
    e = np.clip(e / e.sum(), eps, None)
    a = np.clip(a / a.sum(), eps, None)
    return float(np.sum((a - e) * np.log(a / e)))


def ks_pvalue(train: np.ndarray, test: np.ndarray) -> float | None:
    """Two-sample Kolmogorov-Smirnov p-value on the non-missing values (None if a side is empty)."""
    a, b = train[~np.isnan(train)], test[~np.isnan(test)]
    if len(a) == 0 or len(b) == 0:
        return None
    return float(stats.ks_2samp(a, b).pvalue)


def chi2_pvalue(train_counts: np.ndarray, test_counts: np.ndarray) -> float:
    """Chi-square test that two count vectors over the same levels come from one distribution."""
    table = np.vstack([train_counts, test_counts]).astype(float)
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2 or (table.sum(axis=1) == 0).any():
        return 1.0
    return float(stats.chi2_contingency(table, correction=False).pvalue)


def numeric_drift(name: str, train: np.ndarray, test: np.ndarray, bins: int = PSI_BINS) -> FeatureDrift:
    """PSI over train's quantile bins (+ a missing bin) and the KS p-value of a numeric column."""
    t_ok, s_ok = ~np.isnan(train), ~np.isnan(test)
    if t_ok.any():
        edges = np.unique(np.quantile(train[t_ok], np.linspace(0, 1, bins + 1)[1:-1]))
    else:
        edges = np.empty(0)
    n_bins = len(edges) + 2  # the last bin holds the missing values

    def counts(x: np.ndarray, ok: np.ndarray) -> np.ndarray:
        b = np.where(ok, np.searchsorted(edges, np.where(ok, x, 0.0), side="right"), n_bins - 1)
        return np.bincount(b, minlength=n_bins)

    return FeatureDrift(
        feature=name, kind="numeric", psi=psi(counts(train, t_ok), counts(test, s_ok)), ks_pvalue=ks_pvalue(train, test),
        chi2_pvalue=None, missing_train=_share(~t_ok), missing_test=_share(~s_ok), hist=_numeric_hist(train[t_ok], test[s_ok]),
    )


def categorical_drift(name: str, train_codes: np.ndarray, test_codes: np.ndarray, levels: tuple[str, ...]) -> FeatureDrift:
    """PSI and the chi-square p-value over the levels (+ missing) of a categorical column."""
    n = len(levels) + 1  # the last cell counts missing values

    def counts(codes: np.ndarray) -> np.ndarray:
        return np.bincount(np.where(np.isnan(codes), n - 1, np.nan_to_num(codes)).astype(np.int64), minlength=n)

    a, b = counts(train_codes), counts(test_codes)
    return FeatureDrift(
        feature=name, kind="categorical", psi=psi(a, b), ks_pvalue=None, chi2_pvalue=chi2_pvalue(a, b),
        missing_train=_share(np.isnan(train_codes)), missing_test=_share(np.isnan(test_codes)),
        hist=_categorical_hist(a[:-1], b[:-1], levels),
    )


def feature_drift(data: PreparedData) -> tuple[FeatureDrift, ...]:
    """Every feature's drift between data.X (expected) and data.X_test, most drifted first."""
    if data.X_test is None:
        raise ValueError("feature_drift needs a second data set (test or reference)")
    out = []
    for j, col in enumerate(data.columns):
        if col in data.categories:
            out.append(categorical_drift(col, data.X[:, j], data.X_test[:, j], data.categories[col]))
        else:
            out.append(numeric_drift(col, data.X[:, j], data.X_test[:, j]))
    return tuple(sorted(out, key=lambda d: (-d.psi, d.pvalue if d.pvalue is not None else 1.0, d.feature)))


def series_drift(name: str, train: pd.Series, other: pd.Series, categorical: bool) -> FeatureDrift:
    """Drift of one raw column, e.g. the target between an old and a new version of the data."""
    if categorical:
        codes, levels = pd.factorize(pd.concat([train, other], ignore_index=True).astype("string"), sort=True)
        codes = np.where(codes < 0, np.nan, codes).astype(np.float64)
        return categorical_drift(name, codes[:len(train)], codes[len(train):], tuple(str(v) for v in levels))
    return numeric_drift(name, column_values(train), column_values(other))


def _share(mask: np.ndarray) -> float:
    return float(mask.mean()) if len(mask) else 0.0


def _numeric_hist(train: np.ndarray, test: np.ndarray, bins: int = 30) -> Histogram:
    both = np.concatenate([train, test])
    if len(both) == 0:
        return Histogram("numeric", (0.0, 1.0), (), (0.0,), (0.0,))
    lo, hi = np.quantile(both, [0.005, 0.995])
    if hi <= lo:
        lo, hi = float(both.min()) - 0.5, float(both.max()) + 0.5
    edges = np.linspace(lo, hi, bins + 1)

    def shares(x: np.ndarray) -> tuple[float, ...]:
        if len(x) == 0:
            return (0.0,) * bins
        c = np.histogram(np.clip(x, lo, hi), edges)[0]
        return tuple((c / len(x)).tolist())

    return Histogram("numeric", tuple(edges.tolist()), (), shares(train), shares(test))


def _categorical_hist(train: np.ndarray, test: np.ndarray, levels: tuple[str, ...], top: int = 12) -> Histogram:
    ta, sa = train / max(train.sum(), 1), test / max(test.sum(), 1)
    order = np.argsort(-(ta + sa), kind="stable")[:top]
    return Histogram("categorical", (), tuple(levels[i] for i in order), tuple(ta[order].tolist()), tuple(sa[order].tolist()))


# --------------------------------------------------------------------------- adversarial validation


@dataclass(frozen=True)
class AdversarialData:
    """Train rows (label 0) stacked over test rows (label 1), with a stratified fold per row."""

    X: np.ndarray
    is_test: np.ndarray  # (n,) int8
    fold_of_row: np.ndarray  # (n,) int32
    columns: tuple[str, ...]
    categorical: tuple[int, ...]  # column indices LightGBM treats as categorical
    n_train: int  # rows used from each side (after sampling)
    n_test: int
    sampled: bool


def adversarial_dataset(data: PreparedData, n_folds: int, seed: int, max_rows: int = 200_000) -> AdversarialData:
    """Stack train over test and plan folds stratified on the side; sample down to max_rows.

    Sampling keeps each side's share, so the AUC is that of the full data's mix; folds
    ignore the spec's groups/time order on purpose: the question is "can a row's side be
    told from its features", not how the model will be validated.
    """
    if data.X_test is None:
        raise ValueError("adversarial validation needs a second data set (test or reference)")
    rng = np.random.default_rng(seed)
    a, b = data.X, data.X_test
    total = len(a) + len(b)
    sampled = total > max_rows
    if sampled:
        a = a[np.sort(rng.choice(len(a), max(int(max_rows * len(a) / total), n_folds), replace=False))]
        b = b[np.sort(rng.choice(len(b), max(int(max_rows * len(b) / total), n_folds), replace=False))]
    X = np.vstack([a, b])
    is_test = np.concatenate([np.zeros(len(a), np.int8), np.ones(len(b), np.int8)])
    fold_of_row = np.empty(len(X), np.int32)
    for k, (_, valid) in enumerate(StratifiedKFold(n_folds, shuffle=True, random_state=seed).split(X, is_test)):
        fold_of_row[valid] = k
    cats = tuple(j for j, c in enumerate(data.columns) if c in data.categories)
    return AdversarialData(X=X, is_test=is_test, fold_of_row=fold_of_row, columns=data.columns, categorical=cats,
                           n_train=len(a), n_test=len(b), sampled=sampled)


@dataclass(frozen=True)
class AdversarialFold:
    fold: int
    auc: float
    columns: tuple[str, ...]
    importance: np.ndarray  # total gain per column (fold's model), in `columns` order
    valid_rows: np.ndarray
    labels: np.ndarray  # is_test of valid_rows
    p_test: np.ndarray  # P(row is from test) for valid_rows
    seconds: float


def adversarial_fold(adv: AdversarialData, fold: int, seed: int, params: Mapping[str, Any] | None = None,
                     n_threads: int = 1) -> AdversarialFold:
    """Fit train-vs-test on the other folds, score AUC on this one (one Ray task per fold)."""
    import lightgbm as lgb

    start = time.perf_counter()
    tr, va = np.flatnonzero(adv.fold_of_row != fold), np.flatnonzero(adv.fold_of_row == fold)
    model = lgb.LGBMClassifier(**({**ADVERSARIAL_PARAMS, **(params or {})}), random_state=seed + fold, n_jobs=n_threads)
    model.fit(adv.X[tr], adv.is_test[tr], categorical_feature=list(adv.categorical) or "auto")
    p = model.predict_proba(adv.X[va])[:, 1]
    return AdversarialFold(fold=fold, auc=float(roc_auc_score(adv.is_test[va], p)), columns=adv.columns,
                           importance=model.booster_.feature_importance(importance_type="gain").astype(float),
                           valid_rows=va, labels=adv.is_test[va], p_test=p, seconds=time.perf_counter() - start)


@dataclass(frozen=True)
class AdversarialResult:
    auc: float  # mean of the fold AUCs
    ci: tuple[float, float]  # mean +- t(0.975, k-1) * sd / sqrt(k)
    fold_aucs: tuple[float, ...]
    oof_auc: float  # AUC of the pooled out-of-fold predictions
    importance: dict[str, float]  # share of total gain, largest first
    method: str

    @property
    def verdict(self) -> str:
        """none | mild | strong: how easily a row's side can be told."""
        if self.auc < 0.55 or self.ci[0] <= 0.5:
            return "none"
        return "strong" if self.auc >= 0.7 else "mild"


def summarise_adversarial(folds: list[AdversarialFold], confidence: float = 0.95) -> AdversarialResult:
    """Mean fold AUC with a t-interval over folds, pooled OOF AUC, importance as gain shares.

    The t-interval treats the k fold AUCs as independent; they share training rows, so it
    is somewhat narrow (no unbiased variance estimator of k-fold CV exists). Read it as
    "how stable across folds", and the pooled OOF AUC as a check on the mean.
    """
    folds = sorted(folds, key=lambda f: f.fold)
    columns = folds[0].columns
    aucs = np.array([f.auc for f in folds])
    k = len(aucs)
    mean = float(aucs.mean())
    half = float(stats.t.ppf(0.5 + confidence / 2, k - 1) * aucs.std(ddof=1) / np.sqrt(k)) if k > 1 else 0.0
    gain = np.sum([f.importance for f in folds], axis=0)
    share = gain / gain.sum() if gain.sum() > 0 else gain
    order = np.argsort(-share, kind="stable")
    labels = np.concatenate([f.labels for f in folds])
    pooled = float(roc_auc_score(labels, np.concatenate([f.p_test for f in folds])))
    return AdversarialResult(
        auc=mean, ci=(max(0.0, mean - half), min(1.0, mean + half)), fold_aucs=tuple(aucs.tolist()), oof_auc=pooled,
        importance={columns[j]: float(share[j]) for j in order},
        method=f"mean of {k} stratified fold AUCs +- t-quantile({0.5 + confidence / 2:.3g}, {k - 1} df) x sd / sqrt({k})",
    )


# --------------------------------------------------------------------------- leaks and id-like columns


@dataclass(frozen=True)
class ColumnScore:
    """How well one column alone predicts the target, cross-validated."""

    column: str
    score: float  # roc_auc (binary), macro one-vs-rest roc_auc (multiclass), r2 (regression)
    metric: str


def column_metric(task: str) -> str:
    return {"binary": "roc_auc", "multiclass": "roc_auc_ovr", "regression": "r2"}[task]


def single_column_scores(frame: pd.DataFrame, y: np.ndarray, task: str, categorical: Collection[str] = (),
                         n_folds: int = 3, seed: int = 0, max_rows: int = 20_000, bins: int = 50) -> tuple[ColumnScore, ...]:
    """Each column alone as a binned one-column model (per-bin target mean), k-fold scored.

    Binning at train-fold quantiles (categoricals: one bin per level, missing its own
    bin) captures any monotone or non-monotone relation, costs a bincount per fold, and
    is scored on held-out rows, so a column cannot look predictive by memorising rows.
    Sorted by score, best first. Rows are sampled down to max_rows (the question is
    "near perfect or not", which a sample answers).
    """
    y = np.asarray(y)
    idx = np.arange(len(y))
    if len(y) > max_rows:
        idx = np.sort(np.random.default_rng(seed).choice(len(y), max_rows, replace=False))
    y = y[idx]
    splits = _splits(y, task, n_folds, seed)
    if not splits:
        return ()
    out = []
    for col in frame.columns:
        x = column_values(frame[col].iloc[idx], is_categorical=col in categorical)
        score = _binned_cv_score(x, col in categorical or not _is_numeric(frame[col]), y, task, splits, bins)
        if not np.isnan(score):
            out.append(ColumnScore(str(col), score, column_metric(task)))
    return tuple(sorted(out, key=lambda s: -s.score))


def column_values(s: pd.Series, is_categorical: bool = False) -> np.ndarray:
    """A column as float64: numbers (inf -> NaN), or sorted-level codes for text/categoricals."""
    if is_categorical or not _is_numeric(s):
        codes, _ = pd.factorize(s.astype("string") if not _is_numeric(s) else s, sort=True)
        return np.where(codes < 0, np.nan, codes).astype(np.float64)
    if pd.api.types.is_datetime64_any_dtype(s):
        return (s.astype("int64") / 1e9).to_numpy(dtype=np.float64)
    x = s.to_numpy(dtype=np.float64, na_value=np.nan)
    return np.where(np.isinf(x), np.nan, x)


def id_like_columns(frame: pd.DataFrame, min_unique_share: float = 0.95) -> tuple[str, ...]:
    """Columns that look like row identifiers: (nearly) all values distinct integers or strings.

    Continuous floats are distinct too but are measurements, so only integer-valued
    numbers and text qualify.
    """
    n = len(frame)
    out = []
    if n < 20:
        return ()
    for col in frame.columns:
        s = frame[col]
        if _is_numeric(s):  # the integer test first: it is cheap and rules out measurements before any hashing
            if pd.api.types.is_bool_dtype(s):
                continue
            x = s.to_numpy(dtype=np.float64, na_value=np.nan)
            head = x[:1000]  # a fraction in the first rows settles a measurement column without a full pass
            if np.any(np.mod(head[np.isfinite(head)], 1) != 0):
                continue
            x = x[np.isfinite(x)]
            if not (len(x) and np.all(np.mod(x, 1) == 0)):
                continue
        if s.nunique(dropna=True) >= min_unique_share * n:
            out.append(str(col))
    return tuple(out)


def ids_tracking_target(frame: pd.DataFrame, y: np.ndarray, task: str, columns: Collection[str], seed: int = 0,
                        include_row_order: bool = True) -> tuple[ColumnScore, ...]:
    """The id-like columns (and the row order) whose *order* predicts the target.

    An id that carries signal means rows were numbered or sorted with the outcome (or in
    time with a drifting outcome): a leak for any split that shares that order with test.
    """
    if len(y) < ID_MIN_ROWS:
        return ()
    ranks = pd.DataFrame({c: frame[c].rank(method="average").to_numpy() if _is_numeric(frame[c])
                          else column_values(frame[c]) for c in columns})
    if include_row_order:
        ranks[ROW_ORDER] = np.arange(len(y), dtype=np.float64)
    bar = ID_TRACKING_R2 if task == "regression" else ID_TRACKING_AUC
    scores = single_column_scores(ranks, y, task, n_folds=3, seed=seed, bins=20)
    return tuple(s for s in scores if s.score >= bar)


def _splits(y: np.ndarray, task: str, n_folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    if task == "regression":
        return list(KFold(min(n_folds, len(y)), shuffle=True, random_state=seed).split(y)) if len(y) >= 2 else []
    counts = np.bincount(y.astype(np.int64))
    smallest = counts[counts > 0].min() if (counts > 0).sum() >= 2 else 0
    k = min(n_folds, int(smallest))
    return list(StratifiedKFold(k, shuffle=True, random_state=seed).split(y, y)) if k >= 2 else []


def _binned_cv_score(x: np.ndarray, categorical: bool, y: np.ndarray, task: str,
                     splits: list[tuple[np.ndarray, np.ndarray]], bins: int) -> float:
    scores = []
    n_classes = int(y.max()) + 1 if task != "regression" else 0
    for tr, va in splits:
        b_tr, b_va, n_bins = _bin(x, tr, va, categorical, bins)
        if task == "regression":
            prior = y[tr].mean()
            sums = np.bincount(b_tr, weights=y[tr], minlength=n_bins)
            cnt = np.bincount(b_tr, minlength=n_bins)
            pred = ((sums + prior) / (cnt + 1))[b_va]
            scores.append(r2_score(y[va], pred) if np.var(y[va]) > 0 else np.nan)
            continue
        counts = _bin_class_counts(b_tr, y[tr], n_bins, n_classes)
        prior = counts.sum(axis=0) / len(tr)
        bin_proba = (counts + prior) / (counts.sum(axis=1, keepdims=True) + 1)
        # every held-out row of a bin gets that bin's prediction, so the AUC follows from per-bin
        # class counts (NaN when a class is absent from this held-out fold)
        held = _bin_class_counts(b_va, y[va], n_bins, n_classes)
        held_rows = held.sum(axis=1)
        classes = [1] if task == "binary" else range(n_classes)
        scores.append(float(np.mean([_bins_auc(held[:, k], held_rows - held[:, k], bin_proba[:, k]) for k in classes])))
    return float(np.nanmean(scores)) if not np.all(np.isnan(scores)) else float("nan")


def _bin_class_counts(bins: np.ndarray, y: np.ndarray, n_bins: int, n_classes: int) -> np.ndarray:
    """(n_bins, n_classes) row counts."""
    flat = np.bincount(bins * n_classes + y.astype(np.int64), minlength=n_bins * n_classes)
    return flat.reshape(n_bins, n_classes).astype(np.float64)


def _bins_auc(pos: np.ndarray, neg: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC when every row of a bin has its bin's score: the Mann-Whitney statistic from
    per-bin positive/negative counts (bins with equal scores tie, counted one half), equal to
    rank_auc on the rows, in O(bins) instead of a sort of the rows."""
    n_pos, n_neg = pos.sum(), neg.sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    levels, group = np.unique(score, return_inverse=True)
    g_pos = np.bincount(group, weights=pos, minlength=len(levels))
    g_neg = np.bincount(group, weights=neg, minlength=len(levels))
    neg_below = np.cumsum(g_neg) - g_neg
    return float((g_pos * (neg_below + 0.5 * g_neg)).sum() / (n_pos * n_neg))


def _bin(x: np.ndarray, tr: np.ndarray, va: np.ndarray, categorical: bool, bins: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Bin ids for train/valid rows; the last bin holds missing values."""
    if categorical:
        top = int(np.nanmax(x)) + 1 if np.isfinite(x).any() else 0
        b = np.where(np.isnan(x), top, np.nan_to_num(x)).astype(np.int64)
        return b[tr], b[va], top + 1
    ok = ~np.isnan(x[tr])
    edges = np.unique(np.quantile(x[tr][ok], np.linspace(0, 1, bins + 1)[1:-1])) if ok.any() else np.empty(0)
    n_bins = len(edges) + 2
    b = np.where(np.isnan(x), n_bins - 1, np.searchsorted(edges, np.nan_to_num(x), side="right"))
    return b[tr], b[va], n_bins


def _is_numeric(s: pd.Series) -> bool:
    return bool(pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s) or pd.api.types.is_datetime64_any_dtype(s))
