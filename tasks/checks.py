"""Data checks on frames: errors that make a run meaningless, warnings that make it lie.

Errors (a run must not start): no rows, a missing/NaN/inf/constant target, duplicate
ids, train and test (or a reference version) that disagree on column names or kinds, a
missing id or groups column. Warnings (a run can start, but its CV score may not mean
what the user thinks): constant and near-constant columns, duplicated columns,
high-cardinality categoricals, test levels never seen in train, missing-value rates
that differ between the two sides, a column that alone predicts the target almost
perfectly (a likely leak), and id-like columns whose order tracks the target.

Every finding names its column in one line, so the CLI can print it as is. Plain
pandas/numpy: no Ray, no MLflow; `foldwise.workflows.pipeline.inputs` reads the frames and calls these.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pandas as pd

from foldwise.tasks.data import DataConfig, feature_columns
from foldwise.tasks.drift import (
    LEAK_THRESHOLD,
    ROW_ORDER,
    id_like_columns,
    ids_tracking_target,
    single_column_scores,
)

NEAR_CONSTANT_SHARE = 0.99  # one value (missing counts as a value) in this share of rows
HIGH_CARDINALITY = 100  # a categorical with more levels than this
MISSING_GAP = 0.05  # absolute difference in missing share between train and the other side
MISSING_NEW = 0.01  # ... or never missing on one side, at least this share missing on the other


# The codes of the warnings below: a spec silences them by name (`checks: {ignore: [CODE, ...]}`).
WARNING_CODES: tuple[str, ...] = ("constant", "near_constant", "duplicated_column", "high_cardinality", "unseen_levels",
                                  "missing_rate", "shared_ids", "leak", "row_order_tracks_target", "id_tracks_target",
                                  # `foldwise check`'s own, from its adversarial model and drift statistics
                                  "adversarial", "drift", "target_drift")


@dataclass(frozen=True)
class Finding:
    """One problem with the data, as one line that names the column."""

    level: str  # error | warning
    code: str  # e.g. target_constant, leak, unseen_levels
    column: str | None
    message: str

    @property
    def line(self) -> str:
        """The message with its code, as printed: the code is what `checks: {ignore: [...]}` takes."""
        return f"{self.message} [{self.code}]"


@dataclass(frozen=True)
class Side:
    """The frame compared with train: the spec's test set, or an old version of train."""

    frame: pd.DataFrame
    key: str  # how the user names it: data.test or --reference
    source: str  # its path/URI
    role: str = "test"  # test | reference


def is_categorical(s: pd.Series, name: str, config: DataConfig) -> bool:
    """Categorical exactly when tasks.data.prepare_data would code it as one."""
    return name in config.categorical or not (
        pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s) or pd.api.types.is_datetime64_any_dtype(s)
    )


# --------------------------------------------------------------------------- errors


def frame_errors(train: pd.DataFrame, config: DataConfig, other: Side | None = None) -> tuple[Finding, ...]:
    """Every error in the frames, first the ones about train (the CLI prints the first)."""
    out: list[Finding] = []

    def err(code: str, column: str | None, message: str) -> None:
        out.append(Finding("error", code, column, message))

    if len(train) == 0:
        err("empty", None, f"data.train: {config.train!r} has no rows")
    for key, col in (("data.target", config.target), ("data.id", config.id), ("data.groups", config.groups)):
        if col is not None and col not in train.columns:
            err(f"{key.split('.')[1]}_missing", col, f"{key}: column {col!r} is not in {config.train!r}")
    if config.target in train.columns and len(train):
        out += _target_errors(train[config.target], config.target)
    if config.id in train.columns:
        out += _duplicate_ids(train[config.id], config.id, "data.id", "")
    if config.groups in train.columns and train[config.groups].isna().any():
        err("groups_missing_values", config.groups, f"data.groups: column {config.groups!r} has "
            f"{int(train[config.groups].isna().sum())} missing value(s)")
    features = [c for c in feature_columns(list(train.columns), config) if c != config.image]
    if len(train) and features and all(train[c].isna().all() for c in features):
        err("features_all_missing", None, f"data.train: every feature column of {config.train!r} is entirely missing "
            f"(NaN): {_names(features)}; nothing to learn from")
    if other is not None:
        out += _other_side_errors(train, config, other)
    return tuple(out)


