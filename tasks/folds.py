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
    RepeatedKFold,
    RepeatedStratifiedKFold,
    StratifiedGroupKFold,
    StratifiedKFold,
    TimeSeriesSplit,
)

NEVER_HELD_OUT = -1  # rows the time scheme only ever trains on (the first block)


@dataclass(frozen=True)
class FoldPlan:
    """Which rows each split holds out. With `cv.repeats` > 1 the plan holds every repeat's folds:
    split `s` (0 .. n_splits-1) is fold `s % n_folds` of repeat `s // n_folds`, and the fold DAG
    runs one node per split. `fold_of_row` is repeat 0's assignment (what one repeat alone is)."""

    fold_of_row: np.ndarray  # (n,) int32, repeat 0; NEVER_HELD_OUT for train-only rows (time scheme)
    n_folds: int
    scheme: str
    seed: int
    hash: str  # of every repeat's assignment: one hash for the whole plan
    repeats: int = 1
    later_repeats: tuple[np.ndarray, ...] = ()  # repeats 1..R-1, each like fold_of_row

    @property
    def n_splits(self) -> int:
        """Folds x repeats: the number of train_fold nodes per model."""
        return self.n_folds * self.repeats

    def folds_of(self, repeat: int) -> np.ndarray:
        """One repeat's fold of each row."""
        return self.fold_of_row if repeat == 0 else self.later_repeats[repeat - 1]

    def valid_rows(self, fold: int) -> np.ndarray:
        """Rows split `fold` holds out (for one repeat, split = fold)."""
        repeat, k = divmod(fold, self.n_folds)
        return np.flatnonzero(self.folds_of(repeat) == k)

    def train_rows(self, fold: int) -> np.ndarray:
        """Other folds of the split's repeat; for the time scheme only rows *before* the held-out block."""
        repeat, k = divmod(fold, self.n_folds)
        folds = self.folds_of(repeat)
        if self.scheme == "time":
            return np.flatnonzero(folds < k)
        return np.flatnonzero(folds != k)

    def repeat(self, r: int) -> FoldPlan:
        """Repeat r alone, as a one-repeat plan (its splits are folds 0..n_folds-1)."""
        if self.repeats == 1:
            return self
        folds = self.folds_of(r)
        return FoldPlan(fold_of_row=folds, n_folds=self.n_folds, scheme=self.scheme, seed=self.seed,
                        hash=_digest([folds]))

    @property
    def held_out(self) -> np.ndarray:
        """Rows that receive an OOF prediction (all rows, except the time scheme's first block)."""
        return np.flatnonzero(self.fold_of_row != NEVER_HELD_OUT)


def _digest(assignments: list[np.ndarray]) -> str:
    h = hashlib.sha256()
    for a in assignments:
        h.update(np.ascontiguousarray(a, dtype=np.int32).tobytes())
    return h.hexdigest()[:16]


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


def repeated_splitter(scheme: str, n_folds: int, repeats: int, seed: int) -> list[BaseCrossValidator] | BaseCrossValidator:
    """kfold / stratified: sklearn's RepeatedKFold / RepeatedStratifiedKFold(random_state=seed), one
    splitter whose splits run repeat by repeat. group / stratified_group have no repeated splitter
    in sklearn: repeat r is the scheme's splitter with random_state = seed + r (a list of them)."""
    if scheme == "kfold":
        return RepeatedKFold(n_splits=n_folds, n_repeats=repeats, random_state=seed)
    if scheme == "stratified":
        return RepeatedStratifiedKFold(n_splits=n_folds, n_repeats=repeats, random_state=seed)
    if scheme == "time":
        raise ValueError("the time scheme's folds are the same in every repeat; repeats need a shuffled scheme")
    return [splitter(scheme, n_folds, seed + r) for r in range(repeats)]


def assign_folds(y: np.ndarray, groups: np.ndarray | None, scheme: str, n_folds: int, seed: int,
                 repeats: int = 1) -> FoldPlan:
    n = len(y)
    X_dummy = np.zeros((n, 1))
    groups = groups if scheme in ("group", "stratified_group") else None
    folds = np.full((repeats, n), NEVER_HELD_OUT, dtype=np.int32)
    if repeats == 1:
        parts = [splitter(scheme, n_folds, seed)]
    else:
        cv = repeated_splitter(scheme, n_folds, repeats, seed)
        parts = cv if isinstance(cv, list) else [cv]
    splits = (split for part in parts for split in part.split(X_dummy, y, groups))
    for i, (_, valid) in enumerate(splits):
        r, k = divmod(i, n_folds)
        folds[r, valid] = k
    return FoldPlan(fold_of_row=folds[0], n_folds=n_folds, scheme=scheme, seed=seed, hash=_digest(list(folds)),
                    repeats=repeats, later_repeats=tuple(folds[1:]))


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

