"""Repeated CV's statistics and ensembles, without Ray or MLflow: hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from foldwise.tasks.ablation import paired_delta, paired_deltas, per_repeat
from foldwise.tasks.compare import paired_stats
from foldwise.tasks.folds import assign_folds
from foldwise.tasks.metrics import score
from foldwise.tasks.repeats import blend_repeats, corrected_t_test, mean_over_repeats, repeat_scores, repeat_std

DELTAS = [0.010, 0.004, -0.002, 0.008, 0.006, 0.001, 0.009, 0.003, 0.005, 0.007, 0.000, 0.012, 0.002, 0.006, 0.004]


def test_corrected_repeated_kfold_t_matches_a_hand_computation() -> None:
    """5 folds x 3 repeats: Nadeau-Bengio variance (1/15 + 1/4) s^2, 14 df."""
    t, p, (lo, hi) = corrected_t_test(DELTAS, n_folds=5)
    n = 15
    mean = sum(DELTAS) / n
    var = sum((x - mean) ** 2 for x in DELTAS) / (n - 1)
    se = math.sqrt((1 / n + 1 / 4) * var)
    assert t == pytest.approx(mean / se, rel=1e-12)
    assert p == pytest.approx(2 * stats.t.sf(abs(mean / se), 14), rel=1e-12)
    half = stats.t.ppf(0.975, 14) * se
    assert (lo, hi) == pytest.approx((mean - half, mean + half), rel=1e-12)
    # it is more conservative than the plain paired t over the same 15 correlated deltas
    assert p > stats.ttest_1samp(DELTAS, 0.0).pvalue


def test_corrected_t_edge_cases() -> None:
    assert np.isnan(corrected_t_test([0.1], 5)[1])
    t, p, _ = corrected_t_test([0.01] * 6, 3)
    assert t == np.inf and p == 0.0
    assert np.isnan(corrected_t_test([0.0] * 6, 3)[1])


def test_compare_pairs_every_repeat_x_fold() -> None:
    a = np.linspace(0.80, 0.82, 15)
    b = a + np.asarray(DELTAS)
    p = paired_stats(a, b, n_folds=5)
    assert len(p.fold_deltas) == 15
    assert p.p_corrected == pytest.approx(corrected_t_test(DELTAS, 5)[1], rel=1e-9)
    # without n_folds the deltas are read as one repeat of 15 folds: a different (wrong) correction
    assert paired_stats(a, b).p_corrected != pytest.approx(p.p_corrected)


def _repeated_oof(plan, y: np.ndarray, rng: np.random.Generator, signal: float) -> list[np.ndarray]:
    return [np.clip(0.5 + signal * (y - 0.5) + rng.normal(0, 0.25, len(y)), 0, 1) for _ in range(plan.repeats)]


def test_ablation_pairs_every_repeat_x_fold_with_the_corrected_t() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    plan = assign_folds(y, None, "stratified", 4, 1, repeats=3)
    base, variant = _repeated_oof(plan, y, rng, 0.4), _repeated_oof(plan, y, rng, 0.2)
    d = paired_delta("roc_auc", "binary", y, plan, base, variant, n_boot=200, seed=0)
    by_hand = [score("roc_auc", "binary", y[plan.valid_rows(s)], variant[s // 4][plan.valid_rows(s)])
               - score("roc_auc", "binary", y[plan.valid_rows(s)], base[s // 4][plan.valid_rows(s)]) for s in range(12)]
    np.testing.assert_allclose(d.fold_deltas, by_hand, rtol=1e-12)
    assert d.delta == pytest.approx(np.mean(by_hand))
    _, p, interval = corrected_t_test(by_hand, 4)
    assert d.p_corrected == pytest.approx(p) and d.ci_t == pytest.approx(interval)
    assert d.ci is not None and d.ci[0] < d.delta < d.ci[1]
    # dropping the signal costs score: the whole interval is below 0 and the verdict says the group helps
    assert d.ci[1] < 0 and d.verdict == "helps"
    many = paired_deltas("roc_auc", "binary", y, plan, base, {"v": variant}, n_boot=200, seed=0)
    np.testing.assert_allclose(many["v"].fold_deltas, by_hand, rtol=1e-12)


def test_a_single_oof_for_a_repeated_plan_is_refused() -> None:
    y = np.arange(60) % 2
    plan = assign_folds(y, None, "stratified", 3, 0, repeats=2)
    with pytest.raises(ValueError, match="one OOF array per repeat"):
        per_repeat(np.zeros(60), plan)


def test_blend_repeats_fits_each_repeat_and_averages() -> None:
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 300)
    plan = assign_folds(y, None, "stratified", 3, 0, repeats=2)
    oof = {"a": _repeated_oof(plan, y, rng, 0.5), "b": _repeated_oof(plan, y, rng, 0.3)}
    test = {"a": rng.uniform(size=20), "b": rng.uniform(size=20)}
    ens = blend_repeats("weights", oof, test, y, plan, "roc_auc", "binary", 0)
    from foldwise.tasks.ensemble import blend

    per = [blend("weights", {m: o[r] for m, o in oof.items()}, test, y, plan.repeat(r), "roc_auc", "binary", 0)
           for r in range(2)]
    assert ens.fold_scores == per[0].fold_scores + per[1].fold_scores
    assert ens.cv_score == pytest.approx(np.mean(ens.fold_scores))
    assert ens.weights == pytest.approx({m: (per[0].weights[m] + per[1].weights[m]) / 2 for m in ("a", "b")})
    np.testing.assert_allclose(ens.oof, (per[0].oof + per[1].oof) / 2)
    np.testing.assert_allclose(ens.test, (per[0].test + per[1].test) / 2)
    assert repeat_scores(ens.fold_scores, 3) == pytest.approx([per[0].cv_score, per[1].cv_score])
    assert repeat_std(ens.fold_scores, 3) == pytest.approx(np.std([per[0].cv_score, per[1].cv_score], ddof=1))


def test_mean_over_repeats_keeps_nan_where_no_repeat_holds_a_row_out() -> None:
    a, b = np.array([1.0, np.nan, 3.0]), np.array([3.0, np.nan, np.nan])
    np.testing.assert_array_equal(mean_over_repeats([a, b]), [2.0, np.nan, 3.0])


def test_expand_and_average_seeds() -> None:
    from foldwise.tasks.data import DataConfig, prepare_data
    from foldwise.tasks.models import ModelConfig
    from foldwise.tasks.seeds import SeedAverage, average_seeds, base_name, expand_seeds
    from foldwise.tasks.train import train_fold

    m = ModelConfig(name="lgbm", type="lightgbm", params={"n_estimators": 20, "feature_fraction": 0.5}, seeds=(3, 4))
    nodes = expand_seeds([m, ModelConfig(name="lr", type="sklearn", estimator="sklearn.linear_model.LogisticRegression")])
    assert [n.name for n in nodes] == ["lgbm@seed3", "lgbm@seed4", "lr"] and [n.seed for n in nodes[:2]] == [3, 4]
    assert base_name("lgbm@seed3") == "lgbm" and nodes[0].seeds == ()
    data = prepare_data(DataConfig(train="sklearn:breast_cancer"))
    plan = assign_folds(data.y, None, "stratified", 2, 0)
    done = {n.name: [train_fold(data, plan, n, k, "roc_auc", 0) for k in range(2)] for n in nodes[:2]}
    out, cached = average_seeds(done, {n: [True, False] for n in done}, "roc_auc", "binary", data.y)
    assert list(out) == ["lgbm"] and cached == {"lgbm": [True, False]}
    for k, r in enumerate(out["lgbm"]):
        mean = (done["lgbm@seed3"][k].oof + done["lgbm@seed4"][k].oof) / 2
        np.testing.assert_allclose(r.oof, mean)
        assert r.score == pytest.approx(score("roc_auc", "binary", data.y[plan.valid_rows(k)], mean))
        import pickle

        fitted = pickle.loads(r.fitted)  # the averaged model re-predicts as the mean of its seeds
        assert isinstance(fitted, SeedAverage) and len(fitted.models) == 2
