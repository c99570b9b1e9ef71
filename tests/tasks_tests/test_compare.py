"""tasks.compare and tasks.slices on synthetic runs: no Ray, no MLflow."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from foldwise.tasks.compare import PairedRows, RunFacts, compare_runs, pair_rows, paired_stats
from foldwise.tasks.compare_report import note_markdown, plot_fold_deltas, plot_slice_grid, sections, to_html, to_markdown
from foldwise.tasks.metrics import score
from foldwise.tasks.slices import ALL_ROWS, SliceError, auto_slices, fast_score, feature_frame, slice_scores

N = 400


def _data(seed: int = 0) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, np.ndarray]:
    """B is better than A only where x > 0; `cat` is a text column."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=N)
    frame = pd.DataFrame({"x": x, "z": rng.normal(size=N), "cat": rng.choice(["red", "blue"], N)})
    y = (x + rng.normal(scale=0.8, size=N) > 0).astype(int)
    noise = rng.normal(scale=1.0, size=N)
    a = 1 / (1 + np.exp(-(x + noise)))
    b = np.where(x > 0, 1 / (1 + np.exp(-(x + 0.1 * noise + 2 * (y - 0.5)))), a)
    return frame, y, a, b


def _facts(name: str, folds_hash: str, fold_scores: tuple[float, ...], **kw) -> RunFacts:
    return RunFacts(ref=name, run_id=name * 8, name=name, kind="run", experiment="exp", prediction="ensemble",
                    metric="roc_auc", task="binary", cv_score=float(np.mean(fold_scores)), fold_scores=fold_scores,
                    folds_hash=folds_hash, folds="stratified x5, seed 42", params=kw.pop("params", {}),
                    features=("x", "z", "cat"), fit_seconds=(1.0,) * 5, predict_seconds=(0.01,) * 5,
                    oof_rows=N, **kw)


def _rows(frame: pd.DataFrame, y: np.ndarray, a: np.ndarray, b: np.ndarray) -> PairedRows:
    return PairedRows(y=y, labels=y, a=a, b=b, row_ids=np.arange(N), folds_a=np.arange(N) % 5,
                      frame=frame.assign(fold=np.arange(N) % 5))


def test_slice_scores_per_slice_rows_and_scores() -> None:
    frame, y, a, b = _data()
    out = slice_scores(frame, {"pos": "x > 0", "red": "cat == 'red'"}, y, {"A": a, "B": b}, "roc_auc", "binary")
    mask = frame["x"].to_numpy() > 0
    assert out["pos"]["rows"] == mask.sum()
    assert out["pos"]["A"] == pytest.approx(score("roc_auc", "binary", y[mask], a[mask]))
    assert set(out["red"]) == {"rows", "A", "B"}
    with pytest.raises(SliceError, match="'bad'"):
        slice_scores(frame, {"bad": "no_such_column > 1"}, y, {"A": a}, "roc_auc", "binary")


def test_one_class_slice_scores_nan_not_crash() -> None:
    frame, y, a, _ = _data()
    out = slice_scores(frame.assign(t=y), {"positives": "t == 1"}, y, {"A": a}, "roc_auc", "binary")
    assert np.isnan(out["positives"]["A"])


@pytest.mark.parametrize("metric,task", [("roc_auc", "binary"), ("accuracy", "binary"), ("accuracy", "multiclass"),
                                         ("neg_root_mean_squared_error", "regression"), ("r2", "regression")])
def test_fast_bootstrap_scores_equal_sklearn(metric: str, task: str) -> None:
    rng = np.random.default_rng(1)
    if task == "multiclass":
        y, p = rng.integers(0, 3, 200), rng.dirichlet(np.ones(3), 200)
    elif task == "binary":
        y, p = rng.integers(0, 2, 200), np.round(rng.uniform(size=200), 2)  # ties included
    else:
        y = rng.normal(size=200)
        p = y + rng.normal(size=200)
    assert fast_score(metric, task, y, p) == pytest.approx(score(metric, task, y, p), abs=1e-12)


def test_auto_slices_are_queries_that_cover_the_rows() -> None:
    frame, *_ = _data()
    auto = auto_slices(frame, ["x", "cat", "z"])
    bins = [q for k, q in auto.items() if k.startswith("x")]
    assert len(bins) == 4
    total = sum(int(frame.eval(q, engine="python").sum()) for q in bins)
    assert total == N  # quantile bins partition the rows
    assert "cat = red" in auto and frame.eval(auto["cat = red"], engine="python").sum() == (frame["cat"] == "red").sum()


