"""Feature ablation: which feature groups earn their place, with paired per-fold evidence.

A variant refits every model on the same folds without one feature group; its fold
scores are paired with the baseline's (all features) fold by fold. Scores are in the
scorer's own sign, so greater is always better and delta = variant - baseline < 0 means
the group helps (dropping it costs score).

The 95% interval is a paired bootstrap over OOF rows: each held-out fold's rows are
resampled with replacement (within each class for classification, so every resample
keeps the fold's class mix), the baseline and the variant are scored on the *same*
resample, and the fold deltas are averaged exactly as `cv_score` averages fold scores;
the interval is the 2.5-97.5 percentiles. It measures how much of the delta is noise in
which rows were held out, given the fitted models. The t-interval over the split deltas
(every repeat x fold) is reported beside it: the corrected repeated k-fold t (Nadeau-Bengio
variance, since folds share training rows), with `p_corrected`; with few folds it is wide, and
it is not the verdict's interval.

Permutation importance is a different, weaker measure: it shuffles a group's columns
in the held-out rows of the already fitted baseline models (no refit), so it says how
much those models *rely* on the group, not what the group is worth once the model can
adapt to its absence (correlated groups stand in for each other under refit, not under
shuffling).

Plain functions, no Ray, no MLflow.
"""

from __future__ import annotations

import pickle
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path

import numpy as np

from foldwise.tasks.bootstrap import bootstrap_deltas, fold_bootstrap
from foldwise.tasks.data import PreparedData
from foldwise.tasks.features import fit_vocabulary, frame
from foldwise.tasks.fold_steps import fitted_fold_steps
from foldwise.tasks.folds import FoldPlan
from foldwise.tasks.metrics import score
from foldwise.tasks.repeats import corrected_t_test
from foldwise.tasks.train import FoldResult

VERDICTS = ("helps", "hurts", "neutral")
INTERVAL_METHOD = (
    "paired bootstrap over OOF rows: rows resampled with replacement within each held-out fold "
    "(and within each class for classification), baseline and variant scored on the same resample, "
    "fold deltas averaged like cv_score; 95% percentile interval"
)
IMPORTANCE_MEASURE = (
    "permutation importance: baseline score minus score with the group's columns shuffled together in the "
    "held-out rows of the fitted baseline fold models (no refit); measures the models' reliance on the group, "
    "a different and weaker measure than the ablation delta"
)


class GroupError(ValueError):
    """A feature group the data cannot honour (pattern matches nothing, unknown name): exit 2."""


# --------------------------------------------------------------------------- groups


def resolve_groups(groups: Mapping[str, Sequence[str]] | str, columns: Sequence[str],
                   not_features: Mapping[str, str] | None = None) -> dict[str, tuple[str, ...]]:
    """`features.groups` (name -> glob patterns, or "auto") -> name -> feature columns, in column order.

    `not_features` (column -> what it is, e.g. "the target") lets an error say why a
    pattern that names a real column still matches no *feature* column.
    """
    columns = list(columns)
    if groups == "auto":
        return {c: (c,) for c in columns}
    if isinstance(groups, str):
        raise GroupError(f"features.groups: {groups!r} is not valid (use 'auto' or a mapping name -> [glob patterns])")
    if not groups:
        raise GroupError("features.groups: the spec names no feature groups; add e.g. "
                         "features.groups: {mean: ['mean *']} (glob patterns over column names) or features.groups: auto")
    out: dict[str, tuple[str, ...]] = {}
    for name, patterns in groups.items():
        if not patterns:
            raise GroupError(f"features.groups.{name}: no patterns (give glob patterns over column names, e.g. ['{name}_*'])")
        chosen: set[str] = set()
        for pattern in patterns:
            hits = {c for c in columns if fnmatchcase(c, pattern)}
            if not hits:
                raise GroupError(f"features.groups.{name}: pattern {pattern!r} matches no feature column"
                                 f"{_why_not(pattern, not_features or {})} (feature columns: {_preview(columns)})")
            chosen |= hits
        if len(chosen) == len(columns):
            raise GroupError(f"features.groups.{name}: covers every feature column; dropping it leaves nothing to fit")
        out[str(name)] = tuple(c for c in columns if c in chosen)
    return out


