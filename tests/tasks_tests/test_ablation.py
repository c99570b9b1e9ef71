"""Ablation statistics, groups, dropped columns and permutation importance: real fits, no Ray, no MLflow."""

from __future__ import annotations

import pickle
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from foldwise.tasks.ablation import (
    AblationReport,
    GroupError,
    GroupOutcome,
    PairedDelta,
    ablation_markdown,
    fit_time_share,
    paired_delta,
    permutation_importance_fold,
    plot_deltas,
    removal_candidates,
    resolve_groups,
    select_groups,
    summarise_importance,
    verdict_of,
)
from foldwise.tasks.bootstrap import fold_bootstrap, fold_bootstrap_of_fits, resample_counts, weighted_scores
from foldwise.tasks.data import PreparedData, drop_columns
from foldwise.tasks.features import fit_vocabulary, frame
from foldwise.tasks.folds import assign_folds
from foldwise.tasks.metrics import score
from foldwise.tasks.models import ModelConfig
from foldwise.tasks.train import train_fold

COLUMNS = ("s1", "s2", "w1", "w2", "z1", "z2", "z3", "z4", "z5")
GROUPS = {"strong": ("s1", "s2"), "weak": ("w1", "w2"), "noise": ("z1", "z2", "z3", "z4", "z5")}
LOGREG = ModelConfig(name="lr", type="sklearn", estimator="sklearn.linear_model.LogisticRegression",
                     params={"C": 1.0, "max_iter": 1000})