def test_feature_frame_restores_category_labels() -> None:
    X = np.array([[0.0, 1.5], [1.0, np.nan], [np.nan, 2.0]])
    f = feature_frame(X, ("c", "v"), {"c": ("a", "b")})
    assert list(f["c"][:2]) == ["a", "b"] and pd.isna(f["c"][2]) and f.query("c == 'b'").index.tolist() == [1]


def test_paired_stats_same_folds() -> None:
    a = (0.90, 0.91, 0.92, 0.93, 0.94)
    b = (0.92, 0.915, 0.935, 0.94, 0.95)
    p = paired_stats(a, b)
    assert p.fold_deltas == pytest.approx(np.subtract(b, a))
    assert 0 < p.p_t < 0.05 and p.p_corrected > p.p_t  # the corrected test is more conservative
    assert p.p_wilcoxon == pytest.approx(0.0625)  # 5 folds, all positive: the exact floor 2/2^5
    assert p.b_wins == 5


def test_same_folds_one_change_gives_deltas_pvalues_and_slice_verdicts(tmp_path) -> None:
    frame, y, a, b = _data()
    fa, fb = (0.80, 0.81, 0.79, 0.80, 0.82), (0.84, 0.85, 0.82, 0.85, 0.86)
    A = _facts("A", "h1", fa, params={"models.0.params.C": "1.0", "cv.seed": "42"})
    B = _facts("B", "h1", fb, params={"models.0.params.C": "0.1", "cv.seed": "42"})
    c = compare_runs(A, B, _rows(frame, y, a, b), "", {"positive x": "x > 0", "negative x": "x <= 0"}, n_boot=100)
    s = c.summary()
    assert s["same_folds"] is True and len(s["fold_deltas"]) == 5 and 0 < s["p_value"] < 0.05
    assert set(s["p_values"]) == {"t_test", "wilcoxon", "corrected_t"}
    assert [(ch.key, ch.a, ch.b) for ch in c.changes] == [("models.0.params.C", "1.0", "0.1")]
    verdicts = {k: v["verdict"] for k, v in s["slices"].items()}
    assert verdicts["positive x"] == "better" and verdicts["negative x"] == "within noise"
    assert ALL_ROWS in verdicts and any(v["source"] == "auto" for v in s["slices"].values())
    assert c.agreement is not None and 0 < c.agreement.pearson < 1 and len(c.agreement.disagreements) == 10
    md = to_markdown(sections(c, {"fold_deltas": "f.png"}))
    for heading in ("What A and B are", "What changed", "Headline delta", "Slices", "Efficiency",
                    "Where A and B disagree", "Feature-importance shifts", "Conclusion"):
        assert f"## {heading}" in md
    assert "paired t-test" in md and "▲ B better" in md and "not recorded" in md.lower()
    assert plot_fold_deltas(c, tmp_path / "f.png").stat().st_size > 1000
    assert plot_slice_grid(c, tmp_path / "g.png").stat().st_size > 1000
    page = to_html(sections(c, {"fold_deltas": "f.png"}), tmp_path)
    assert page.startswith("<!doctype html>") and "data:image/png;base64," in page and "<table>" in page


def test_different_folds_refuse_paired_statistics(tmp_path) -> None:
    frame, y, a, b = _data()
    c = compare_runs(_facts("A", "h1", (0.8,) * 5), _facts("B", "h2", (0.85, 0.84, 0.86, 0.85, 0.83)),
                     _rows(frame, y, a, b), "", {"positive x": "x > 0"}, n_boot=100)
    s = c.summary()
    assert s["same_folds"] is False and s["fold_deltas"] == [] and s["p_value"] is None and s["p_values"] is None
    assert s["delta"] == pytest.approx(0.846 - 0.8)
    assert all(v["verdict"] == "n/a" and v["ci"] == [None, None] for v in s["slices"].values())
    md = to_markdown(sections(c))
    assert "FOLDS DIFFER" in md and "NO paired statistics" in md
    assert "paired t-test" not in md and "Wilcoxon" not in md
    assert plot_fold_deltas(c, tmp_path / "f.png").exists()


