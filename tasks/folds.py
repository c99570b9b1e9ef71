"""Fold assignment: one int per row, from the sklearn splitter the spec names.

The plan is computed once per dataset and reused by run, sweep, ablate and compare, so
every comparison between models or variants is paired on identical folds.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import (
    BaseCrossValidator,
    GroupKFold,
    KFold,
    StratifiedGroupKFold,
    StratifiedKFold,
    TimeSeriesSplit,
)

NEVER_HELD_OUT = -1  # rows the time scheme only ever trains on (the first block)


@dataclass(frozen=True)
class FoldPlan:
    fold_of_row: np.ndarray  # (n,) int32; NEVER_HELD_OUT for train-only rows (time scheme)
    n_folds: int
    scheme: str
    seed: int
    hash: str

    def valid_rows(self, fold: int) -> np.ndarray:
        return np.flatnonzero(self.fold_of_row == fold)

    def train_rows(self, fold: int) -> np.ndarray:
        """Other folds; for the time scheme only rows *before* the held-out block."""
        if self.scheme == "time":
            return np.flatnonzero(self.fold_of_row < fold)
        return np.flatnonzero(self.fold_of_row != fold)

    @property
    def held_out(self) -> np.ndarray:
        """Rows that receive an OOF prediction (all rows, except the time scheme's first block)."""
        return np.flatnonzero(self.fold_of_row != NEVER_HELD_OUT)


def splitter(scheme: str, n_folds: int, seed: int) -> BaseCrossValidator:
    """The sklearn splitter a scheme means; foldwise's folds are exactly its splits."""
    if scheme == "kfold":
        return KFold(n_splits=n_folds, shuffle=True, random_state=seed)
    if scheme == "stratified":
        return StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    if scheme == "group":
        return GroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    if scheme == "stratified_group":
        return StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    if scheme == "time":
        return TimeSeriesSplit(n_splits=n_folds)
    raise ValueError(f"unknown cv scheme {scheme!r}")


def assign_folds(y: np.ndarray, groups: np.ndarray | None, scheme: str, n_folds: int, seed: int) -> FoldPlan:
    fold_of_row = np.full(len(y), NEVER_HELD_OUT, dtype=np.int32)
    X_dummy = np.zeros((len(y), 1))
    groups = groups if scheme in ("group", "stratified_group") else None
    for k, (_, valid) in enumerate(splitter(scheme, n_folds, seed).split(X_dummy, y, groups)):
        fold_of_row[valid] = k
    digest = hashlib.sha256(fold_of_row.tobytes()).hexdigest()[:16]
    return FoldPlan(fold_of_row=fold_of_row, n_folds=n_folds, scheme=scheme, seed=seed, hash=digest)


def fold_problem(y: np.ndarray, groups: np.ndarray | None, scheme: str, n_folds: int, task: str,
                 labels: tuple = ()) -> str | None:
    """Why these folds cannot be made from this data, or None. Checked before any compute."""
    n = len(y)
    if n_folds > n:
        return f"cv.folds={n_folds} is more than the {n} rows of the training data"
    if scheme == "time" and n_folds >= n:
        return f"cv.folds={n_folds} needs more than {n_folds} rows for the time scheme"
    if scheme in ("stratified", "stratified_group"):
        if task == "regression":
            return f"cv.scheme {scheme!r} needs a classification target; use kfold (or group) for regression"
        values, counts = np.unique(y, return_counts=True)
        small = values[counts < n_folds]
        if len(small) and scheme == "stratified":
            label = labels[int(small[0])] if labels else small[0].item()
            return (f"class {label!r} of the target has {counts.min()} member(s), fewer than "
                    f"cv.folds={n_folds}; lower cv.folds or use kfold")
    if scheme in ("group", "stratified_group"):
        n_groups = len(np.unique(groups)) if groups is not None else 0
        if n_groups < n_folds:
            return f"data.groups has {n_groups} distinct group(s), fewer than cv.folds={n_folds}"
    return None