def synthetic(seed: int, n: int = 800, task: str = "binary") -> PreparedData:
    """A strong group (coefficient 1.0 each), a weak-but-real group (0.5 each) and five pure-noise columns."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, len(COLUMNS)))
    signal = 1.0 * (X[:, 0] + X[:, 1]) + 0.5 * (X[:, 2] + X[:, 3])
    if task == "binary":
        y = (rng.uniform(size=n) < 1 / (1 + np.exp(-signal))).astype(np.int64)
        classes: tuple = (0, 1)
    else:
        y = signal + rng.normal(scale=1.0, size=n)
        classes = ()
    return PreparedData(X=X, y=y, columns=COLUMNS, categories={}, task=task, classes=classes, fingerprint=f"syn{seed}")


def oof_of(data: PreparedData, plan, model: ModelConfig, metric: str, seed: int, drop: tuple[str, ...] = ()):
    results = [train_fold(data, plan, model, k, metric, seed, drop) for k in range(plan.n_folds)]
    oof = np.full(len(data.y), np.nan)
    for r in results:
        oof[r.valid_rows] = r.oof
    return oof, results


# --------------------------------------------------------------------------- the statistics


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_strong_and_weak_help_noise_never_does(seed: int) -> None:
    data = synthetic(seed)
    plan = assign_folds(data.y, None, "stratified", 4, seed)
    base, base_folds = oof_of(data, plan, LOGREG, "roc_auc", seed)
    verdicts = {}
    for group, cols in GROUPS.items():
        variant, var_folds = oof_of(data, plan, LOGREG, "roc_auc", seed, cols)
        d = paired_delta("roc_auc", "binary", data.y, plan, base, variant, n_boot=1000, seed=seed)
        # the deltas are exactly the fold tasks' own scores, paired fold by fold
        np.testing.assert_allclose(d.fold_deltas, [v.score - b.score for v, b in zip(var_folds, base_folds)],
                                   rtol=0, atol=1e-12)
        assert d.delta == pytest.approx(np.mean(d.fold_deltas))
        assert d.ci[0] <= d.ci[1] and d.verdict == verdict_of(d.ci)
        verdicts[group] = d.verdict
        if group == "strong":
            assert d.delta < -0.1  # dropping the strong group costs a lot of AUC
    assert verdicts["strong"] == "helps" and verdicts["weak"] == "helps", verdicts
    assert verdicts["noise"] in ("neutral", "hurts"), verdicts


def test_direction_follows_the_metric_for_an_error_metric() -> None:
    """neg_root_mean_squared_error is greater-is-better in foldwise: dropping the strong group gives a
    more negative score, so delta < 0 and the group `helps`, exactly as for AUC."""
    data = synthetic(5, task="regression")
    plan = assign_folds(data.y, None, "kfold", 4, 5)
    ridge = ModelConfig(name="ridge", type="sklearn", estimator="sklearn.linear_model.Ridge", params={"alpha": 1.0})
    base, _ = oof_of(data, plan, ridge, "neg_root_mean_squared_error", 5)
    variant, _ = oof_of(data, plan, ridge, "neg_root_mean_squared_error", 5, GROUPS["strong"])
    rmse = lambda p: np.mean([np.sqrt(np.mean((data.y[r] - p[r]) ** 2)) for r in map(plan.valid_rows, range(4))])  # noqa: E731
    assert rmse(variant) > rmse(base)  # the error really grows
    d = paired_delta("neg_root_mean_squared_error", "regression", data.y, plan, base, variant, n_boot=500, seed=5)
    assert d.delta == pytest.approx(rmse(base) - rmse(variant)) and d.delta < 0
    assert d.verdict == "helps"


def test_identical_predictions_are_neutral() -> None:
    data = synthetic(3)
    plan = assign_folds(data.y, None, "stratified", 4, 3)
    base, _ = oof_of(data, plan, LOGREG, "roc_auc", 3)
    d = paired_delta("roc_auc", "binary", data.y, plan, base, base.copy(), n_boot=200, seed=0)
    assert d.delta == 0 and d.ci == (0.0, 0.0) and d.verdict == "neutral"


def test_verdict_rule() -> None:
    assert verdict_of((-0.2, -0.01)) == "helps"
    assert verdict_of((0.001, 0.02)) == "hurts"
    assert verdict_of((-0.01, 0.01)) == "neutral"
    assert verdict_of(None) == "neutral"


@pytest.mark.parametrize("metric,task", [
    ("roc_auc", "binary"), ("accuracy", "binary"), ("neg_log_loss", "binary"), ("f1", "binary"),
    ("accuracy", "multiclass"), ("neg_log_loss", "multiclass"), ("balanced_accuracy", "multiclass"),
    ("r2", "regression"), ("neg_root_mean_squared_error", "regression"), ("neg_mean_squared_error", "regression"),
    ("neg_mean_absolute_error", "regression"), ("neg_median_absolute_error", "regression"),
])
def test_resample_scores_equal_sklearn_on_the_repeated_rows(metric: str, task: str) -> None:
    """The closed forms (and the fallback) give the scorer's value on each resample, ties included."""
    rng = np.random.default_rng(0)
    n = 120
    if task == "binary":
        y = rng.integers(0, 2, n)
        pred = np.round(rng.uniform(size=n), 1)  # many ties
        pred[:3] = [0.0, 1.0, 1e-20]  # log-loss clipping at both ends
    elif task == "multiclass":
        y = rng.integers(0, 3, n)
        pred = rng.dirichlet(np.ones(3), size=n)
    else:
        y = rng.normal(1000, 3, n)  # a large mean: r2 must not lose digits
        pred = y + rng.normal(0, 2, n)
    strata = [np.flatnonzero(y == c) for c in np.unique(y)] if task != "regression" else [np.arange(n)]
    counts = resample_counts(rng, strata, n, 25)
    fast = weighted_scores(metric, task, y, pred, counts)
    slow = [score(metric, task, np.repeat(y, c), np.repeat(pred, c, axis=0)) for c in counts]
    np.testing.assert_allclose(fast, slow, rtol=1e-9, atol=1e-12)


def test_resamples_keep_each_stratum_size() -> None:
    rng = np.random.default_rng(1)
    strata = [np.arange(0, 7), np.arange(7, 20)]
    counts = resample_counts(rng, strata, 20, 50)
    assert counts.shape == (50, 20)
    assert (counts[:, :7].sum(axis=1) == 7).all() and (counts[:, 7:].sum(axis=1) == 13).all()
    assert len({tuple(c) for c in counts}) > 45  # resamples differ


def test_fit_time_share_uses_medians() -> None:
    base = {"a": [5.0, 1.0, 1.0, 1.0], "b": [2.0, 2.0, 2.0, 2.0]}  # one cold start in a
    variant = {"a": [0.5, 0.5, 0.5, 0.5], "b": [2.0, 2.0, 2.0, 2.0]}
    assert fit_time_share(base, variant) == pytest.approx(1 - 2.5 / 3.0)


# --------------------------------------------------------------------------- groups