def test_pair_rows_refuses_different_rows_and_note_fits_the_tag() -> None:
    oof = pd.DataFrame({"row": np.arange(10), "fold": np.arange(10) % 2, "target": [0, 1] * 5, "ensemble": 0.5})
    rows, why = pair_rows(oof, oof.iloc[:8], "ensemble", "ensemble", "target", "binary", None)
    assert rows is None and "different rows" in why
    rows, why = pair_rows(oof, oof, "ensemble", "missing", "target", "binary", None)
    assert rows is None and "'missing'" in why
    c = compare_runs(_facts("A", "h", (0.8,) * 5, params={f"k{i}": "x" * 100 for i in range(300)}),
                     _facts("B", "h", (0.8,) * 5), None, "no OOF", {})
    note = note_markdown(sections(c), "compare/x/writeup.md")
    assert len(note) <= 7900 and note.endswith("artifact `compare/x/writeup.md`.")


def test_pair_rows_keeps_the_frame_when_an_integer_target_was_written_as_float() -> None:
    """The CSV re-read gives the target as int64 (326); the OOF file holds it as float (326.0): the same data."""
    target = np.arange(300, 310)
    oof = pd.DataFrame({"row": np.arange(10), "fold": np.arange(10) % 2, "price": target.astype(float),
                        "ensemble": np.linspace(300, 310, 10)})
    frame = pd.DataFrame({"carat": np.linspace(0.2, 1.0, 10), "price": target})
    rows, why = pair_rows(oof, oof, "ensemble", "ensemble", "price", "regression", frame)
    assert why == "" and rows is not None and rows.frame is not None and rows.frame_note == ""
    changed = frame.assign(price=target + 1)
    rows, _ = pair_rows(oof, oof, "ensemble", "ensemble", "price", "regression", changed)
    assert rows is not None and rows.frame is None and "no longer matches" in rows.frame_note


def test_pair_rows_compares_text_labels_exactly() -> None:
    oof = pd.DataFrame({"row": np.arange(4), "fold": [0, 1, 0, 1], "label": ["yes", "no", "yes", "no"],
                        "ensemble": 0.5})
    same = pd.DataFrame({"x": [1, 2, 3, 4], "label": ["yes", "no", "yes", "no"]})
    rows, _ = pair_rows(oof, oof, "ensemble", "ensemble", "label", "binary", same)
    assert rows is not None and rows.frame is not None
    other = same.assign(label=["Yes", "no", "yes", "no"])
    rows, _ = pair_rows(oof, oof, "ensemble", "ensemble", "label", "binary", other)
    assert rows is not None and rows.frame is None and "no longer matches" in rows.frame_note


def test_pair_rows_codes_the_runs_positive_class_as_1() -> None:
    """A run with data.positive_class 'no' holds P(no): the paired target must code 'no' as 1 too."""
    oof = pd.DataFrame({"row": np.arange(4), "fold": [0, 1, 0, 1], "label": ["yes", "no", "yes", "no"],
                        "ensemble": [0.1, 0.9, 0.2, 0.8]})
    default, _ = pair_rows(oof, oof, "ensemble", "ensemble", "label", "binary", None)
    flipped, _ = pair_rows(oof, oof, "ensemble", "ensemble", "label", "binary", None, positive_class="no")
    assert default is not None and default.y.tolist() == [1, 0, 1, 0]
    assert flipped is not None and flipped.y.tolist() == [0, 1, 0, 1]


def test_efficiency_text_does_not_say_peak_memory_is_unmeasured_when_runs_record_it() -> None:
    frame, y, a, b = _data()
    A = _facts("A", "h1", (0.8,) * 5, peak_memory_bytes=120e6)
    B = _facts("B", "h1", (0.81,) * 5, peak_memory_bytes=150e6)
    c = compare_runs(A, B, _rows(frame, y, a, b), "", {}, n_boot=20)
    md = to_markdown(sections(c))
    assert "| peak memory (MB) | 120.0 | 150.0 | 1.25x |" in md
    assert "not measured" not in md and "Peak memory is the most resident memory" in md
    unknown = compare_runs(_facts("A", "h1", (0.8,) * 5, peak_memory_bytes=-1.0), B, None, "no OOF", {})
    assert "| peak memory (MB) | not recorded | 150.0 | - |" in to_markdown(sections(unknown))