def _names(columns: list[str], n: int = 6) -> str:
    return ", ".join(columns[:n]) + (f", ... ({len(columns)} in all)" if len(columns) > n else "")


def _target_errors(target: pd.Series, name: str) -> list[Finding]:
    n_nan = int(target.isna().sum())
    if n_nan:
        return [Finding("error", "target_missing_values", name,
                        f"data.target: column {name!r} has {n_nan} missing value(s); drop those rows or fill them")]
    if pd.api.types.is_numeric_dtype(target) and not pd.api.types.is_bool_dtype(target):
        n_inf = int(np.isinf(target.to_numpy(dtype=np.float64)).sum())
        if n_inf:
            return [Finding("error", "target_infinite", name, f"data.target: column {name!r} has {n_inf} infinite value(s)")]
    if target.nunique() < 2:
        value = target.iloc[0]
        value = value.item() if hasattr(value, "item") else value
        return [Finding("error", "target_constant", name,
                        f"data.target: column {name!r} is constant ({value!r}); nothing to learn")]
    return []


def _duplicate_ids(ids: pd.Series, name: str, key: str, where: str) -> list[Finding]:
    dup = ids.duplicated()
    if not dup.any():
        return []
    first = ids[dup].iloc[0]
    first = first.item() if hasattr(first, "item") else first
    return [Finding("error", "duplicate_ids", name, f"{key}: column {name!r}{where} has {int(dup.sum())} duplicate "
                    f"value(s), e.g. {first!r}; ids must be unique")]


def _other_side_errors(train: pd.DataFrame, config: DataConfig, other: Side) -> list[Finding]:
    frame, key = other.frame, other.key
    if len(frame) == 0:
        return [Finding("error", "empty", None, f"{key}: {other.source!r} has no rows")]
    features = feature_columns(list(train.columns), config)
    allowed = set(features) | {c for c in (config.id, config.target, config.groups, config.image) if c} | set(config.drop)
    missing = [c for c in features if c not in frame.columns]
    extra = [c for c in frame.columns if c not in allowed]
    if missing or extra:
        parts = ([f"missing {_names(missing)}"] if missing else []) + ([f"not in train {_names(extra)}"] if extra else [])
        column = (missing or extra)[0]
        return [Finding("error", "columns_differ", column, f"{key}: {other.role} columns differ from train: {'; '.join(parts)}")]
    out = []
    if other.role == "test" and config.id is not None:
        if config.id not in frame.columns:
            out.append(Finding("error", "id_missing", config.id, f"{key}: id column {config.id!r} is missing from "
                               f"{other.source!r} (needed for the submission)"))
        else:
            out += _duplicate_ids(frame[config.id], config.id, "data.id", f" of {key}")
    for col in features:
        a, b = train[col], frame[col]
        if a.isna().all() or b.isna().all():
            continue
        ka, kb = _kind(a), _kind(b)
        if ka != kb:
            out.append(Finding("error", "dtype_differs", col, f"{key}: column {col!r} is {ka} ({a.dtype}) in train "
                               f"but {kb} ({b.dtype}) in {other.role}"))
    return out


def _kind(s: pd.Series) -> str:
    if pd.api.types.is_datetime64_any_dtype(s):
        return "datetime"
    if pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s):
        return "numeric"
    return "text/categorical"


# --------------------------------------------------------------------------- warnings


