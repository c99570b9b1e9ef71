"""Fold assignment is exactly the named sklearn splitter's, for the same seed."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.model_selection import GroupKFold, KFold, StratifiedGroupKFold, StratifiedKFold, TimeSeriesSplit

from foldwise.tasks.folds import NEVER_HELD_OUT, assign_folds, fold_problem

RNG = np.random.default_rng(3)
Y = RNG.integers(0, 3, size=301)
GROUPS = RNG.integers(0, 40, size=301)

SPLITTERS = {
    "kfold": lambda n, s: KFold(n, shuffle=True, random_state=s),
    "stratified": lambda n, s: StratifiedKFold(n, shuffle=True, random_state=s),
    "group": lambda n, s: GroupKFold(n, shuffle=True, random_state=s),
    "stratified_group": lambda n, s: StratifiedGroupKFold(n, shuffle=True, random_state=s),
    "time": lambda n, s: TimeSeriesSplit(n),
}


@pytest.mark.parametrize("scheme", sorted(SPLITTERS))
@pytest.mark.parametrize("seed", [0, 42])
def test_identical_to_sklearn(scheme: str, seed: int) -> None:
    plan = assign_folds(Y, GROUPS, scheme, 5, seed)
    groups = GROUPS if "group" in scheme else None
    splits = list(SPLITTERS[scheme](5, seed).split(np.zeros((len(Y), 1)), Y, groups))
    assert plan.n_folds == len(splits) == 5
    for k, (train, valid) in enumerate(splits):
        np.testing.assert_array_equal(plan.valid_rows(k), np.sort(valid))
        np.testing.assert_array_equal(plan.train_rows(k), np.sort(train))


def test_every_row_held_out_exactly_once() -> None:
    plan = assign_folds(Y, None, "stratified", 7, 1)
    counts = np.zeros(len(Y), int)
    for k in range(7):
        counts[plan.valid_rows(k)] += 1
    assert (counts == 1).all()
    assert (plan.fold_of_row >= 0).all()


def test_time_scheme_trains_only_on_the_past() -> None:
    plan = assign_folds(Y, None, "time", 4, 0)
    assert (plan.fold_of_row[: len(Y) // 5] == NEVER_HELD_OUT).all()
    for k in range(4):
        assert plan.train_rows(k).max() < plan.valid_rows(k).min()


def test_hash_depends_on_seed_and_is_stable() -> None:
    a, b, c = (assign_folds(Y, None, "kfold", 5, s) for s in (1, 1, 2))
    assert a.hash == b.hash != c.hash


def test_fold_problems_are_named() -> None:
    y = np.array([0] * 10 + [1] * 3)
    assert "class 1" in fold_problem(y, None, "stratified", 5, "binary")
    assert fold_problem(y, None, "kfold", 5, "binary") is None
    assert "more than the 13 rows" in fold_problem(y, None, "kfold", 14, "binary")
    assert "distinct group" in fold_problem(y, np.array([1, 2] * 6 + [1]), "group", 3, "binary")


# --------------------------------------------------------------------------- repeated CV (issue 20 item 1)


@pytest.mark.parametrize(("scheme", "cls"), [("kfold", "RepeatedKFold"), ("stratified", "RepeatedStratifiedKFold")])
def test_repeated_folds_equal_sklearns_repeated_splitters(scheme: str, cls: str) -> None:
    import sklearn.model_selection as ms

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, size=200)
    plan = assign_folds(y, None, scheme, 5, 42, repeats=3)
    assert plan.repeats == 3 and plan.n_splits == 15
    theirs = list(getattr(ms, cls)(n_splits=5, n_repeats=3, random_state=42).split(np.zeros((200, 1)), y))
    for s, (train, valid) in enumerate(theirs):
        np.testing.assert_array_equal(plan.valid_rows(s), np.sort(valid))
        np.testing.assert_array_equal(plan.train_rows(s), np.sort(train))
    # repeat 0 is the one-repeat plan (same folds, same hash as cv.repeats: 1 for its own plan)
    single = assign_folds(y, None, scheme, 5, 42)
    np.testing.assert_array_equal(plan.fold_of_row, single.fold_of_row)
    assert plan.repeat(0).hash == single.hash and plan.hash != single.hash
    assert len({plan.repeat(r).hash for r in range(3)}) == 3


@pytest.mark.parametrize("scheme", ["group", "stratified_group"])
def test_group_repeats_use_seed_plus_r(scheme: str) -> None:
    rng = np.random.default_rng(1)
    y, groups = rng.integers(0, 2, size=300), rng.integers(0, 30, size=300)
    plan = assign_folds(y, groups, scheme, 4, 7, repeats=3)
    for r in range(3):
        np.testing.assert_array_equal(plan.folds_of(r), assign_folds(y, groups, scheme, 4, 7 + r).fold_of_row)
        for k in range(4):  # a group never straddles the held-out fold and the training rows
            s = r * 4 + k
            assert not np.intersect1d(groups[plan.valid_rows(s)], groups[plan.train_rows(s)]).size


def test_time_scheme_refuses_repeats() -> None:
    with pytest.raises(ValueError, match="same in every repeat"):
        assign_folds(np.arange(50) % 2, None, "time", 3, 0, repeats=2)
