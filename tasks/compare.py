"""Model-change write-ups: what changed between two runs, and whether B is better beyond noise.

Pure functions over what the runs recorded (`RunFacts`, their OOF predictions and the
training table): paired fold statistics (refused when the fold plans differ, because an
unpaired fold delta mixes the change with the split), per-slice deltas with bootstrap
intervals, OOF agreement, efficiency and importance shifts, rendered as markdown and as
self-contained HTML, plus two plots. `workflows/compare.py` fetches the runs; nothing
here imports Ray or MLflow.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

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
    folds: str = ""  # "stratified x5, seed 42"
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
    paired = paired_stats(a.fold_scores, b.fold_scores) if same_folds else None
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


def paired_stats(a_scores: Sequence[float], b_scores: Sequence[float]) -> PairedStats:
    """Paired t, Wilcoxon and the Nadeau-Bengio corrected t on fold deltas (B - A)."""
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
        t_c = d.mean() / math.sqrt((1 / k + 1 / (k - 1)) * d.var(ddof=1))
        p_c = float(2 * stats.t.sf(abs(t_c), k - 1))
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


# --------------------------------------------------------------------------- rendering


@dataclass(frozen=True)
class Block:
    """One piece of a section: a paragraph, a callout, a bullet list, a table or an image."""

    kind: str  # para | alert | bullets | table | code | image
    text: str = ""
    items: tuple[str, ...] = ()
    header: tuple[str, ...] = ()
    rows: tuple[tuple[str, ...], ...] = ()
    image: str = ""  # file name next to the write-up


@dataclass(frozen=True)
class Section:
    title: str
    blocks: tuple[Block, ...]
    in_note: bool = True  # part of the MLflow run description (kept under the tag size limit)


def _f(x: float, digits: int = 5) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _fs(x: float, digits: int = 5) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:+.{digits}f}"


def _p(x: float) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{x:.3g}"


SLICE_MARK = {"better": "▲ B better", "worse": "▼ B worse", "within noise": "≈ within noise", "n/a": "-"}


def sections(c: Comparison, plots: Mapping[str, str] | None = None) -> list[Section]:
    """The write-up as data; `to_markdown` / `to_html` only format it."""
    plots = plots or {}
    a, b = c.a, c.b
    out: list[Section] = []
    out.append(Section(f"Compare: A = {a.name} ({a.run_id[:8]}) vs B = {b.name} ({b.run_id[:8]})", (
        Block("para", text=f"**Headline:** {c.verdict}"),
        Block("para", text=f"Metric `{b.metric}` ({b.task}), scorer's sign: greater is better. Delta = B - A."),
    )))
    out.append(Section("What A and B are", (Block("table", header=("", "A", "B"), rows=(
        ("run", f"{a.name} `{a.run_id}`", f"{b.name} `{b.run_id}`"),
        ("what is compared", _what(a), _what(b)),
        ("experiment", a.experiment, b.experiment),
        ("started / status", f"{a.started} {a.status}", f"{b.started} {b.status}"),
        ("cv score", _f(a.cv_score), _f(b.cv_score)),
        ("folds", a.folds, b.folds),
    )),)))
    change_blocks: list[Block] = []
    if c.changes:
        change_blocks.append(Block("table", header=("config key", "A", "B"),
                                   rows=tuple((ch.key, ch.a, ch.b) for ch in c.changes[:40])))
        if len(c.changes) > 40:
            change_blocks.append(Block("para", text=f"... and {len(c.changes) - 40} more changed keys."))
    else:
        change_blocks.append(Block("para", text="No difference in the logged effective config."))
    change_blocks.append(Block("table", header=("provenance", "A", "B", "same?"),
                               rows=tuple((p.key, p.a, p.b, "yes" if p.a == p.b else "**no**") for p in c.provenance)))
    if c.features_added or c.features_removed:
        change_blocks.append(Block("bullets", items=tuple(
            ([f"features added in B: {', '.join(c.features_added)}"] if c.features_added else [])
            + ([f"features removed in B: {', '.join(c.features_removed)}"] if c.features_removed else []))))
    out.append(Section("What changed", tuple(change_blocks)))

    fold_blocks: list[Block] = [Block("para", text=f"cv score A {_f(a.cv_score)}, B {_f(b.cv_score)}, "
                                                   f"**delta {_fs(c.delta)}**.")]
    if c.paired is None:
        fold_blocks.append(Block("alert", text=c.folds_note))
        fold_blocks.append(Block("table", header=("fold", "A (own split)", "B (own split)"), rows=tuple(
            (str(k), _f(x) if k < len(a.fold_scores) else "", _f(y) if k < len(b.fold_scores) else "")
            for k, x, y in _zip_long(a.fold_scores, b.fold_scores))))
    else:
        p = c.paired
        fold_blocks.append(Block("para", text=c.folds_note))
        fold_blocks.append(Block("table", header=("fold", "A", "B", "B - A"), rows=tuple(
            (str(k), _f(x), _f(y), _fs(d)) for k, (x, y, d) in enumerate(zip(a.fold_scores, b.fold_scores, p.fold_deltas))
        ) + (("mean", _f(a.cv_score), _f(b.cv_score), _fs(p.mean)),)))
        k = len(p.fold_deltas)
        fold_blocks.append(Block("table", header=("paired test", "p-value", "note"), rows=(
            ("paired t-test", _p(p.p_t), f"t = {p.t_stat:.3f}, {k - 1} df"),
            ("Wilcoxon signed-rank", _p(p.p_wilcoxon), f"with {k} folds the smallest possible p is {2 / 2 ** k:.3g}"),
            ("corrected t (Nadeau-Bengio)", _p(p.p_corrected), "accounts for overlapping training folds"),
        )))
        fold_blocks.append(Block("para", text=f"B wins {p.b_wins} of {k} folds; fold-delta std {_f(p.std)}."))
    if "fold_deltas" in plots:
        fold_blocks.append(Block("image", text="per-fold delta", image=plots["fold_deltas"]))
    out.append(Section("Headline delta, per fold", tuple(fold_blocks)))

    slice_blocks: list[Block] = []
    if c.slices:
        if not c.same_folds:
            slice_blocks.append(Block("alert", text="The folds differ: slice deltas below mix the change with the "
                                                    "split, so they get no intervals and no verdicts."))
        slice_blocks.append(Block("para", text=(
            "B - A on row subsets of the OOF predictions, with a 95% paired bootstrap interval over the slice's rows. "
            "▲/▼ = the interval excludes 0; '-' = no verdict (under 20 rows, or score undefined). With many slices, "
            "about 1 in 20 flags is expected by chance. " + c.ranking_note)))
        slice_blocks.append(Block("table", header=("slice", "source", "rows", "A", "B", "B - A", "95% CI", "verdict"),
                                  rows=tuple((s.name, s.source, str(s.rows), _f(s.score_a, 4), _f(s.score_b, 4),
                                              _fs(s.delta, 4), f"[{_fs(s.lo, 4)}, {_fs(s.hi, 4)}]",
                                              SLICE_MARK[s.verdict]) for s in c.slices)))
        queries = {s.name: s.query for s in c.slices if s.source == "auto"}
        if queries:
            slice_blocks.append(Block("para", text="The automatic slices as spec entries (paste under `slices:` to "
                                                   "have every run score them):"))
            slice_blocks.append(Block("code", text=yaml_slices(queries)))
    else:
        slice_blocks.append(Block("para", text=f"No slice grid: {c.slice_note}."))
    if "slice_grid" in plots:
        slice_blocks.append(Block("image", text="slice grid", image=plots["slice_grid"]))
    out.append(Section("Slices", tuple(slice_blocks)))

    out.append(Section("Efficiency", (Block("table", header=("", "A", "B", "B / A"), rows=c.efficiency),
                                      Block("para", text="Predict time is the held-out folds' predict calls, per "
                                                         "1,000 OOF rows. Peak memory is the most resident memory a "
                                                         "fold added over its worker's start, for the largest fold "
                                                         "(`peak_memory_bytes`); 'not recorded' when a run has "
                                                         "none.")), in_note=False))

    agree_blocks: list[Block] = []
    if c.agreement is not None:
        ag = c.agreement
        txt = f"OOF prediction correlation: Pearson {_f(ag.pearson, 4)}, Spearman {_f(ag.spearman, 4)}"
        if ag.label_agreement is not None:
            txt += f"; predicted labels agree on {ag.label_agreement:.1%} of rows"
        agree_blocks.append(Block("para", text=txt + "."))
        t = ag.disagreements
        agree_blocks.append(Block("table", header=tuple(map(str, t.columns)),
                                  rows=tuple(tuple(str(v) for v in r) for r in t.itertuples(index=False))))
    else:
        agree_blocks.append(Block("para", text=f"Not available: {c.rows_note}."))
    out.append(Section("Where A and B disagree", tuple(agree_blocks), in_note=False))

    if c.importance_shifts:
        imp = Block("table", header=("feature", "share A", "share B", "shift"),
                    rows=tuple((f, f"{x:.3f}", f"{y:.3f}", f"{y - x:+.3f}") for f, x, y in c.importance_shifts))
    else:
        imp = Block("para", text="Not recorded: these runs carry no feature importances, and permutation importance "
                                 "needs the fitted fold models, which runs do not keep.")
    out.append(Section("Feature-importance shifts", (imp,), in_note=False))
    out.append(Section("Conclusion", conclusion_blocks(c)))
    return out


def conclusion_blocks(c: Comparison) -> tuple[Block, ...]:
    worse = [s.name for s in c.slices if s.verdict == "worse"]
    better = [s.name for s in c.slices if s.verdict == "better"]
    facts = [c.verdict]
    if better:
        facts.append(f"B is better beyond row noise on: {', '.join(better)}.")
    if worse:
        facts.append(f"B is worse beyond row noise on: {', '.join(worse)}.")
    if c.slices and not better and not worse:
        facts.append("No slice moves beyond row noise.")
    slower = [e for e in c.efficiency if e[3].endswith("x") and float(e[3][:-1]) > 1.5 and "seconds" in e[0]]
    if slower:
        facts.append("B is notably slower: " + "; ".join(f"{e[0]} {e[3]}" for e in slower) + ".")
    prompts = [
        "Is the delta worth it at this fold noise? If not, prefer the simpler / cheaper run.",
        "Do any slices where B is worse matter for the product or the leaderboard's test distribution?",
        "Is the efficiency cost acceptable at inference scale?",
        "Did anything besides the intended change move (data fingerprint, git commit, features)?",
        "Decision: adopt B / keep A / need more evidence (more folds, repeated CV, another seed). Record it here.",
    ]
    if not c.same_folds:
        prompts.insert(0, "The folds differ: re-run both runs with the same cv scheme, folds and seed before deciding.")
    return (Block("bullets", items=tuple(facts)), Block("para", text="**For the human decision:**"),
            Block("bullets", items=tuple(f"[ ] {p}" for p in prompts)))


def yaml_slices(queries: Mapping[str, str]) -> str:
    import yaml

    return yaml.safe_dump({"slices": dict(queries)}, sort_keys=False, allow_unicode=True, width=1000).rstrip()


def _what(r: RunFacts) -> str:
    if r.kind == "run":
        return f"`foldwise run` ensemble of {', '.join(r.models) or '?'}"
    return f"model `{r.prediction}` (child run)"


def _zip_long(x: Sequence[float], y: Sequence[float]) -> list[tuple[int, float, float]]:
    n = max(len(x), len(y))
    return [(k, x[k] if k < len(x) else float("nan"), y[k] if k < len(y) else float("nan")) for k in range(n)]


def _cell_md(s: str) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def to_markdown(secs: Sequence[Section], note: bool = False) -> str:
    """GitHub-flavoured markdown; `note=True` keeps only the sections meant for the run description
    and drops images (relative files do not resolve there)."""
    lines: list[str] = []
    for i, sec in enumerate(secs):
        if note and not sec.in_note:
            continue
        lines.append(f"{'#' if i == 0 else '##'} {sec.title}\n")
        for blk in sec.blocks:
            if blk.kind == "para":
                lines.append(blk.text + "\n")
            elif blk.kind == "alert":
                lines.append(f"> **WARNING:** {blk.text}\n")
            elif blk.kind == "code":
                lines.append(f"```yaml\n{blk.text}\n```\n")
            elif blk.kind == "bullets":
                lines.extend([f"- {it}" for it in blk.items] + [""])
            elif blk.kind == "table":
                lines.append("| " + " | ".join(_cell_md(h) for h in blk.header) + " |")
                lines.append("|" + "|".join("---" for _ in blk.header) + "|")
                lines.extend("| " + " | ".join(_cell_md(v) for v in r) + " |" for r in blk.rows)
                lines.append("")
            elif blk.kind == "image" and not note:
                lines.append(f"![{blk.text}]({blk.image})\n")
    return "\n".join(lines)


def note_markdown(secs: Sequence[Section], artifact_hint: str, limit: int = 7900) -> str:
    """The MLflow run description: the note sections, cut to fit the tag value limit."""
    tail = f"\n\nFull write-up with plots: artifact `{artifact_hint}`."
    text = to_markdown(secs, note=True)
    if len(text) + len(tail) > limit:
        keep = limit - len(tail) - 40
        text = text[:keep].rsplit("\n", 1)[0] + "\n\n*(cut to fit the run description)*"
    return text + tail


_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ccc;padding:3px 8px;font-size:14px}
th{background:#f3f3f3}.alert{background:#fde8e8;border-left:6px solid #c0392b;padding:.6em 1em;font-weight:600}
code{background:#f3f3f3;padding:0 3px}img{max-width:100%}"""