def frame_warnings(train: pd.DataFrame, config: DataConfig, task: str, y: np.ndarray, other: Side | None = None,
                   seed: int = 0, leak_threshold: float = LEAK_THRESHOLD) -> tuple[Finding, ...]:
    """Every warning about train alone, then about train vs the other side. `y`: encoded target."""
    features = feature_columns(list(train.columns), config)
    cats = {c for c in features if is_categorical(train[c], c, config)}
    out = constant_columns(train, features) + duplicated_columns(train, features)
    out += high_cardinality(train, sorted(cats, key=features.index))
    if other is not None and len(other.frame):
        out += unseen_levels(train, other, [c for c in features if c in cats])
        out += missing_rate_gaps(train, other, features)
        if other.role == "test" and config.id is not None and config.id in other.frame.columns:
            out += shared_ids(train[config.id], other.frame[config.id], config.id)
    out += leaks(train[features], y, task, cats, seed, leak_threshold)
    ids = list(id_like_columns(train[features]))
    if config.id is not None and config.id in train.columns:
        ids = [config.id, *ids]
    excluded = {c for c in (config.id, config.groups) if c} | set(config.drop)
    out += tracking_ids(train, ids, y, task, seed, config.id, excluded)
    return tuple(out)


def constant_columns(frame: pd.DataFrame, columns: list[str]) -> list[Finding]:
    """Columns with one value (missing counts as a value) in all, or nearly all, rows."""
    out = []
    n = len(frame)
    for col in columns:
        top, top_count, distinct = _top_value(frame[col])
        if distinct == 0:
            continue
        top_text = "missing" if pd.isna(top) else repr(top.item() if hasattr(top, "item") else top)
        if distinct == 1:
            out.append(Finding("warning", "constant", col, f"column {col!r} is constant (every row is {top_text}): "
                               "it carries no information; drop it (features.drop)"))
        elif top_count >= NEAR_CONSTANT_SHARE * n:
            out.append(Finding("warning", "near_constant", col, f"column {col!r} is near-constant: "
                               f"{top_count / n:.1%} of rows are {top_text}"))
    return out