def test_groups_from_globs_auto_and_names() -> None:
    cols = ["mean radius", "mean area", "radius error", "worst radius", "id_like"]
    got = resolve_groups({"mean": ["mean *"], "radius": ["* radius", "radius *"]}, cols)
    assert got == {"mean": ("mean radius", "mean area"), "radius": ("mean radius", "radius error", "worst radius")}
    assert resolve_groups("auto", cols) == {c: (c,) for c in cols}
    assert select_groups(got, ["radius"]) == {"radius": got["radius"]}
    with pytest.raises(GroupError, match=r"--groups: unknown group 'worst' \(groups: mean, radius\)"):
        select_groups(got, ["worst"])


@pytest.mark.parametrize("groups,message", [
    ({"mean": ["mean *"], "typo": ["wrst *"]}, r"features\.groups\.typo: pattern 'wrst \*' matches no feature column"),
    ({"t": ["targ*"]}, r"'target' is the target, not a feature"),
    ({"all": ["*"]}, r"features\.groups\.all: covers every feature column"),
    ({"empty": []}, r"features\.groups\.empty: no patterns"),
    ({}, r"features\.groups: the spec names no feature groups"),
])
def test_group_errors_name_the_key(groups, message: str) -> None:
    with pytest.raises(GroupError, match=message):
        resolve_groups(groups, ["mean a", "mean b", "worst a"], {"target": "the target"})


# --------------------------------------------------------------------------- dropped columns


def test_a_fold_without_columns_equals_a_fold_on_data_that_never_had_them() -> None:
    data = synthetic(4, n=300)
    plan = assign_folds(data.y, None, "stratified", 3, 4)
    keep = [j for j, c in enumerate(COLUMNS) if c not in GROUPS["weak"]]
    narrow = PreparedData(X=data.X[:, keep].copy(), y=data.y, columns=tuple(COLUMNS[j] for j in keep),
                          categories={}, task="binary", classes=(0, 1), fingerprint="n")
    dropped = train_fold(data, plan, LOGREG, 1, "roc_auc", 4, GROUPS["weak"])
    oracle = train_fold(narrow, plan, LOGREG, 1, "roc_auc", 4)
    np.testing.assert_array_equal(dropped.oof, oracle.oof)
    assert dropped.score == oracle.score
    view = drop_columns(data, GROUPS["weak"])
    assert view.columns == narrow.columns and view.X.shape == (300, 7)
    with pytest.raises(ValueError, match="not feature columns"):
        drop_columns(data, ("nope",))


# --------------------------------------------------------------------------- permutation importance


def test_permutation_importance_reuses_the_fitted_model(tmp_path: Path) -> None:
    """Counted: one fit per fold, however many groups and repeats are shuffled."""
    log = tmp_path / "fits.log"
    counted = ModelConfig(name="slow", type="tests.workflows_tests.adapters:SlowLogistic", params={"log": str(log)})
    data = synthetic(6)
    plan = assign_folds(data.y, None, "stratified", 3, 6)
    results = [train_fold(data, plan, counted, k, "roc_auc", 6) for k in range(3)]
    assert len(log.read_text().splitlines()) == 3
    per_fold = [permutation_importance_fold(data, plan, r, GROUPS, "roc_auc", 6, repeats=3) for r in results]
    assert len(log.read_text().splitlines()) == 3, "re-predicts only, never refits"
    imp = summarise_importance(per_fold)["slow"]
    assert imp["strong"].mean > imp["weak"].mean > 0.005
    assert abs(imp["noise"].mean) < imp["weak"].mean
    assert all(len(f.drops["noise"]) == 3 for f in per_fold)
    unpicklable = type(results[0])(**{**results[0].__dict__, "fitted": None})
    assert permutation_importance_fold(data, plan, unpicklable, GROUPS, "roc_auc", 6).drops is None
    assert summarise_importance([permutation_importance_fold(data, plan, unpicklable, GROUPS, "roc_auc", 6)]) == {
        "slow": None}
    assert pickle.loads(results[0].fitted).model.coef_.shape == (1, len(COLUMNS))