def _inline_html(text: str) -> str:
    """**bold** and `code` only: the subset the write-up uses."""
    out = html.escape(str(text))
    parts = out.split("`")
    out = "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))
    parts = out.split("**")
    return "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(parts))


def to_html(secs: Sequence[Section], folder: Path | None = None) -> str:
    """One self-contained page (images embedded as data URIs when `folder` holds them)."""
    body: list[str] = []
    for i, sec in enumerate(secs):
        tag = "h1" if i == 0 else "h2"
        body.append(f"<{tag}>{html.escape(sec.title)}</{tag}>")
        for blk in sec.blocks:
            if blk.kind == "para":
                body.append(f"<p>{_inline_html(blk.text)}</p>")
            elif blk.kind == "alert":
                body.append(f"<div class='alert'>{_inline_html(blk.text)}</div>")
            elif blk.kind == "code":
                body.append(f"<pre><code>{html.escape(blk.text)}</code></pre>")
            elif blk.kind == "bullets":
                body.append("<ul>" + "".join(f"<li>{_inline_html(it)}</li>" for it in blk.items) + "</ul>")
            elif blk.kind == "table":
                head = "".join(f"<th>{_inline_html(h)}</th>" for h in blk.header)
                rows = "".join("<tr>" + "".join(f"<td>{_inline_html(v)}</td>" for v in r) + "</tr>" for r in blk.rows)
                body.append(f"<table><tr>{head}</tr>{rows}</table>")
            elif blk.kind == "image":
                src = blk.image
                if folder is not None and (folder / blk.image).exists():
                    src = "data:image/png;base64," + base64.b64encode((folder / blk.image).read_bytes()).decode()
                body.append(f"<img alt='{html.escape(blk.text)}' src='{src}'>")
    title = html.escape(secs[0].title if secs else "compare")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title><style>{_CSS}</style></head>"
            f"<body>{''.join(body)}</body></html>\n")