def _top_value(s: pd.Series) -> tuple[object, int, int]:
    """(most frequent value, its count, 1 or 2 meaning "one distinct value" or "more"), missing as a value.

    Numbers take an O(n) path with no hash table: a value in more than half the rows is
    the median element, so counting that one candidate (and the missing values) decides
    both questions exactly. Other dtypes, and columns with no majority value, count all.
    """
    n = len(s)
    if n == 0:
        return None, 0, 0
    if pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s) and not isinstance(s.dtype, pd.CategoricalDtype):
        x = s.to_numpy(dtype=np.float64, na_value=np.nan)
        missing = np.isnan(x)
        n_missing = int(missing.sum())
        if n_missing == n:
            return np.nan, n, 1
        if n_missing * 2 > n:
            return np.nan, n_missing, 2
        values = x[~missing]
        candidate = np.partition(values, len(values) // 2)[len(values) // 2]
        count = int((values == candidate).sum())
        if count * 2 > n:
            top = s[~missing].iloc[int(np.argmax(values == candidate))]
            return top, count, 1 if count == n else 2
        # no value holds a majority: far from near-constant, so the exact top is not needed
        return None, max(count, n_missing), 2
    counts = s.value_counts(dropna=False)
    return counts.index[0], int(counts.iloc[0]), min(len(counts), 2)


def duplicated_columns(frame: pd.DataFrame, columns: list[str]) -> list[Finding]:
    """Pairs of columns with identical values in every row (found by hashing, then confirmed)."""
    seen: dict[str, str] = {}
    out = []
    for col in columns:
        digest = hashlib.sha256(pd.util.hash_pandas_object(frame[col], index=False).to_numpy().tobytes()).hexdigest()
        first = seen.get(digest)
        if first is not None and frame[first].equals(frame[col]):
            out.append(Finding("warning", "duplicated_column", col,
                               f"column {col!r} duplicates column {first!r} (identical in every row); drop one"))
        else:
            seen.setdefault(digest, col)
    return out


def high_cardinality(frame: pd.DataFrame, categorical: list[str], limit: int = HIGH_CARDINALITY) -> list[Finding]:
    out = []
    for col in categorical:
        k = frame[col].nunique(dropna=True)
        if k > limit:
            singletons = int((frame[col].value_counts() == 1).sum())
            out.append(Finding("warning", "high_cardinality", col,
                               f"categorical column {col!r} has {k} levels in {len(frame)} rows ({singletons} seen once): "
                               "rare levels overfit; consider frequency/target encoding inside the fold, or drop it"))
    return out


def unseen_levels(train: pd.DataFrame, other: Side, categorical: list[str]) -> list[Finding]:
    """Levels of the other side that train never has: the model meets them as missing."""
    out = []
    for col in categorical:
        known = set(train[col].dropna().astype(str))
        values = other.frame[col].dropna().astype(str)
        new = values[~values.isin(known)]
        if len(new):
            levels = sorted(set(new))
            shown = ", ".join(repr(v) for v in levels[:5]) + (", ..." if len(levels) > 5 else "")
            out.append(Finding("warning", "unseen_levels", col,
                               f"column {col!r}: {len(levels)} level(s) in {other.role} never seen in train ({shown}), "
                               f"{len(new) / len(other.frame):.1%} of {other.role} rows; the model treats them as missing"))
    return out


def missing_rate_gaps(train: pd.DataFrame, other: Side, columns: list[str]) -> list[Finding]:
    out = []
    for col in columns:
        a, b = float(train[col].isna().mean()), float(other.frame[col].isna().mean())
        if abs(a - b) >= MISSING_GAP or (min(a, b) == 0 and max(a, b) >= MISSING_NEW):
            train_label = "new train" if other.role == "reference" else "train"
            out.append(Finding("warning", "missing_rate", col, f"column {col!r} is missing in {a:.1%} of {train_label} rows "
                               f"but {b:.1%} of {other.role} rows"))
    return out


def shared_ids(train_ids: pd.Series, test_ids: pd.Series, name: str) -> list[Finding]:
    both = pd.Index(train_ids.dropna().unique()).intersection(pd.Index(test_ids.dropna().unique()))
    if not len(both):
        return []
    first = both[0].item() if hasattr(both[0], "item") else both[0]
    return [Finding("warning", "shared_ids", name, f"data.id: {len(both)} id(s) of column {name!r} are in both train "
                    f"and test (e.g. {first!r}): the same entity on both sides inflates the CV score")]


def leaks(features: pd.DataFrame, y: np.ndarray, task: str, categorical: set[str], seed: int,
          threshold: float = LEAK_THRESHOLD) -> list[Finding]:
    """Columns that alone score >= threshold by cross-validation: most likely built from the target."""
    return [Finding("warning", "leak", s.column, f"column {s.column!r} alone predicts the target almost perfectly "
                    f"(3-fold {s.metric} {s.score:.4f}): a likely target leak; drop it (features.drop) unless it is "
                    "truly known at prediction time")
            for s in single_column_scores(features, y, task, categorical, seed=seed) if s.score >= threshold]


def tracking_ids(train: pd.DataFrame, ids: list[str], y: np.ndarray, task: str, seed: int,
                 id_column: str | None, excluded: set[str] | frozenset[str] = frozenset()) -> list[Finding]:
    """Id-like columns (and the row order) whose order predicts the target. A column already kept
    out of the features (`excluded`: data.id, data.groups, features.drop) gets what it means instead
    of advice to exclude it."""
    out = []
    for s in ids_tracking_target(train, y, task, list(dict.fromkeys(ids)), seed=seed):
        if s.column == ROW_ORDER:
            out.append(Finding("warning", "row_order_tracks_target", None,
                               f"the row order tracks the target (alone it scores {s.metric} {s.score:.3f}): the file is "
                               "sorted by, or collected with, the outcome; unshuffled and time splits will see shifted folds"))
        else:
            kind = "the id column" if s.column == id_column else "id-like column"
            if s.column in excluded:
                meaning = ("it is not a feature, so nothing leaks: most likely the file is sorted by the target (or "
                           "ids were assigned with the outcome); the row order matters only for the time scheme")
            else:
                meaning = "ids assigned with the outcome leak it; keep it out of the features"
            out.append(Finding("warning", "id_tracks_target", s.column,
                               f"{kind} {s.column!r} tracks the target (its order alone scores {s.metric} {s.score:.3f}): "
                               f"{meaning}"))
    return out


def _names(items: list[str], n: int = 8) -> str:
    shown = ", ".join(map(str, items[:n]))
    return shown + (f", ... ({len(items)} in all)" if len(items) > n else "")