def _per_shuffle_importance(data: PreparedData, plan, result, groups, metric: str, seed: int, repeats: int) -> dict:
    """The direct computation: one copy, one frame and one predict per group x shuffle, drawn in that order."""
    model = pickle.loads(result.fitted)
    rows = plan.valid_rows(result.fold)
    vocab = fit_vocabulary(data, plan.train_rows(result.fold))
    X, y = data.X[rows], data.y[rows]
    rng = np.random.default_rng([seed, result.fold])
    out = {}
    for name, cols in groups.items():
        j = [data.columns.index(c) for c in cols]
        drops = []
        for _ in range(repeats):
            shuffled = X.copy()
            shuffled[:, j] = X[rng.permutation(len(rows))][:, j]
            pred = np.asarray(model.predict(frame(data, shuffled, vocab)))
            drops.append(result.score - score(metric, data.task, y, pred))
        out[name] = drops
    return out


def _with_category(data: PreparedData) -> PreparedData:
    """`data` plus a categorical column (codes into 4 levels, some missing) in the weak group."""
    rng = np.random.default_rng(5)
    codes = rng.integers(0, 4, size=len(data.y)).astype(np.float64)
    codes[rng.uniform(size=len(codes)) < 0.05] = np.nan
    X = np.column_stack([data.X, codes + 0.0 * data.y])
    return replace(data, X=X, columns=(*data.columns, "cat"), categories={"cat": ("a", "b", "c", "d")})


@pytest.mark.parametrize("block_cells", [None, 2 * 160 * 10])  # None: one block; else 2 shuffles per block
@pytest.mark.parametrize("model,metric", [
    (ModelConfig(name="gbm", type="lightgbm", params={"n_estimators": 30, "num_leaves": 7, "verbose": -1}), "roc_auc"),
    (LOGREG, "neg_log_loss"),
])
def test_stacked_importance_equals_one_predict_per_shuffle(model: ModelConfig, metric: str, block_cells,
                                                           monkeypatch) -> None:
    """Shuffles predicted in stacked blocks give the per-shuffle scores (same seed, same draws) to 1e-12."""
    import foldwise.tasks.ablation as ablation

    if block_cells is not None:
        monkeypatch.setattr(ablation, "_IMPORTANCE_BLOCK_CELLS", block_cells)
    data = _with_category(synthetic(4))
    groups = {"strong": ("s1", "s2"), "weak": ("w1", "w2", "cat"), "noise": ("z1", "z2", "z3", "z4", "z5")}
    plan = assign_folds(data.y, None, "stratified", 5, 4)
    for k in (0, 3):
        result = train_fold(data, plan, model, k, metric, 4)
        got = permutation_importance_fold(data, plan, result, groups, metric, 4, repeats=3)
        want = _per_shuffle_importance(data, plan, result, groups, metric, 4, 3)
        assert list(got.drops) == list(want) and 0 < got.seconds < 60, got.seconds
        for g in groups:
            np.testing.assert_allclose(got.drops[g], want[g], rtol=0, atol=1e-12, err_msg=g)
        assert len(set(got.drops["strong"])) == 3, "three different shuffles"
        assert permutation_importance_fold(data, plan, result, groups, metric, 5, repeats=3).drops != got.drops


def test_bootstrap_of_fits_equals_the_bootstrap_of_their_oof() -> None:
    """The task the DAG starts on a split's fit handles draws the same resamples as fold_bootstrap on the OOF."""
    data = synthetic(8)
    plan = assign_folds(data.y, None, "stratified", 3, 8)
    base = [train_fold(data, plan, LOGREG, k, "roc_auc", 8) for k in range(3)]
    weak = [train_fold(data, plan, LOGREG, k, "roc_auc", 8, GROUPS["weak"]) for k in range(3)]
    for k in range(3):
        rows = plan.valid_rows(k)
        got = fold_bootstrap_of_fits(data, plan, k, "roc_auc", 200, 8, ("weak",), base[k], weak[k])
        want = fold_bootstrap("roc_auc", "binary", data.y[rows], base[k].oof, {"weak": weak[k].oof}, 200, (8, k))
        np.testing.assert_array_equal(got["weak"], want["weak"])
    with pytest.raises(ValueError, match="is not split 1"):
        fold_bootstrap_of_fits(data, plan, 1, "roc_auc", 200, 8, ("weak",), base[1], weak[2])


# --------------------------------------------------------------------------- the report