# --------------------------------------------------------------------------- plots


def plot_fold_deltas(c: Comparison, path: Path) -> Path:
    """Bars of B - A per fold (paired), or both runs' own fold scores side by side when folds differ."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.2), dpi=110)
    ax = fig.subplots()
    if c.paired is not None:
        d = np.asarray(c.paired.fold_deltas)
        ax.bar(range(len(d)), d, color=["#2e7d32" if x > 0 else "#c62828" for x in d])
        ax.axhline(0, color="black", lw=0.8)
        ax.axhline(d.mean(), color="#1565c0", ls="--", lw=1, label=f"mean {d.mean():+.4f}")
        ax.set_title(f"B - A per fold ({c.b.metric}); paired t p={_p(c.paired.p_t)}", fontsize=10)
        ax.legend(fontsize=8)
    else:
        ka, kb = len(c.a.fold_scores), len(c.b.fold_scores)
        ax.bar(np.arange(ka) - 0.2, c.a.fold_scores, width=0.4, label="A (own split)", color="#90a4ae")
        ax.bar(np.arange(kb) + 0.2, c.b.fold_scores, width=0.4, label="B (own split)", color="#5c6bc0")
        lo = min(min(c.a.fold_scores, default=0), min(c.b.fold_scores, default=0))
        hi = max(max(c.a.fold_scores, default=1), max(c.b.fold_scores, default=1))
        pad = (hi - lo) * 0.5 + 1e-9
        ax.set_ylim(lo - pad, hi + pad)
        ax.set_title("FOLDS DIFFER: fold scores are not paired", fontsize=10, color="#c62828")
        ax.legend(fontsize=8)
    ax.set_xticks(range(max(len(c.a.fold_scores), len(c.b.fold_scores))))
    ax.set_xlabel("fold")
    fig.tight_layout()
    fig.savefig(path)
    return path


def plot_slice_grid(c: Comparison, path: Path) -> Path | None:
    """Heatmap: each slice's A and B scores (left) and B - A coloured by sign, marked ▲/▼ beyond noise (right)."""
    if not c.slices:
        return None
    from matplotlib.figure import Figure

    n = len(c.slices)
    fig = Figure(figsize=(8, 0.32 * n + 1.4), dpi=110)
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [2, 1]})
    scores = np.array([[s.score_a, s.score_b] for s in c.slices], dtype=float)
    left.imshow(np.ma.masked_invalid(scores), aspect="auto", cmap="viridis")
    lo, hi = np.nanmin(scores) if np.isfinite(scores).any() else 0, np.nanmax(scores) if np.isfinite(scores).any() else 1
    left.set_xticks([0, 1], ["A", "B"])
    left.set_yticks(range(n), [f"{s.name} ({s.rows})" for s in c.slices], fontsize=7)
    for i in range(n):
        for j in range(2):
            if not np.isnan(scores[i, j]):
                bright = (scores[i, j] - lo) / ((hi - lo) or 1) > 0.6  # viridis turns yellow at the top
                left.text(j, i, f"{scores[i, j]:.3f}", ha="center", va="center", fontsize=7,
                          color="black" if bright else "white")
    deltas = np.array([[s.delta] for s in c.slices], dtype=float)
    span = np.nanmax(np.abs(deltas)) if np.isfinite(deltas).any() else 1.0
    right.imshow(np.ma.masked_invalid(deltas), aspect="auto", cmap="RdYlGn", vmin=-span or -1, vmax=span or 1)
    right.set_xticks([0], ["B - A"])
    right.set_yticks([])
    marks = {"better": "▲", "worse": "▼", "within noise": "≈", "n/a": ""}
    for i, s in enumerate(c.slices):
        right.text(0, i, f"{marks[s.verdict]} {_fs(s.delta, 4)}", ha="center", va="center", fontsize=7)
    fig.suptitle(f"{c.b.metric} by slice (▲/▼: 95% bootstrap CI excludes 0)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    return path
