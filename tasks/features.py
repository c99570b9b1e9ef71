"""Feature frames for one fold, with category vocabularies learned from the training rows only.

Models see a pandas DataFrame: numeric columns as float64, categorical columns as pandas
`category` dtype whose categories are the levels present in the fold's *training* rows.
A level seen only in the held-out rows (or the test set) becomes missing, exactly as a
real encoder fitted inside the fold would treat it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from foldwise.tasks.data import PreparedData


@dataclass(frozen=True)
class FoldVocabulary:
    """Per categorical column: the codes seen in the training rows (sorted)."""

    codes: dict[str, np.ndarray]


def fit_vocabulary(data: PreparedData, train_rows: np.ndarray) -> FoldVocabulary:
    codes = {}
    for col in data.categorical:
        j = data.columns.index(col)
        values = data.X[train_rows, j]
        codes[col] = np.unique(values[~np.isnan(values)]).astype(np.int64)
    return FoldVocabulary(codes)


def frame(data: PreparedData, X: np.ndarray, vocab: FoldVocabulary) -> pd.DataFrame:
    """Rows of X (already sliced) as a DataFrame; categoricals restricted to `vocab`."""
    out = pd.DataFrame(X, columns=list(data.columns), copy=False)
    for col, seen in vocab.codes.items():
        levels = data.categories[col]
        raw = out[col].to_numpy()
        position = np.full(len(raw), -1, dtype=np.int64)
        ok = ~np.isnan(raw)
        idx = np.searchsorted(seen, raw[ok].astype(np.int64))
        idx_clipped = np.minimum(idx, max(len(seen) - 1, 0))
        known = (idx < len(seen)) & (seen[idx_clipped] == raw[ok].astype(np.int64)) if len(seen) else np.zeros(ok.sum(), bool)
        position[np.flatnonzero(ok)[known]] = idx[known]
        out[col] = pd.Categorical.from_codes(position, categories=[levels[c] for c in seen])
    return out


def column_kinds(X: pd.DataFrame) -> tuple[list[str], list[str]]:
    """(numeric columns, categorical columns) of a fold frame."""
    cats = [c for c in X.columns if isinstance(X[c].dtype, pd.CategoricalDtype)]
    return [c for c in X.columns if c not in cats], cats


def preprocessor(steps: tuple[str, ...], numeric: list[str], categorical: list[str], has_nan: bool):  # noqa: ANN201
    """A ColumnTransformer: the spec's numeric steps, one-hot for categoricals.

    When the numeric columns hold NaN and no imputer is named, a median imputer is put
    first (most sklearn estimators refuse NaN); `has_nan` comes from the training rows.
    """
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import (
        FunctionTransformer,
        MinMaxScaler,
        OneHotEncoder,
        QuantileTransformer,
        RobustScaler,
        StandardScaler,
    )

    makers = {
        "standard_scaler": StandardScaler,
        "minmax_scaler": MinMaxScaler,
        "robust_scaler": RobustScaler,
        "quantile_normal": lambda: QuantileTransformer(output_distribution="normal", n_quantiles=200),
        "median_imputer": lambda: SimpleImputer(strategy="median"),
        "mean_imputer": lambda: SimpleImputer(strategy="mean"),
    }
    num_steps = list(steps)
    if has_nan and not any(s.endswith("_imputer") for s in num_steps):
        num_steps.insert(0, "median_imputer")
    parts = []
    if numeric:
        pipe = [(s, makers[s]()) for s in num_steps] or [("identity", FunctionTransformer())]
        parts.append(("num", Pipeline(pipe), numeric))
    if categorical:
        parts.append(("cat", Pipeline([
            ("to_text", FunctionTransformer(_categories_as_text, feature_names_out="one-to-one")),
            ("onehot", OneHotEncoder(handle_unknown="ignore")),
        ]), categorical))
    return ColumnTransformer(parts, remainder="drop", sparse_threshold=0.0)


def _categories_as_text(X: pd.DataFrame) -> np.ndarray:
    return X.astype(object).where(X.notna(), "__missing__").to_numpy()