def select_groups(groups: Mapping[str, tuple[str, ...]], names: Sequence[str] | None) -> dict[str, tuple[str, ...]]:
    """The groups `--groups` names (all when None), in the order given."""
    if names is None:
        return dict(groups)
    unknown = [n for n in names if n not in groups]
    if unknown:
        raise GroupError(f"--groups: unknown group {unknown[0]!r} (groups: {_preview(list(groups))})")
    return {n: groups[n] for n in dict.fromkeys(names)}


def _why_not(pattern: str, not_features: Mapping[str, str]) -> str:
    hit = next((c for c in not_features if fnmatchcase(c, pattern)), None)
    return f" ({hit!r} is {not_features[hit]}, not a feature)" if hit is not None else ""


def _preview(items: Sequence[str], n: int = 8) -> str:
    shown = ", ".join(map(str, items[:n]))
    return shown + (f", ... ({len(items)} in all)" if len(items) > n else "")


# --------------------------------------------------------------------------- paired statistics


@dataclass(frozen=True)
class PairedDelta:
    """Variant minus baseline on the same folds (greater is better: < 0 means the group helps)."""

    fold_deltas: tuple[float, ...]
    delta: float  # mean of fold_deltas = cv_score(variant) - cv_score(baseline)
    ci: tuple[float, float] | None  # paired bootstrap over OOF rows (None: too few valid resamples)
    ci_t: tuple[float, float] | None  # corrected repeated k-fold t interval, for reference (None with < 2 splits)
    verdict: str  # helps | hurts | neutral
    p_corrected: float = float("nan")  # corrected repeated k-fold t-test (Nadeau-Bengio variance), every repeat x fold


