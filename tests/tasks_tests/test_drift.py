"""Drift statistics, adversarial validation, leak screens and frame checks: plain functions, no Ray."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from foldwise.tasks.checks import Side, frame_errors, frame_warnings
from foldwise.tasks.data import DataConfig, PreparedData
from foldwise.tasks.drift import (
    ROW_ORDER,
    adversarial_dataset,
    adversarial_fold,
    categorical_drift,
    chi2_pvalue,
    id_like_columns,
    ids_tracking_target,
    numeric_drift,
    psi,
    series_drift,
    single_column_scores,
    summarise_adversarial,
)

RNG = np.random.default_rng(0)


# --------------------------------------------------------------------------- PSI, KS, chi-square


def test_psi_is_zero_for_identical_shares_and_grows_with_the_shift() -> None:
    assert psi([10, 20, 30], [1, 2, 3]) == pytest.approx(0.0)
    small, large = psi([50, 50], [45, 55]), psi([50, 50], [10, 90])
    assert 0 < small < 0.1 < large
    # the textbook formula, by hand
    e, a = np.array([0.5, 0.5]), np.array([0.1, 0.9])
    assert large == pytest.approx(np.sum((a - e) * np.log(a / e)))
    assert np.isfinite(psi([100, 0], [0, 100]))  # empty bins are floored, not infinite


def test_numeric_drift_same_vs_shifted_distribution() -> None:
    a, b = RNG.normal(size=5000), RNG.normal(size=3000)
    same = numeric_drift("x", a, b)
    assert same.kind == "numeric" and same.psi < 0.02 and same.ks_pvalue > 0.001 and same.level == "none"
    assert same.ks_pvalue == pytest.approx(stats.ks_2samp(a, b).pvalue)
    shifted = numeric_drift("x", a, b + 1.0)
    assert shifted.psi > 0.25 and shifted.level == "major" and shifted.ks_pvalue < 1e-20


def test_numeric_drift_counts_missing_values_as_their_own_bin() -> None:
    a = RNG.normal(size=4000)
    b = a.copy()
    b[:1200] = np.nan  # same values, but 30% missing on one side only
    d = numeric_drift("x", a, b)
    assert d.missing_train == 0 and d.missing_test == pytest.approx(0.3)
    assert d.psi > 0.25  # the missing bin alone carries the shift
    assert d.ks_pvalue > 0.05  # KS compares the observed values only
    assert sum(d.hist.train) == pytest.approx(1.0) and len(d.hist.edges) == len(d.hist.train) + 1


def test_categorical_drift_psi_and_chi_square() -> None:
    levels = ("a", "b", "c")
    a = RNG.choice(3, size=4000, p=[0.5, 0.3, 0.2]).astype(float)
    same = categorical_drift("c", a, RNG.choice(3, size=2000, p=[0.5, 0.3, 0.2]).astype(float), levels)
    assert same.kind == "categorical" and same.ks_pvalue is None and same.psi < 0.02 and same.chi2_pvalue > 0.001
    moved = categorical_drift("c", a, RNG.choice(3, size=2000, p=[0.2, 0.3, 0.5]).astype(float), levels)
    assert moved.psi > 0.25 and moved.chi2_pvalue < 1e-20
    assert set(moved.hist.levels) == set(levels)
    assert chi2_pvalue(np.array([10, 0]), np.array([10, 0])) == 1.0  # one observed level: nothing to test


def test_series_drift_on_a_text_target() -> None:
    old = pd.Series(["no"] * 800 + ["yes"] * 200)
    new = pd.Series(["no"] * 500 + ["yes"] * 500)
    d = series_drift("churned", old, new, categorical=True)
    assert d.kind == "categorical" and d.psi > 0.25 and d.chi2_pvalue < 1e-10


# --------------------------------------------------------------------------- adversarial validation


def _prepared(train: np.ndarray, test: np.ndarray, columns: tuple[str, ...], categories: dict | None = None) -> PreparedData:
    return PreparedData(X=train, y=np.zeros(len(train), np.int64), columns=columns, categories=categories or {},
                        task="binary", classes=(0, 1), fingerprint="x", X_test=test)


def _adversarial(data: PreparedData, n_folds: int = 4):
    adv = adversarial_dataset(data, n_folds, seed=0)
    return summarise_adversarial([adversarial_fold(adv, k, seed=0) for k in range(n_folds)])


def test_adversarial_validation_finds_the_planted_shift() -> None:
    cols = ("a", "b", "c", "d")
    train, test = RNG.normal(size=(2000, 4)), RNG.normal(size=(1000, 4))
    test[:, 2] += 1.5
    result = _adversarial(_prepared(train, test, cols))
    assert result.auc > 0.8 and result.verdict == "strong"
    assert next(iter(result.importance)) == "c"
    assert result.ci[0] < result.auc < result.ci[1] and result.oof_auc == pytest.approx(result.auc, abs=0.03)
    assert sum(result.importance.values()) == pytest.approx(1.0)


def test_adversarial_validation_of_identical_distributions_is_chance() -> None:
    cat = RNG.choice(4, size=(3000, 1)).astype(float)
    X = np.hstack([RNG.normal(size=(3000, 3)), cat])
    data = _prepared(X[:2000], X[2000:], ("a", "b", "c", "k"), {"k": ("w", "x", "y", "z")})
    result = _adversarial(data)
    assert abs(result.auc - 0.5) < 0.05 and result.verdict == "none"
    lo, hi = result.ci
    assert lo <= 0.5 + 0.05 and hi >= 0.5 - 0.05


def test_adversarial_dataset_samples_keeping_each_sides_share() -> None:
    data = _prepared(RNG.normal(size=(3000, 2)), RNG.normal(size=(1000, 2)), ("a", "b"))
    adv = adversarial_dataset(data, 5, seed=1, max_rows=400)
    assert adv.sampled and (adv.n_train, adv.n_test) == (300, 100)
    assert len(adv.X) == 400 and adv.is_test.sum() == 100
    assert set(np.unique(adv.fold_of_row)) == set(range(5))
    assert all(adv.is_test[adv.fold_of_row == k].sum() == 20 for k in range(5))  # stratified on the side


# --------------------------------------------------------------------------- leaks and ids


def _frame(n: int = 3000) -> tuple[pd.DataFrame, np.ndarray]:
    x = RNG.normal(size=n)
    y = (x + RNG.normal(size=n) > 0).astype(np.int64)
    return pd.DataFrame({"x": x, "noise": RNG.normal(size=n), "color": RNG.choice(["r", "g", "b"], size=n)}), y


def test_single_column_scores_flag_monotone_and_non_monotone_leaks() -> None:
    frame, y = _frame()
    frame["leak"] = y * 3.0 + RNG.normal(scale=0.3, size=len(y))
    frame["folded_leak"] = np.where(y == 1, RNG.choice([-4.0, 4.0], size=len(y)), 0.0) + RNG.normal(scale=0.3, size=len(y))
    frame["leak_text"] = np.where(y == 1, "paid", "unpaid")
    scores = {s.column: s.score for s in single_column_scores(frame, y, "binary", categorical={"color", "leak_text"})}
    assert scores["leak"] > 0.99 and scores["folded_leak"] > 0.99 and scores["leak_text"] > 0.99
    assert 0.7 < scores["x"] < 0.9  # a strong honest feature is not a leak
    assert abs(scores["noise"] - 0.5) < 0.05 and abs(scores["color"] - 0.5) < 0.05


def test_single_column_scores_regression_and_multiclass() -> None:
    n = 2000
    y = RNG.normal(size=n)
    frame = pd.DataFrame({"copy": y * 2 + 1, "noise": RNG.normal(size=n)})
    scores = {s.column: s for s in single_column_scores(frame, y, "regression")}
    assert scores["copy"].metric == "r2" and scores["copy"].score > 0.99 and scores["noise"].score < 0.05
    k = RNG.integers(0, 3, size=n)
    frame = pd.DataFrame({"label": np.array(["a", "b", "c"])[k], "noise": RNG.normal(size=n)})
    scores = {s.column: s for s in single_column_scores(frame, k, "multiclass", categorical={"label"})}
    assert scores["label"].metric == "roc_auc_ovr" and scores["label"].score > 0.99 and scores["noise"].score < 0.6


def test_id_like_columns_and_ids_that_track_the_target() -> None:
    n = 1000
    frame = pd.DataFrame({"row_id": RNG.permutation(n), "code": [f"K{i:05d}" for i in RNG.permutation(n)],
                          "measure": RNG.normal(size=n), "small_int": RNG.integers(0, 5, size=n)})
    assert id_like_columns(frame) == ("row_id", "code")
    y = RNG.integers(0, 2, size=n)
    assert ids_tracking_target(frame, y, "binary", ["row_id", "code"]) == ()
    order = np.argsort(frame["row_id"].to_numpy())
    y_sorted = np.empty(n, np.int64)
    y_sorted[order] = np.sort(y)  # the target rises with row_id
    tracked = {s.column for s in ids_tracking_target(frame, y_sorted, "binary", ["row_id", "code"])}
    assert "row_id" in tracked and "code" not in tracked
    assert ROW_ORDER in {s.column for s in ids_tracking_target(frame, np.sort(y), "binary", [])}


def test_id_like_looks_past_the_first_rows() -> None:
    """The first rows only ever rule a column out; a fraction after them still counts."""
    n = 3000
    late_fraction = np.arange(n, dtype=np.float64)
    late_fraction[2500:] += 0.5  # whole numbers for 2500 rows, then measurements
    with_missing = RNG.permutation(n).astype(np.float64)
    with_missing[::7] = np.nan
    frame = pd.DataFrame({"late_fraction": late_fraction, "long_id": RNG.permutation(n) + 10**6,
                          "with_missing": with_missing})
    assert id_like_columns(frame, min_unique_share=0.8) == ("long_id", "with_missing")


# --------------------------------------------------------------------------- frame checks


CONFIG = DataConfig(train="train.csv", test="test.csv", target="y", id="id")


def _train_test(n: int = 600) -> tuple[pd.DataFrame, pd.DataFrame]:
    train = pd.DataFrame({"id": range(n), "a": RNG.normal(size=n), "c": RNG.choice(["x", "y"], size=n),
                          "y": RNG.integers(0, 2, size=n)})
    test = train.drop(columns="y").assign(id=range(n, 2 * n))
    return train, test


def _codes(findings) -> dict[str, str | None]:
    return {f.code: f.column for f in findings}


def test_frame_errors_name_the_column() -> None:
    train, test = _train_test()
    assert frame_errors(train, CONFIG, Side(test, "data.test", "test.csv")) == ()
    const = frame_errors(train.assign(y=1), CONFIG)
    assert _codes(const) == {"target_constant": "y"} and "column 'y' is constant (1)" in const[0].message
    reg = frame_errors(train.assign(y=2.5), CONFIG)
    assert "constant (2.5)" in reg[0].message
    nan = frame_errors(train.assign(y=train.y.astype(float).where(train.index != 3)), CONFIG)
    assert "column 'y' has 1 missing value" in nan[0].message
    dup = frame_errors(train, CONFIG, Side(test.assign(id=0), "data.test", "test.csv"))
    assert _codes(dup) == {"duplicate_ids": "id"} and "of data.test" in dup[0].message
    kinds = frame_errors(train, CONFIG, Side(test.assign(a="text"), "data.test", "test.csv"))
    assert _codes(kinds) == {"dtype_differs": "a"}
    names = frame_errors(train, CONFIG, Side(test.rename(columns={"a": "b"}), "data.test", "test.csv"))
    assert "missing a; not in train b" in names[0].message
    assert _codes(frame_errors(train, CONFIG, Side(test.drop(columns="id"), "data.test", "test.csv"))) == {"id_missing": "id"}
    assert _codes(frame_errors(train, CONFIG, Side(test.head(0), "data.test", "test.csv"))) == {"empty": None}
    assert "has no rows" in frame_errors(train.head(0), CONFIG)[0].message
    ref = Side(train.drop(columns=["id"]), "--reference", "old.csv", role="reference")
    assert frame_errors(train, CONFIG, ref) == ()  # an old version may lack the id column


def test_frame_warnings_cover_each_check() -> None:
    train, test = _train_test()
    n = len(train)
    train = train.assign(const=7, rare=np.where(np.arange(n) < 3, 1, 0), a_copy=train.a,
                         city=[f"city{i % 150}" for i in range(n)], gap=RNG.normal(size=n))
    test = test.assign(const=7, rare=0, a_copy=test.a, city=[f"city{i % 150}" for i in range(n)],
                       gap=np.where(np.arange(n) % 5 == 0, np.nan, 1.0), c=np.where(np.arange(n) < 30, "new", test.c))
    y = train.y.to_numpy()
    train["leak"] = y + RNG.normal(scale=0.05, size=n)
    test["leak"] = RNG.normal(size=n)
    found = frame_warnings(train, CONFIG, "binary", y, Side(test, "data.test", "test.csv"))
    codes = {(f.code, f.column) for f in found}
    assert {("constant", "const"), ("near_constant", "rare"), ("duplicated_column", "a_copy"),
            ("high_cardinality", "city"), ("unseen_levels", "c"), ("missing_rate", "gap"), ("leak", "leak")} <= codes
    assert all(f.level == "warning" and (f.column is None or repr(f.column) in f.message) for f in found)
    unseen = next(f for f in found if f.code == "unseen_levels")
    assert "'new'" in unseen.message and "5.0% of test rows" in unseen.message
    # the id column is a row counter here, uncorrelated with y: not flagged
    assert not any(f.code in ("id_tracks_target", "row_order_tracks_target") for f in found)


def test_closed_form_aucs_equal_sklearn() -> None:
    from sklearn.metrics import roc_auc_score

    from foldwise.tasks.metrics import ovr_auc, rank_auc

    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 300)
    p = np.round(rng.uniform(size=300) + 0.3 * y, 2)  # rounded: ties must get average ranks
    assert rank_auc(y, p) == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    y3 = rng.integers(0, 3, 300)
    proba = rng.dirichlet(np.ones(3), size=300)
    assert ovr_auc(y3, proba) == pytest.approx(roc_auc_score(y3, proba, multi_class="ovr"), abs=1e-12)
    assert np.isnan(rank_auc(np.zeros(5), np.arange(5.0)))


def test_binned_auc_from_bin_counts_equals_rank_auc_on_the_rows() -> None:
    """The column scan scores bins from per-bin class counts; that must be the AUC of the rows."""
    from foldwise.tasks.drift import _bins_auc
    from foldwise.tasks.metrics import rank_auc

    rng = np.random.default_rng(7)
    for _ in range(20):
        bins = rng.integers(0, 12, 500)
        y = (rng.uniform(size=500) < 0.2 + 0.05 * bins).astype(int)
        score = np.round(rng.uniform(size=12), 1)  # rounded: some bins tie
        pos = np.bincount(bins, weights=y, minlength=12)
        neg = np.bincount(bins, minlength=12) - pos
        assert _bins_auc(pos, neg, score) == pytest.approx(rank_auc(y, score[bins]), abs=1e-12)
    assert np.isnan(_bins_auc(np.zeros(3), np.ones(3), np.arange(3.0)))


@pytest.mark.parametrize("values", [
    [1.0] * 995 + [2.0] * 5, [1.0] * 985 + [2.0] * 15, [np.nan] * 995 + [3.0] * 5, [7] * 1000, [np.nan] * 1000,
    [0] * 500 + [1] * 500, [0.5] * 990 + [np.nan] * 10, list(np.arange(1000.0)), ["a"] * 999 + ["b"],
])
def test_near_constant_by_the_median_path_agrees_with_value_counts(values) -> None:
    from foldwise.tasks.checks import NEAR_CONSTANT_SHARE, constant_columns

    frame = pd.DataFrame({"c": values})
    counts = frame["c"].value_counts(dropna=False)
    expected = ("constant" if len(counts) == 1 else
                "near_constant" if counts.iloc[0] >= NEAR_CONSTANT_SHARE * len(frame) else None)
    found = constant_columns(frame, ["c"])
    assert [f.code for f in found] == ([expected] if expected else [])
    if expected == "near_constant":
        assert f"{counts.iloc[0] / len(frame):.1%}" in found[0].message
