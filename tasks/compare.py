"""Model-change write-ups: what changed between two runs, and whether B is better beyond noise.

Pure functions over what the runs recorded (`RunFacts`, their OOF predictions and the
training table): paired fold statistics (refused when the fold plans differ, because an
unpaired fold delta mixes the change with the split), per-slice deltas with bootstrap
intervals, OOF agreement, efficiency and importance shifts. `tasks.compare_report` renders a
`Comparison` as markdown, HTML and plots; `workflows/commands/compare.py` fetches the runs;
nothing here imports Ray or MLflow.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

from foldwise.tasks.repeats import corrected_t_test
from foldwise.tasks.slices import ALL_ROWS, AutoSliceConfig, SliceDelta, auto_slices, held_out, rank_features, slice_deltas

NOISE_LEVEL = 0.05  # two-sided level for "beyond noise"


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class RunFacts:
    """What compare knows about one run (a `run` parent = its ensemble, or one model's child run)."""

    ref: str  # what the user typed (id or name)
    run_id: str
    name: str
    kind: str  # "run" (parent, compared on its ensemble) | "model" (one model's child run)
    experiment: str
    prediction: str  # OOF column (or column prefix for multiclass): "ensemble" or the model name
    metric: str
    task: str
    cv_score: float
    fold_scores: tuple[float, ...]
    folds_hash: str | None = None
    folds: str = ""  # "stratified x5, seed 42" (", 3 repeats")
    n_folds: int | None = None  # k of the plan (fold_scores hold repeats x k split scores); None: unknown
    data_fingerprint: str | None = None
    git_commit: str | None = None
    code_version: str | None = None
    started: str = ""
    status: str = ""
    params: Mapping[str, str] = field(default_factory=dict)
    features: tuple[str, ...] = ()
    models: tuple[str, ...] = ()  # the models behind the prediction
    fit_seconds: tuple[float, ...] = ()  # per fold, summed over the models behind the prediction
    predict_seconds: tuple[float, ...] = ()
    model_bytes: float | None = None  # per fold (mean), summed over models
    peak_memory_bytes: float | None = None
    wall_seconds: float | None = None
    oof_rows: int | None = None
    importances: Mapping[str, float] | None = None


@dataclass(frozen=True)
class PairedRows:
    """Both runs' OOF predictions on the same training rows, plus the training table for slices."""

    y: np.ndarray  # encoded target
    labels: np.ndarray  # target as written in the OOF file
    a: np.ndarray
    b: np.ndarray
    row_ids: np.ndarray  # id column when the data has one, else the row number
    folds_a: np.ndarray
    frame: pd.DataFrame | None  # training table, row-aligned; None when it could not be re-read
    frame_note: str = ""


def predictions_of(oof: pd.DataFrame, name: str) -> np.ndarray | None:
    """(n,) for binary/regression, (n, K) for multiclass (`name__class` columns), None if absent."""
    if name in oof.columns:
        return oof[name].to_numpy(dtype=float)
    cols = [c for c in oof.columns if isinstance(c, str) and c.startswith(f"{name}__")]
    return oof[cols].to_numpy(dtype=float) if cols else None


def pair_rows(oof_a: pd.DataFrame, oof_b: pd.DataFrame, pred_a: str, pred_b: str, target: str, task: str,
              frame: pd.DataFrame | None, frame_note: str = "", id_column: str | None = None,
              positive_class: object = None) -> tuple[PairedRows | None, str]:
    """Pair two OOF frames row by row, or say why they cannot be paired (different rows/targets).
    `positive_class`: the runs' data.positive_class (binary), the label their probabilities are of."""
    from foldwise.tasks.data import DataError, encode_target

    if len(oof_a) != len(oof_b) or not np.array_equal(oof_a["row"].to_numpy(), oof_b["row"].to_numpy()):
        return None, f"the OOF files hold different rows ({len(oof_a)} vs {len(oof_b)}); row-level comparisons skipped"
    if target not in oof_a.columns or target not in oof_b.columns:
        return None, f"target column {target!r} missing from an OOF file; row-level comparisons skipped"
    if not same_values(oof_a[target], oof_b[target]):
        return None, "the two runs have different targets on the same rows; row-level comparisons skipped"
    a, b = predictions_of(oof_a, pred_a), predictions_of(oof_b, pred_b)
    if a is None or b is None:
        missing = pred_a if a is None else pred_b
        return None, f"no OOF predictions for {missing!r}; row-level comparisons skipped"
    if a.shape != b.shape:
        return None, f"prediction shapes differ ({a.shape} vs {b.shape}); row-level comparisons skipped"
    try:
        y, _ = encode_target(oof_a[target], task, target, positive_class)
    except DataError as e:
        return None, f"cannot encode the target: {e}"
    if frame is not None:
        rows = oof_a["row"].to_numpy()
        if len(frame) <= rows.max() or (target in frame.columns
                                        and not same_values(frame[target].iloc[rows], oof_a[target])):
            frame, frame_note = None, "the training data no longer matches the run's OOF rows; slices skipped"
        else:
            frame = frame.iloc[rows].reset_index(drop=True)
            if "fold" not in frame.columns:
                frame = frame.assign(fold=oof_a["fold"].to_numpy())
    ids = oof_a[id_column].to_numpy() if id_column and id_column in oof_a.columns else oof_a["row"].to_numpy()
    return PairedRows(y=y, labels=oof_a[target].to_numpy(), a=a, b=b, row_ids=ids,
                      folds_a=oof_a["fold"].to_numpy(), frame=frame, frame_note=frame_note), ""


def same_values(x: pd.Series, y: pd.Series) -> bool:
    """The same target values row by row: numerically when both sides are numeric (a CSV's int `326` is
    the OOF file's float `326.0`), else exactly as text (labels such as "Yes" and "yes" differ)."""
    if len(x) != len(y):
        return False
    if pd.api.types.is_numeric_dtype(x) and pd.api.types.is_numeric_dtype(y) \
            and not pd.api.types.is_bool_dtype(x) and not pd.api.types.is_bool_dtype(y):
        u, v = x.to_numpy(dtype=float), y.to_numpy(dtype=float)
        return bool(np.array_equal(u, v, equal_nan=True))
    return x.astype(str).reset_index(drop=True).equals(y.astype(str).reset_index(drop=True))


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class PairedStats:
    """Fold-paired statistics of B - A (valid only when both runs used the same fold plan)."""

    fold_deltas: tuple[float, ...]
    mean: float
    std: float
    b_wins: int
    t_stat: float
    p_t: float  # paired t-test
    p_wilcoxon: float  # Wilcoxon signed-rank (exact for small k; floor 2/2^k)
    p_corrected: float  # Nadeau-Bengio corrected resampled t-test (training sets overlap)


@dataclass(frozen=True)
class Change:
    key: str
    a: str
    b: str


@dataclass(frozen=True)
class Agreement:
    pearson: float
    spearman: float
    label_agreement: float | None  # classification: share of rows with the same predicted label
    disagreements: pd.DataFrame  # the rows where A and B differ most


@dataclass(frozen=True)
class Comparison:
    a: RunFacts
    b: RunFacts
    same_folds: bool
    folds_note: str
    delta: float
    paired: PairedStats | None
    changes: tuple[Change, ...]
    provenance: tuple[Change, ...]  # data fingerprint, folds hash, git commit, code version (all, same or not)
    features_added: tuple[str, ...]
    features_removed: tuple[str, ...]
    slices: tuple[SliceDelta, ...]
    slice_note: str
    ranking_note: str
    agreement: Agreement | None
    rows_note: str
    efficiency: tuple[tuple[str, str, str, str], ...]  # (what, A, B, B/A)
    importance_shifts: tuple[tuple[str, float, float], ...] | None
    verdict: str

    def summary(self) -> dict:
        """summary.json's comparison keys (DESIGN.md: same_folds, delta, fold_deltas[], p_value, slices{})."""
        p = self.paired
        return {
            "metric": self.b.metric,
            "same_folds": self.same_folds,
            "delta": _num(self.delta),
            "fold_deltas": list(p.fold_deltas) if p else [],
            "p_value": _num(p.p_t) if p else None,
            "p_values": ({"t_test": _num(p.p_t), "wilcoxon": _num(p.p_wilcoxon), "corrected_t": _num(p.p_corrected)}
                         if p else None),
            "verdict": self.verdict,
            "cv_score": {"a": _num(self.a.cv_score), "b": _num(self.b.cv_score)},
            "slices": {s.name: {"query": s.query, "source": s.source, "rows": s.rows, "a": _num(s.score_a),
                                "b": _num(s.score_b), "delta": _num(s.delta), "ci": [_num(s.lo), _num(s.hi)],
                                "verdict": s.verdict} for s in self.slices},
            "oof_correlation": _num(self.agreement.pearson) if self.agreement else None,
            "changes": {c.key: {"a": c.a, "b": c.b} for c in self.changes},
        }


def _num(x: float | None) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


# --------------------------------------------------------------------------- the comparison


def compare_runs(a: RunFacts, b: RunFacts, rows: PairedRows | None, rows_note: str, spec_slices: Mapping[str, str],
                 n_boot: int = 200, seed: int = 0, auto: AutoSliceConfig = AutoSliceConfig()) -> Comparison:
    """Everything the write-up says, computed once (rendering only formats this)."""
    same_folds = bool(a.folds_hash and a.folds_hash == b.folds_hash and len(a.fold_scores) == len(b.fold_scores))
    if same_folds:
        folds_note = f"Same fold plan (hash {a.folds_hash}): fold k of A and fold k of B hold out the same rows."
    else:
        folds_note = (f"FOLDS DIFFER (A: {a.folds or '?'} hash {a.folds_hash or 'not recorded'}; B: {b.folds or '?'} "
                      f"hash {b.folds_hash or 'not recorded'}). Fold k of A and fold k of B hold out different rows, "
                      "so per-fold deltas and paired tests would mix the model change with the split change: "
                      "NO paired statistics are given. Re-run both with the same cv scheme, folds and seed.")
    paired = paired_stats(a.fold_scores, b.fold_scores, a.n_folds) if same_folds else None
    deltas: list[SliceDelta] = []
    slice_note = ranking_note = ""
    agreement = None
    if rows is not None:
        agreement = agreement_of(rows, a.task)
        if rows.frame is not None:
            disagreement = row_disagreement(rows.a, rows.b)
            columns = [c for c in (b.features or a.features) if c in rows.frame.columns] or \
                [c for c in rows.frame.columns if c != "fold"]
            if a.importances and b.importances:
                ranked = sorted(columns, key=lambda c: -(a.importances.get(c, 0) + b.importances.get(c, 0)))
                ranking_note = "Automatic slices bin the features with the largest recorded importance (A + B)."
            else:
                ranked = rank_features(rows.frame, disagreement, columns)
                ranking_note = ("Automatic slices bin the features along which A and B disagree most "
                                "(|Spearman| of the feature with |pred A - pred B|; importances are not recorded).")
            named = {ALL_ROWS: ("", "overall")} | {k: (q, "spec") for k, q in spec_slices.items()}
            named |= {k: (q, "auto") for k, q in auto_slices(rows.frame, ranked, auto).items() if k not in named}
            # different fold plans: slice deltas are shown but not tested (no paired statistics)
            deltas = slice_deltas(rows.frame, named, rows.y, rows.a, rows.b, b.metric, b.task,
                                  n_boot=n_boot if same_folds else 0, seed=seed, min_rows=auto.min_rows)
            if not same_folds:
                slice_note = "the folds differ, so slice deltas carry no intervals or verdicts"
        else:
            slice_note = rows.frame_note or "the training data could not be re-read; slices skipped"
    else:
        slice_note = rows_note
    return Comparison(
        a=a, b=b, same_folds=same_folds, folds_note=folds_note, delta=b.cv_score - a.cv_score, paired=paired,
        changes=diff_params(a.params, b.params), provenance=provenance(a, b),
        features_added=tuple(f for f in b.features if f not in a.features),
        features_removed=tuple(f for f in a.features if f not in b.features),
        slices=tuple(deltas), slice_note=slice_note, ranking_note=ranking_note, agreement=agreement,
        rows_note=rows_note, efficiency=efficiency(a, b), importance_shifts=importance_shifts(a, b),
        verdict=verdict(b.cv_score - a.cv_score, paired, same_folds),
    )


def paired_stats(a_scores: Sequence[float], b_scores: Sequence[float], n_folds: int | None = None) -> PairedStats:
    """Paired t, Wilcoxon and the corrected repeated k-fold t (Nadeau-Bengio variance) on split deltas
    (B - A): every repeat x fold pair; `n_folds` is k (default: one repeat, k = the number of deltas)."""
    a_arr, b_arr = np.asarray(a_scores, dtype=float), np.asarray(b_scores, dtype=float)
    d = b_arr - a_arr
    k = len(d)
    sd = float(d.std(ddof=1)) if k > 1 else float("nan")
    if k < 2 or sd == 0 or np.isnan(sd):
        t = float("inf") * np.sign(d.mean()) if k > 1 and d.mean() != 0 else float("nan")
        p_t = p_c = 0.0 if np.isinf(t) else float("nan")
    else:
        res = stats.ttest_rel(b_arr, a_arr)
        t, p_t = float(res.statistic), float(res.pvalue)
        # training sets of k-fold overlap, so fold scores are correlated; test/train ratio = 1/(k-1)
        p_c = corrected_t_test(d, n_folds or k)[1]
    try:
        p_w = float(stats.wilcoxon(d).pvalue) if np.any(d != 0) else float("nan")
    except ValueError:
        p_w = float("nan")
    return PairedStats(fold_deltas=tuple(float(x) for x in d), mean=float(d.mean()), std=sd,
                       b_wins=int((d > 0).sum()), t_stat=t, p_t=p_t, p_wilcoxon=p_w, p_corrected=p_c)


def verdict(delta: float, paired: PairedStats | None, same_folds: bool) -> str:
    if not same_folds or paired is None:
        return (f"B - A = {delta:+.5f}, but the folds differ: this delta is not paired and cannot be told "
                "apart from split noise.")
    if np.isnan(paired.p_t):
        return f"B - A = {delta:+.5f}; no fold-to-fold variation to test against (identical fold deltas)."
    side = "better" if delta > 0 else "worse"
    if paired.p_t < NOISE_LEVEL and paired.p_corrected < NOISE_LEVEL:
        return f"B is {side} than A beyond fold noise: {delta:+.5f} (paired t p={paired.p_t:.3g}, corrected p={paired.p_corrected:.3g})."
    if paired.p_t < NOISE_LEVEL:
        return (f"B looks {side} ({delta:+.5f}, paired t p={paired.p_t:.3g}) but not after correcting for "
                f"overlapping training folds (corrected p={paired.p_corrected:.3g}): treat as weak evidence.")
    return f"B - A = {delta:+.5f} is within fold noise (paired t p={paired.p_t:.3g}; fold-delta std {paired.std:.5f})."


def diff_params(a: Mapping[str, str], b: Mapping[str, str]) -> tuple[Change, ...]:
    """Keys whose values differ, or that only one run has ('-' for absent)."""
    keys = sorted(set(a) | set(b))
    return tuple(Change(k, str(a.get(k, "-")), str(b.get(k, "-"))) for k in keys if a.get(k) != b.get(k))


def provenance(a: RunFacts, b: RunFacts) -> tuple[Change, ...]:
    return tuple(Change(k, str(va or "not recorded"), str(vb or "not recorded")) for k, va, vb in (
        ("data fingerprint", a.data_fingerprint, b.data_fingerprint),
        ("folds", f"{a.folds} hash {a.folds_hash}", f"{b.folds} hash {b.folds_hash}"),
        ("git commit", a.git_commit, b.git_commit),
        ("code version", a.code_version, b.code_version),
        ("features", f"{len(a.features)} columns", f"{len(b.features)} columns"),
    ))


def row_disagreement(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """|A - B| per row (half the L1 distance of the class probabilities for multiclass)."""
    diff = np.abs(np.asarray(a, dtype=float) - np.asarray(b, dtype=float))
    return 0.5 * diff.sum(axis=1) if diff.ndim == 2 else diff


def agreement_of(rows: PairedRows, task: str, top: int = 10) -> Agreement:
    ok = held_out(rows.a) & held_out(rows.b)
    a, b, y = rows.a[ok], rows.b[ok], rows.y[ok]
    pearson = float(np.corrcoef(a.ravel(), b.ravel())[0, 1]) if a.size > 1 else float("nan")
    spearman = float(stats.spearmanr(a.ravel(), b.ravel()).statistic) if a.size > 1 else float("nan")
    label_agreement = None
    if task == "binary":
        label_agreement = float(((a > 0.5) == (b > 0.5)).mean())
    elif task == "multiclass":
        label_agreement = float((a.argmax(1) == b.argmax(1)).mean())
    dis = row_disagreement(a, b)
    order = np.argsort(-dis, kind="stable")[:top]
    if task == "multiclass":
        pa, pb = a[order, y[order]], b[order, y[order]]
        closer = np.where(pb > pa, "B", np.where(pa > pb, "A", "tie"))
        show_a, show_b = [f"{p:.3f}" for p in pa], [f"{p:.3f}" for p in pb]
    else:
        ea, eb = np.abs(a[order] - y[order]), np.abs(b[order] - y[order])
        closer = np.where(eb < ea, "B", np.where(ea < eb, "A", "tie"))
        show_a, show_b = [f"{p:.4g}" for p in a[order]], [f"{p:.4g}" for p in b[order]]
    table = pd.DataFrame({
        "row / id": rows.row_ids[ok][order], "fold": rows.folds_a[ok][order], "target": rows.labels[ok][order],
        ("A P(true class)" if task == "multiclass" else "A"): show_a,
        ("B P(true class)" if task == "multiclass" else "B"): show_b,
        "disagreement": [f"{x:.4f}" for x in dis[order]], "closer to truth": closer,
    })
    return Agreement(pearson=pearson, spearman=spearman, label_agreement=label_agreement, disagreements=table)


def efficiency(a: RunFacts, b: RunFacts) -> tuple[tuple[str, str, str, str], ...]:
    def per_1k(r: RunFacts) -> float | None:
        return sum(r.predict_seconds) / r.oof_rows * 1000 if r.predict_seconds and r.oof_rows else None

    rows = [
        ("fit seconds (all folds)", sum(a.fit_seconds) if a.fit_seconds else None,
         sum(b.fit_seconds) if b.fit_seconds else None, "{:.2f}"),
        ("fit seconds per fold (mean)", float(np.mean(a.fit_seconds)) if a.fit_seconds else None,
         float(np.mean(b.fit_seconds)) if b.fit_seconds else None, "{:.3f}"),
        ("predict seconds per 1k rows", per_1k(a), per_1k(b), "{:.4f}"),
        ("model size per fold (MB)", a.model_bytes / 1e6 if a.model_bytes and a.model_bytes > 0 else None,
         b.model_bytes / 1e6 if b.model_bytes and b.model_bytes > 0 else None, "{:.3f}"),
        ("peak memory (MB)", a.peak_memory_bytes / 1e6 if a.peak_memory_bytes and a.peak_memory_bytes > 0 else None,
         b.peak_memory_bytes / 1e6 if b.peak_memory_bytes and b.peak_memory_bytes > 0 else None, "{:.1f}"),
        ("run wall seconds", a.wall_seconds, b.wall_seconds, "{:.1f}"),
    ]
    out = []
    for what, va, vb, fmt in rows:
        ratio = f"{vb / va:.2f}x" if va and vb else "-"
        out.append((what, fmt.format(va) if va is not None else "not recorded",
                    fmt.format(vb) if vb is not None else "not recorded", ratio))
    return tuple(out)


def importance_shifts(a: RunFacts, b: RunFacts, top: int = 10) -> tuple[tuple[str, float, float], ...] | None:
    """Largest changes in each feature's share of total importance, or None when not recorded."""
    if not a.importances or not b.importances:
        return None
    ta, tb = sum(abs(v) for v in a.importances.values()) or 1.0, sum(abs(v) for v in b.importances.values()) or 1.0
    feats = set(a.importances) | set(b.importances)
    shares = {f: (abs(a.importances.get(f, 0.0)) / ta, abs(b.importances.get(f, 0.0)) / tb) for f in feats}
    order = sorted(feats, key=lambda f: -abs(shares[f][1] - shares[f][0]))[:top]
    return tuple((f, shares[f][0], shares[f][1]) for f in order)