def fold_scores(metric: str, task: str, y: np.ndarray, plan: FoldPlan, oof: np.ndarray | Sequence[np.ndarray]) -> list[float]:
    """Per split (repeat x fold): the metric on its held-out rows (as `train_fold` and the ensemble
    score them). `oof`: one array, or with repeats one array per repeat."""
    per = per_repeat(oof, plan)
    return [score(metric, task, y[rows], per[s // plan.n_folds][rows])
            for s, rows in ((s, plan.valid_rows(s)) for s in range(plan.n_splits))]


def per_repeat(oof: np.ndarray | Sequence[np.ndarray], plan: FoldPlan) -> list[np.ndarray]:
    """OOF as one array per repeat: a plan of several repeats needs each repeat's own OOF (their
    mean is no repeat's prediction)."""
    if isinstance(oof, np.ndarray):
        if plan.repeats > 1:
            raise ValueError(f"the plan has {plan.repeats} repeats: pass one OOF array per repeat")
        return [oof]
    if len(oof) != plan.repeats:
        raise ValueError(f"{len(oof)} OOF arrays for a plan of {plan.repeats} repeats")
    return list(oof)


def verdict_of(ci: tuple[float, float] | None) -> str:
    """helps: the interval is below 0 (dropping costs score); hurts: above 0; else neutral."""
    if ci is None:
        return "neutral"
    lo, hi = ci
    if hi < 0:
        return "helps"
    if lo > 0:
        return "hurts"
    return "neutral"


def paired_delta(metric: str, task: str, y: np.ndarray, plan: FoldPlan, baseline: np.ndarray | Sequence[np.ndarray],
                 variant: np.ndarray | Sequence[np.ndarray], n_boot: int = 1000, seed: int = 0, level: float = 0.95,
                 boot: np.ndarray | None = None) -> PairedDelta:
    """Split deltas (every repeat x fold), their mean, the paired row bootstrap interval (see the
    module docstring), the corrected repeated k-fold t-test and the verdict (from the bootstrap).

    `boot`: the (n_boot,) bootstrap deltas when already drawn (`paired_deltas`, `fold_bootstrap`)."""
    base_scores = fold_scores(metric, task, y, plan, baseline)
    var_scores = fold_scores(metric, task, y, plan, variant)
    d = np.asarray(var_scores) - np.asarray(base_scores)
    tail = (1 - level) / 2
    ci_t = None
    _, p_corrected, interval = corrected_t_test(d, plan.n_folds, level)
    if len(d) > 1 and not np.isnan(interval[0]):
        ci_t = (float(interval[0]), float(interval[1]))
    ci = None
    if n_boot > 0:
        if boot is None:
            boot = bootstrap_deltas(metric, task, y, plan, baseline, variant, n_boot, seed)
        ok = boot[~np.isnan(boot)]
        if len(ok) >= max(10, n_boot // 2):
            lo, hi = np.percentile(ok, [100 * tail, 100 * (1 - tail)])
            ci = (float(lo), float(hi))
    return PairedDelta(fold_deltas=tuple(float(x) for x in d), delta=float(d.mean()), ci=ci, ci_t=ci_t,
                       verdict=verdict_of(ci), p_corrected=p_corrected)


def paired_deltas(metric: str, task: str, y: np.ndarray, plan: FoldPlan, baseline: np.ndarray | Sequence[np.ndarray],
                  variants: Mapping[str, np.ndarray | Sequence[np.ndarray]], n_boot: int = 1000,
                  seed: int = 0) -> dict[str, PairedDelta]:
    """`paired_delta` of each variant vs one baseline, all scored on the same resamples: each split's
    resamples are drawn and the baseline scored once, not once per variant."""
    base = per_repeat(baseline, plan)
    others = {n: per_repeat(v, plan) for n, v in variants.items()}
    total = {name: np.zeros(n_boot) for name in variants}
    for s in range(plan.n_splits):
        rows, r = plan.valid_rows(s), s // plan.n_folds
        drawn = fold_bootstrap(metric, task, y[rows], base[r][rows], {n: v[r][rows] for n, v in others.items()},
                               n_boot, (seed, s))
        for name, d in drawn.items():
            total[name] += d
    return {name: paired_delta(metric, task, y, plan, baseline, v, n_boot, seed, boot=total[name] / plan.n_splits)
            for name, v in variants.items()}


# --------------------------------------------------------------------------- permutation importance


@dataclass(frozen=True)
class FoldImportance:
    """Per group: the fold's score minus its score with the group shuffled, once per repeat."""

    model: str
    fold: int
    drops: dict[str, tuple[float, ...]] | None  # None: no fitted model was kept (unpicklable adapter)
    seconds: float = 0.0  # how long the computation took (for the phase breakdown; 0.0 in results cached before)


_IMPORTANCE_BLOCK_CELLS = 8_000_000  # shuffled copies of the held-out rows predicted together: at most 64 MB of X


def permutation_importance_fold(data: PreparedData, plan: FoldPlan, result: FoldResult,
                                groups: Mapping[str, tuple[str, ...]], metric: str, seed: int,
                                repeats: int = 3) -> FoldImportance:
    """Re-predict the held-out fold with each group's columns shuffled together (rows permuted as one block,
    so within-group relations survive); the fitted baseline model is reused, nothing is refitted.

    Every shuffle is drawn first from one Generator seeded by (seed, fold), in group x repeat order, and the
    shuffled copies are stacked and predicted in a few large blocks rather than one call each: a model
    predicts each row on its own, so the scores are those of one predict per shuffle, with the per-call
    cost (frame building, the adapter's checks) paid once per block."""
    if result.fitted is None:
        return FoldImportance(model=result.model, fold=result.fold, drops=None)
    began = time.perf_counter()
    model = pickle.loads(result.fitted)
    steps = fitted_fold_steps(result.fold_steps)  # fitted on the fold's training rows: the model reads their output
    rows = plan.valid_rows(result.fold)
    vocab = fit_vocabulary(data, plan.train_rows(result.fold))  # the encoding the model was fitted with
    X = data.X[rows]
    y = data.y[rows]
    n = len(rows)
    rng = np.random.default_rng([seed, result.fold])
    shuffles = [(name, [data.columns.index(c) for c in cols], rng.permutation(n))
                for name, cols in groups.items() for _ in range(repeats)]
    per_block = max(1, _IMPORTANCE_BLOCK_CELLS // max(1, X.size))
    losses: dict[str, list[float]] = {name: [] for name in groups}
    for start in range(0, len(shuffles), per_block):
        block = shuffles[start:start + per_block]
        stacked = np.tile(X, (len(block), 1))
        for i, (_, j, perm) in enumerate(block):
            stacked[i * n:(i + 1) * n, j] = X[perm][:, j]
        fold_frame = frame(data, stacked, vocab)
        pred = np.asarray(model.predict(steps.transform(fold_frame) if steps is not None else fold_frame))
        for i, (name, _, _) in enumerate(block):
            losses[name].append(result.score - score(metric, data.task, y, pred[i * n:(i + 1) * n]))
    return FoldImportance(model=result.model, fold=result.fold,
                          drops={name: tuple(float(v) for v in vs) for name, vs in losses.items()},
                          seconds=time.perf_counter() - began)


@dataclass(frozen=True)
class GroupImportance:
    mean: float  # over folds (each fold: the mean over repeats)
    std: float  # over folds


def summarise_importance(folds: Sequence[FoldImportance]) -> dict[str, dict[str, GroupImportance] | None]:
    """model -> group -> mean/std over folds; None for a model whose fitted folds were not kept."""
    by_model: dict[str, list[FoldImportance]] = {}
    for f in folds:
        by_model.setdefault(f.model, []).append(f)
    out: dict[str, dict[str, GroupImportance] | None] = {}
    for model, fs in by_model.items():
        if any(f.drops is None for f in fs):
            out[model] = None
            continue
        groups = list(fs[0].drops)
        per_fold = {g: np.array([np.mean(f.drops[g]) for f in fs]) for g in groups}
        out[model] = {g: GroupImportance(float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0)
                      for g, v in per_fold.items()}
    return out


# --------------------------------------------------------------------------- the report


@dataclass(frozen=True)
class GroupOutcome:
    """Everything the report says about one dropped group."""

    group: str
    columns: tuple[str, ...]
    cv_score: float
    stats: PairedDelta  # the headline (the spec's ensemble; with one model, that model)
    model_stats: dict[str, PairedDelta]
    fit_seconds: float  # the variant's fits, summed over models and folds
    fit_time_share: float  # see fit_time_share(); kept in summary.json, the report shows fit_seconds_saved
    fit_seconds_saved: float  # baseline fit seconds - the variant's (all models and folds): > 0 = dropping saves time
    importance: dict[str, GroupImportance | None] = field(default_factory=dict)  # model -> permutation importance

    @property
    def worth(self) -> float:
        """Score lost by dropping the group (baseline - variant): what the group is worth."""
        return -self.stats.delta


@dataclass(frozen=True)
class AblationReport:
    title: str
    metric: str
    headline: str  # what the headline score is ("ensemble (weights) of logreg, lgbm")
    baseline_score: float
    baseline_fold_scores: tuple[float, ...]
    n_features: int
    folds: str  # "5 stratified folds, seed 42, hash ..."
    outcomes: tuple[GroupOutcome, ...]
    models: tuple[str, ...]
    n_boot: int
    repeats: int
    notes: tuple[str, ...] = ()


def fit_time_share(baseline: Mapping[str, Sequence[float]], variant: Mapping[str, Sequence[float]]) -> float:
    """The share of the baseline's fit time a group costs: 1 - variant / baseline, where each side is the
    sum over models of the median fold fit seconds (a median, so one cold-started worker does not decide it)."""
    base = sum(float(np.median(v)) for v in baseline.values())
    var = sum(float(np.median(variant[m])) for m in baseline)
    return 1 - var / base if base > 0 else 0.0


def ranked(outcomes: Sequence[GroupOutcome]) -> list[GroupOutcome]:
    """Most valuable first (largest score lost when dropped)."""
    return sorted(outcomes, key=lambda o: -o.worth)


def removal_candidates(outcomes: Sequence[GroupOutcome]) -> list[str]:
    """Groups whose removal costs nothing measurable (neutral) or improves the score (hurts)."""
    return [o.group for o in ranked(outcomes) if o.stats.verdict in ("neutral", "hurts")]


def _ci(ci: tuple[float, float] | None) -> str:
    return "n/a" if ci is None else f"[{ci[0]:+.5f}, {ci[1]:+.5f}]"


def _cols(cols: Sequence[str], n: int = 4) -> str:
    shown = ", ".join(f"`{c}`" for c in cols[:n])
    return f"{len(cols)}: {shown}" + (", ..." if len(cols) > n else "")


def _mean_importance(o: GroupOutcome) -> float | None:
    known = [v.mean for v in o.importance.values() if v is not None]
    return float(np.mean(known)) if known else None


def ablation_markdown(r: AblationReport, chart: str | None = None) -> str:
    """`ablation.md`: groups sorted by worth, verdicts with intervals, removal candidates, the weaker measure apart."""
    rows = ranked(r.outcomes)
    k = len(r.baseline_fold_scores)
    lines = [
        f"# {r.title}: feature ablation", "",
        f"**Baseline** (all {r.n_features} feature columns): {r.metric} = {r.baseline_score:.5f}, "
        f"{r.headline}; mean of {r.folds}.", "",
        "Each variant refits every model on the same folds without one feature group. "
        f"**delta = variant - baseline** ({r.metric}, greater is better), so delta < 0 means the group helps. "
        f"**Interval**: {INTERVAL_METHOD} ({r.n_boot} resamples). "
        "**Verdict**: `helps` (interval below 0: dropping it costs score), `hurts` (interval above 0: the model is "
        "better without it), `neutral` (interval covers 0: no measurable effect).", "",
        "| rank | group | verdict | delta | 95% interval (bootstrap) | 95% t over folds | folds worse without | "
        "columns | fit s saved | permutation importance* |",
        "|---:|---|---|---:|---|---|---:|---|---:|---:|",
    ]
    for i, o in enumerate(rows, 1):
        worse = sum(d < 0 for d in o.stats.fold_deltas)
        imp = _mean_importance(o)
        lines.append(f"| {i} | {o.group} | **{o.stats.verdict}** | {o.stats.delta:+.5f} | {_ci(o.stats.ci)} | "
                     f"{_ci(o.stats.ci_t)} | {worse}/{k} | {_cols(o.columns)} | {o.fit_seconds_saved:+.2f} | "
                     f"{'n/a' if imp is None else f'{imp:+.5f}'} |")
    lines += ["", "*fit s saved*: the baseline's fit seconds minus the variant's, each summed over models and folds "
              "(positive: dropping the group saves that much fit time; negative: the variant took longer). Timings "
              "are noisy on a busy machine, so small values in either direction mean nothing; a cached baseline keeps "
              "the fit times of the run that computed it. "
              "*permutation importance*: a different, weaker measure, see below.", ""]
    if chart:
        lines += [f"![delta per group]({chart})", ""]
    neutral = [o for o in rows if o.stats.verdict == "neutral"]
    hurting = [o for o in rows if o.stats.verdict == "hurts"]
    lines += ["## Candidates to remove", ""]
    if neutral:
        n_cols = len({c for o in neutral for c in o.columns})
        lines.append(f"Neutral groups, no measurable effect on {r.metric}: "
                     f"{', '.join(f'**{o.group}**' for o in neutral)} ({n_cols} columns). Each is a dependency "
                     "and a risk without evidence of value: candidates to remove (groups were dropped one at a "
                     "time; drop several together only after checking them together).")
        if n_cols == r.n_features:
            lines.append("\nTogether they are every feature column: each group is redundant *given the others*, "
                         "not worthless. Remove one, then run the ablation again.")
    if hurting:
        lines.append(f"{'' if not neutral else chr(10)}Groups the models are better without: "
                     f"{', '.join(f'**{o.group}**' for o in hurting)}: remove them.")
    if not neutral and not hurting:
        lines.append("None: every group measurably helps.")
    lines.append("")
    if len(r.models) > 1:
        lines += ["## Per model", "", "delta and 95% bootstrap interval of each model on its own.", "",
                  "| group | " + " | ".join(r.models) + " |", "|---|" + "---|" * len(r.models)]
        for o in rows:
            cells = [f"{o.model_stats[m].delta:+.5f} {_ci(o.model_stats[m].ci)} {o.model_stats[m].verdict}"
                     for m in r.models]
            lines.append(f"| {o.group} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["## Permutation importance (a different, weaker measure)", "",
              f"{IMPORTANCE_MEASURE[0].upper()}{IMPORTANCE_MEASURE[1:]}; mean over folds of {r.repeats} shuffles "
              "(± std over folds). When two groups carry the same signal, shuffling one barely hurts the fitted "
              "model while ablation shows the truth either way; when the model leans on a group it could do "
              "without, shuffling hurts but ablation shows nothing lost. Decide on the ablation delta.", "",
              "| group | " + " | ".join(r.models) + " |", "|---|" + "---|" * len(r.models)]
    for o in rows:
        cells = ["n/a (fitted model not kept)" if o.importance.get(m) is None
                 else f"{o.importance[m].mean:+.5f} ± {o.importance[m].std:.5f}" for m in r.models]
        lines.append(f"| {o.group} | " + " | ".join(cells) + " |")
    lines += ["", "## Columns per group", ""]
    lines += [f"- **{o.group}** ({len(o.columns)}): {', '.join(f'`{c}`' for c in o.columns)}" for o in rows]
    if r.notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in r.notes]
    return "\n".join(lines) + "\n"


_COLOURS = {"helps": "#2e7d32", "hurts": "#c62828", "neutral": "#9e9e9e"}


def plot_deltas(r: AblationReport, path: Path) -> Path:
    """Horizontal bars of delta per group (most valuable on top) with 95% interval whiskers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = ranked(r.outcomes)[::-1]
    fig, ax = plt.subplots(figsize=(9, max(2.8, 0.45 * len(rows) + 1.8)))
    y = np.arange(len(rows))
    deltas = np.array([o.stats.delta for o in rows])
    lo = np.array([o.stats.delta - o.stats.ci[0] if o.stats.ci else 0.0 for o in rows])
    hi = np.array([o.stats.ci[1] - o.stats.delta if o.stats.ci else 0.0 for o in rows])
    ax.barh(y, deltas, color=[_COLOURS[o.stats.verdict] for o in rows], height=0.6,
            xerr=np.vstack([np.maximum(lo, 0), np.maximum(hi, 0)]), error_kw={"capsize": 3, "elinewidth": 1})
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_yticks(y, [f"{o.group} ({len(o.columns)})" for o in rows])
    ax.set_xlabel(f"{r.metric}: variant - baseline, group dropped\n(< 0: the group helps)")
    ax.set_title(f"{r.title}: feature ablation, 95% paired bootstrap intervals", fontsize=10)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in _COLOURS.values()]
    ax.legend(handles, list(_COLOURS), loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