def _outcome(group: str, delta: float, ci: tuple[float, float], cols: tuple[str, ...],
             saved: float = 0.25) -> GroupOutcome:
    stats = PairedDelta(fold_deltas=(delta,) * 4, delta=delta, ci=ci, ci_t=ci, verdict=verdict_of(ci))
    return GroupOutcome(group=group, columns=cols, cv_score=0.8 + delta, stats=stats, model_stats={"lr": stats},
                        fit_seconds=1.0, fit_time_share=0.25, fit_seconds_saved=saved, importance={"lr": None})


def test_report_sorted_by_worth_with_candidates_and_chart(tmp_path: Path) -> None:
    outcomes = (_outcome("noise", 0.002, (-0.001, 0.004), GROUPS["noise"]),
                _outcome("strong", -0.2, (-0.25, -0.15), GROUPS["strong"]),
                _outcome("leaky", 0.01, (0.004, 0.02), ("z9",)),
                _outcome("weak", -0.03, (-0.05, -0.01), GROUPS["weak"]))
    report = AblationReport(title="syn", metric="roc_auc", headline="model lr", baseline_score=0.8,
                            baseline_fold_scores=(0.8,) * 4, n_features=10, folds="4 stratified folds",
                            outcomes=outcomes, models=("lr",), n_boot=1000, repeats=3)
    md = ablation_markdown(report, chart="ablation.png")
    table = [line for line in md.splitlines() if line.startswith("| ") and "**" in line]
    assert [row.split("|")[2].strip() for row in table] == ["strong", "weak", "noise", "leaky"]
    candidates = md.split("## Candidates to remove")[1].split("##")[0]
    assert "**noise**" in candidates and "**leaky**" in candidates and "strong" not in candidates
    assert "a different, weaker measure" in md and "paired bootstrap over OOF rows" in md
    assert removal_candidates(outcomes) == ["noise", "leaky"]
    png = plot_deltas(report, tmp_path / "ablation.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_says_fit_seconds_saved_not_a_share() -> None:
    """Baseline minus variant fit seconds, signed so that positive = dropping the group saves time."""
    outcomes = (_outcome("big", -0.2, (-0.25, -0.15), ("x1",), saved=12.5),
                _outcome("cheap", 0.0, (-0.01, 0.01), ("x2",), saved=-0.4))
    report = AblationReport(title="syn", metric="roc_auc", headline="model lr", baseline_score=0.8,
                            baseline_fold_scores=(0.8,) * 4, n_features=2, folds="4 stratified folds",
                            outcomes=outcomes, models=("lr",), n_boot=100, repeats=3)
    md = ablation_markdown(report)
    header = next(line for line in md.splitlines() if line.startswith("| rank"))
    assert "| fit s saved |" in header and "share" not in header
    rows = {line.split("|")[2].strip(): line for line in md.splitlines() if line.startswith("| ") and "**" in line}
    assert "| +12.50 |" in rows["big"] and "| -0.40 |" in rows["cheap"]
    assert "fit-time share" not in md and "positive: dropping the group saves" in md


def test_every_variant_is_judged_on_the_same_resamples() -> None:
    """fold_bootstrap draws a fold's resamples once: each variant's deltas are its scores minus the
    baseline's on those very resamples (rebuilt here from the same seed), a copy of the baseline is 0."""
    from foldwise.tasks.bootstrap import _CHUNK_CELLS, fold_bootstrap, strata_of

    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 400)
    base, v1, v2 = (np.clip(y * s + rng.uniform(size=400), 0, 2) for s in (0.5, 0.3, 0.8))
    drawn = fold_bootstrap("roc_auc", "binary", y, base, {"v1": v1, "v2": v2, "same": base.copy()}, 60, (7, 0))
    assert set(drawn) == {"v1", "v2", "same"} and (drawn["same"] == 0).all()
    assert 60 <= _CHUNK_CELLS // 400  # one block: the counts below are the only draw
    counts = resample_counts(np.random.default_rng((7, 0)), strata_of(y, "binary"), 400, 60)
    b = weighted_scores("roc_auc", "binary", y, base, counts)
    for name, pred in (("v1", v1), ("v2", v2)):
        np.testing.assert_allclose(drawn[name], weighted_scores("roc_auc", "binary", y, pred, counts) - b, atol=1e-15)
    assert drawn["v1"].mean() < 0 < drawn["v2"].mean()
