"""`foldwise ablate`: what each feature group is worth, as one Ray DAG with paired per-fold statistics.

The DAG reads top to bottom in `_run_dag`: the very nodes of `foldwise run` (prepare
once, plan folds once, one `train_fold` per variant x model x fold, all submitted at
once; pipeline.dag.submit_folds / collect_folds), where a variant is the baseline or the baseline
without one feature group. The baseline's folds have exactly `foldwise run`'s cache
keys, so a baseline an earlier run computed is read from the cache, not refitted.
Then, per variant, the spec's ensemble on OOF (pipeline.dag.ensemble_node); permutation importance
on the baseline's fitted fold models (re-predicts only); and the paired statistics of
tasks.ablation. Only the driver writes to MLflow: a parent run and one child per variant.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from foldwise.infra import storage
from foldwise.tasks.ablation import (
    IMPORTANCE_MEASURE,
    INTERVAL_METHOD,
    AblationReport,
    FoldImportance,
    GroupError,
    GroupImportance,
    GroupOutcome,
    PairedDelta,
    ablation_markdown,
    fit_time_share,
    paired_delta,
    permutation_importance_fold,
    plot_deltas,
    ranked,
    removal_candidates,
    resolve_groups,
    select_groups,
)
from foldwise.tasks.models import ModelConfig
from foldwise.tasks.report import write_json
from foldwise.tasks.train import FoldResult
from foldwise.workflows.engine.cache import Cache, key_of
from foldwise.workflows.engine.executor import LazyExecutor, Slot
from foldwise.workflows.engine.idle import on_idle_thread
from foldwise.workflows.errors import InputError, RunFailed, TaskFailed
from foldwise.workflows.pipeline.dag import assemble_oof, collect_folds, ensemble_node, node_keys, submit_folds
from foldwise.workflows.pipeline.failures import OpenRuns, describe_failure, marks_runs_failed
from foldwise.workflows.pipeline.inputs import Inputs
from foldwise.workflows.pipeline.plan import RunPlan, plan_run
from foldwise.workflows.pipeline.provenance import tasks_version
from foldwise.workflows.pipeline.runs import MLFLOW_SETUP_WAIT_S, FoldLog, RunContext, open_runs, set_up_when
from foldwise.workflows.pipeline.spec import WorkflowSpec, load_spec, to_yaml
from foldwise.workflows.tracking import tracker as tk

BASELINE = "baseline"
CLOSED_FORM_METRICS = ("roc_auc", "accuracy", "neg_log_loss", "neg_mean_squared_error", "neg_root_mean_squared_error",
                       "neg_mean_absolute_error", "r2")
BOOTSTRAP_DEFAULT = 1000  # resamples for the metrics scored in closed form
BOOTSTRAP_SLOW_DEFAULT = 200  # for the others (one sklearn call per resample and fold)
MIN_BOOTSTRAP = 100


@dataclass(frozen=True)
class Variant:
    name: str  # "baseline" or the dropped group's name
    dropped: str | None  # the group left out (None: the baseline)
    columns: tuple[str, ...]  # the feature columns left out


@dataclass(frozen=True)
class AblationPlan:
    """What an ablation fits: the baseline and one variant per group, each variant x model a DAG node."""

    variants: tuple[Variant, ...]  # the baseline first
    nodes: dict[str, tuple[Variant, ModelConfig]]  # node name -> (variant, model)
    n_boot: int  # bootstrap resamples of the intervals
    repeats: int  # shuffles per group for permutation importance


@dataclass(frozen=True)
class AblationResult:
    """What `foldwise ablate` produces: the summary.json data, where it went, and the report text."""

    summary: dict[str, Any]
    out_dir: Path | str  # a URI when the outputs go to one
    report: str

    @property
    def run_id(self) -> str:
        return self.summary["run_id"]


def run_ablation(spec: WorkflowSpec | str | Path, *, groups: Sequence[str] | None = None,
                 models: Sequence[str] | None = None, overrides: Sequence[str] = (), out: str | Path | None = None,
                 tracking_uri: str | None = None, address: str | None = None, executor: str = "ray",
                 progress: bool = False, no_cache: bool = False, cache_root: str | None = None,
                 n_boot: int | None = None, repeats: int = 3) -> AblationResult:
    """The Python API of `foldwise ablate` (same data as summary.json).

    `groups`/`models` restrict the ablation to those names; `n_boot` is the number of
    bootstrap resamples (default 1000, or 200 for metrics without a closed form);
    `repeats` the shuffles per group for permutation importance. Raises
    SpecError/InputError (nothing started, nothing logged) or RunFailed.
    """
    wall_start, started = time.perf_counter(), time.time()
    if not isinstance(spec, WorkflowSpec):
        spec = load_spec(spec, overrides)
    spec = _only_models(spec, models)
    plan = plan_run(spec, tracking_uri)
    inputs = plan.inputs
    if n_boot is not None and n_boot < MIN_BOOTSTRAP:
        raise InputError(f"--bootstrap: at least {MIN_BOOTSTRAP} resamples for a 95% interval (got {n_boot})")
    if repeats < 1:
        raise InputError(f"--repeats: at least 1 shuffle per group (got {repeats})")
    n_boot = n_boot or (BOOTSTRAP_DEFAULT if inputs.metric in CLOSED_FORM_METRICS else BOOTSTRAP_SLOW_DEFAULT)
    variants = plan_variants(spec, inputs, groups)
    base = list(plan.models)
    nodes = {node_name(v, m): (v, m) for v in variants for m in base}
    ablation = AblationPlan(variants=tuple(variants), nodes=nodes, n_boot=n_boot, repeats=repeats)
    fit_models = [replace(m, name=node) for node, (v, m) in nodes.items()]
    drops = {node: v.columns for node, (v, _) in nodes.items() if v.columns}
    keys = node_keys(spec, inputs, fit_models, plan.version, drops)
    phases = {"validate": time.perf_counter() - wall_start}
    ex = CountingExecutor(LazyExecutor(executor, address))
    cache = Cache(cache_root, enabled=not no_cache)
    try:
        sub = submit_folds(ex, cache, spec, inputs, fit_models, keys, drops)  # runs while MLflow is set up below
    except TaskFailed as e:
        ex.close()
        raise RunFailed(describe_failure(e, spec), None) from None

    def log_fold(runs: OpenRuns, r: FoldResult) -> None:
        v, m = nodes[r.model]
        runs.tracker.log_step(runs.children[v.name], f"{tk.M_FOLD_SCORE}.{m.name}", r.score, step=r.fold)

    # MLflow is set up on a CPU the folds leave free, as in `foldwise run` (see pipeline.runs.set_up_when)
    runs = on_idle_thread(lambda: _open_runs(plan, ablation, started), name="foldwise-mlflow-setup",
                          wait_at_most=MLFLOW_SETUP_WAIT_S)
    with marks_runs_failed(runs, ex, spec):
        log = FoldLog(runs, log_fold)
        dag = _run_dag(ex, cache, sub, plan, ablation, fit_models, keys, log, set_up_when(runs), progress)
        opened = runs.result()
        log.flush()
        ctx = RunContext(plan=plan, runs=opened, out=out, wall_start=wall_start, startup_seconds=ex.startup_seconds,
                         phases=phases | dag.phases)
        return _finish(ctx, ablation, dag, dict(ex.counts))


def _open_runs(plan: RunPlan, ablation: AblationPlan, started: float) -> OpenRuns:
    """A parent run and one child per variant (tagged with the group it drops)."""
    children = {v.name: {tk.TAG_ABLATION_VARIANT: v.name} | ({tk.TAG_ABLATION_DROPPED: v.dropped} if v.dropped else {})
                for v in ablation.variants}
    return open_runs(plan, "ablate", children, started=started,
                     params={"ablation.groups": ",".join(v.name for v in ablation.variants[1:]),
                             "ablation.bootstrap": ablation.n_boot, "ablation.repeats": ablation.repeats})


# --------------------------------------------------------------------------- the variants


def plan_variants(spec: WorkflowSpec, inputs: Inputs, only: Sequence[str] | None = None) -> list[Variant]:
    """The baseline, then one variant per feature group (InputError for a group the data cannot honour)."""
    d = inputs.data
    not_features = {c: what for c, what in ((d.target, "the target"), (d.id, "the id column"),
                                            (d.groups, "the groups column")) if c}
    not_features |= {c: "in features.drop" for c in d.drop}
    try:
        resolved = resolve_groups(spec.features.groups, inputs.summary.columns, not_features)
        chosen = select_groups(resolved, only)
    except GroupError as e:
        raise InputError(str(e)) from None
    return [Variant(BASELINE, None, ())] + [Variant(name, name, cols) for name, cols in chosen.items()]


def node_name(v: Variant, m: ModelConfig) -> str:
    """A fit's name in the DAG: the model's own name for the baseline (as in `foldwise run`), else
    'model -group' (model names hold no spaces, so these never collide)."""
    return m.name if v.dropped is None else f"{m.name} -{v.dropped}"


def _only_models(spec: WorkflowSpec, names: Sequence[str] | None) -> WorkflowSpec:
    if names is None:
        return spec
    known = [m.name for m in spec.models]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise InputError(f"--models: unknown model {unknown[0]!r} (models: {', '.join(known)})")
    if not names:
        raise InputError(f"--models: name at least one model (models: {', '.join(known)})")
    keep = [m for m in spec.models if m.name in names]
    ens_models = [n for n in (spec.ensemble.models or []) if n in names] or None
    return spec.model_copy(update={"models": keep, "ensemble": spec.ensemble.model_copy(update={"models": ens_models})})


class CountingExecutor:
    """The executor, counting the DAG nodes it runs by task function: the summary's honest `dag.nodes_run`."""

    def __init__(self, inner: LazyExecutor) -> None:
        self._inner = inner
        self.counts: Counter[str] = Counter()

    def submit(self, fn: Callable, *args: Any, **kwargs: Any) -> Any:
        self.counts[fn.__name__] += 1
        return self._inner.submit(fn, *args, **kwargs)

    def run(self, fn: Callable, *args: Any, name: str | None = None) -> Any:
        self.counts[fn.__name__] += 1
        return self._inner.run(fn, *args, name=name)

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._inner, attr)


# --------------------------------------------------------------------------- the DAG


@dataclass(frozen=True)
class AblationDag:
    data: Any  # PreparedData
    plan: Any  # FoldPlan
    folds: dict[str, list[FoldResult]]  # node name -> results in fold order
    headline: dict[str, tuple[np.ndarray, list[float]]]  # variant -> (ensemble OOF, fold scores)
    stats: dict[str, dict[str | None, PairedDelta]]  # variant -> {None: headline, model: per model}
    importance: dict[str, dict[str, GroupImportance] | None]  # model -> group -> importance
    cached: dict[str, list[bool]]  # node name -> per fold: from the cache
    phases: dict[str, float]


def _run_dag(ex: CountingExecutor, cache: Cache, sub: Any, run: RunPlan, ablation: AblationPlan,
             fit_models: list[ModelConfig], keys: Any, log_fold: Callable[[FoldResult], None],
             on_slots: Callable[[float, float], None], progress: bool) -> AblationDag:
    """Folds (cached or fitted) -> one ensemble per variant -> importance on the baseline -> paired statistics."""
    spec, inputs, base, variants = run.spec, run.inputs, list(run.models), list(ablation.variants)
    n_boot, repeats = ablation.n_boot, ablation.repeats
    data, plan, folds, phases = collect_folds(ex, cache, sub, fit_models, keys, log_fold, progress, on_slots)
    tick = time.perf_counter()
    ens_names = spec.ensemble.models or [m.name for m in base]
    by_name = {m.name: m for m in base}
    headline = {}
    for v in variants:
        ens, _ = ensemble_node(ex, cache, spec, inputs, keys, [node_name(v, by_name[n]) for n in ens_names], folds,
                           data, plan)
        headline[v.name] = (ens.oof, list(ens.fold_scores))
    phases["ensembles"] = time.perf_counter() - tick

    tick = time.perf_counter()
    groups = {v.name: v.columns for v in variants[1:]}
    importance = _importance(ex, cache, sub, data, plan, base, folds, keys, groups, inputs.metric, spec.cv.seed,
                             repeats)
    phases["permutation_importance"] = time.perf_counter() - tick

    tick = time.perf_counter()
    stats = _statistics(ex, spec, inputs, data, plan, base, variants, folds, headline, n_boot,
                        sole=ens_names[0] if len(ens_names) == 1 else None)
    phases["statistics"] = time.perf_counter() - tick
    cached = {node: [(node, k) in sub.cached for k in range(plan.n_folds)] for node in folds}
    return AblationDag(data=data, plan=plan, folds=folds, headline=headline, stats=stats, importance=importance,
                       cached=cached, phases=phases)


def _statistics(ex: CountingExecutor, spec: WorkflowSpec, inputs: Inputs, data: Any, plan: Any,
                base: list[ModelConfig], variants: list[Variant], folds: dict[str, list[FoldResult]],
                headline: dict[str, tuple[np.ndarray, list[float]]], n_boot: int,
                sole: str | None) -> dict[str, dict[str | None, PairedDelta]]:
    """paired_delta of every variant vs the baseline: its headline (key None) and each model.

    Tasks in parallel when the executor is up anyway, else here; with a one-model
    ensemble the headline is that model, computed once.
    """
    y = data.y
    oof = {node: assemble_oof(rs, len(y)) for node, rs in folds.items()}
    calls: dict[tuple[str, str | None], tuple[np.ndarray, np.ndarray, int]] = {}
    for i, v in enumerate(variants[1:], 1):
        seed = spec.cv.seed + i  # one resampling stream per variant, shared by its comparisons
        if sole is None:
            calls[(v.name, None)] = (headline[BASELINE][0], headline[v.name][0], seed)
        for m in base:
            calls[(v.name, m.name)] = (oof[m.name], oof[node_name(v, m)], seed)
    if ex.started:
        y_ref, plan_ref = ex.put(y), ex.put(plan)
        handles = {ex.submit(paired_delta, inputs.metric, data.task, y_ref, plan_ref, b, vv, n_boot, seed,
                             name=f"paired_delta[variant={key[0]}, model={key[1] or 'ensemble'}]"): key
                   for key, (b, vv, seed) in calls.items()}
        try:
            done = {handles[h]: r for h, r in ex.as_completed(list(handles))}
        except TaskFailed:
            ex.cancel(list(handles))
            raise
    else:
        done = {key: ex.run(paired_delta, inputs.metric, data.task, y, plan, b, vv, n_boot, seed, name="paired_delta")
                for key, (b, vv, seed) in calls.items()}
    stats: dict[str, dict[str | None, PairedDelta]] = {v.name: {} for v in variants[1:]}
    for (variant, model), result in done.items():
        stats[variant][model] = result
    if sole is not None:
        for per_model in stats.values():
            per_model[None] = per_model[sole]
    return stats


def _importance(ex: CountingExecutor, cache: Cache, sub: Any, data: Any, plan: Any, base: list[ModelConfig],
                folds: dict[str, list[FoldResult]], keys: Any, groups: dict[str, tuple[str, ...]], metric: str,
                seed: int, repeats: int) -> dict[str, dict[str, GroupImportance] | None]:
    """One permutation_importance_fold per baseline model x fold (cached by the fold's key): re-predicts, never refits."""
    from foldwise.tasks.ablation import summarise_importance

    def key(m: ModelConfig, k: int) -> str:
        return key_of("importance", keys.folds[(m.name, k)], sorted(groups.items()), metric, seed, repeats,
                      tasks_version())

    results: list[FoldImportance] = []
    todo: dict[Any, tuple[ModelConfig, int]] = {}
    data_ref = plan_ref = None
    for m in base:
        for k, r in enumerate(folds[m.name]):
            hit = cache.get("importance", key(m, k))
            if hit is not None:
                results.append(hit)
                continue
            if data_ref is None:
                data_ref = sub.prepared if sub.prepared is not None else ex.put(data)
                plan_ref = sub.plan_handle if sub.plan_handle is not None else ex.put(plan)
            handle = ex.submit(permutation_importance_fold, data_ref, plan_ref, r, groups, metric, seed, repeats,
                               slot=Slot(m.cpus, m.gpus), name=f"permutation_importance[model={m.name}, fold={k}]")
            todo[handle] = (m, k)
    try:
        for handle, fi in ex.as_completed(list(todo)):
            m, k = todo[handle]
            cache.put("importance", key(m, k), fi)
            results.append(fi)
    except TaskFailed:
        ex.cancel(list(todo))
        raise
    return summarise_importance(sorted(results, key=lambda f: (f.model, f.fold)))


# --------------------------------------------------------------------------- outputs


def _finish(ctx: RunContext, ablation: AblationPlan, dag: AblationDag, nodes_run: dict[str, int]) -> AblationResult:
    """The report, chart, summary.json and MLflow logs of a finished ablation; the runs end FINISHED."""
    tick = time.perf_counter()
    spec, inputs, base, variants = ctx.spec, ctx.plan.inputs, list(ctx.plan.models), list(ablation.variants)
    n_boot, repeats = ablation.n_boot, ablation.repeats
    tracker, parent = ctx.tracker, ctx.parent
    data, plan = dag.data, dag.plan
    target = ctx.out_target()
    out_dir = storage.staging_folder(target)  # `target` itself, or a local folder uploaded to it at the end
    model_names = [m.name for m in base]
    ens_names = spec.ensemble.models or model_names
    headline = (f"the {spec.ensemble.method} ensemble of {', '.join(ens_names)}" if len(ens_names) > 1
                else f"model {ens_names[0]}")
    by_name = {m.name: m for m in base}

    def fits(v: Variant) -> list[FoldResult]:
        return [r for m in base for r in dag.folds[node_name(v, m)]]

    def fold_fit_seconds(v: Variant) -> dict[str, list[float]]:
        return {m.name: [r.fit_seconds for r in dag.folds[node_name(v, m)]] for m in base}

    base_fit = sum(r.fit_seconds for r in fits(variants[0]))
    outcomes = []
    for v in variants[1:]:
        outcomes.append(GroupOutcome(
            group=v.name, columns=v.columns, cv_score=float(np.mean(dag.headline[v.name][1])),
            stats=dag.stats[v.name][None], model_stats={m: dag.stats[v.name][m] for m in model_names},
            fit_seconds=sum(r.fit_seconds for r in fits(v)),
            fit_time_share=fit_time_share(fold_fit_seconds(variants[0]), fold_fit_seconds(v)),
            importance={m: (imp[v.name] if (imp := dag.importance.get(m)) is not None else None)
                        for m in model_names}))
    base_scores = dag.headline[BASELINE][1]
    folds_text = (f"{plan.n_folds} {plan.scheme} folds (seed {plan.seed}, folds hash {plan.hash}, the same plan "
                  "as `foldwise run`)")
    notes = []
    unkept = [m for m, imp in dag.importance.items() if imp is None]
    if unkept:
        notes.append(f"No permutation importance for {', '.join(unkept)}: its adapter cannot be pickled, so no fitted "
                     "fold model was kept (and refitting is what ablation already does).")
    overlap = _overlaps(variants[1:])
    if overlap:
        notes.append(f"Groups share columns ({overlap}); each variant drops its whole group.")
    report = AblationReport(
        title=spec.name, metric=inputs.metric, headline=headline, baseline_score=float(np.mean(base_scores)),
        baseline_fold_scores=tuple(base_scores), n_features=len(data.columns), folds=folds_text,
        outcomes=tuple(outcomes), models=tuple(model_names), n_boot=n_boot, repeats=repeats, notes=tuple(notes))
    outputs = {"report": out_dir / "ablation.md", "chart": out_dir / "ablation.png", "summary": out_dir / "summary.json"}
    plot_deltas(report, outputs["chart"])
    text = ablation_markdown(report, chart=outputs["chart"].name)
    outputs["report"].write_text(text)
    (out_dir / "spec.yaml").write_text(to_yaml(spec))

    def model_block(v: Variant, m: str) -> dict[str, Any]:
        rs = dag.folds[node_name(v, by_name[m])]
        block = {"cv_score": float(np.mean([r.score for r in rs])), "fold_scores": [r.score for r in rs],
                 "fit_seconds": [r.fit_seconds for r in rs], "cached": dag.cached[node_name(v, by_name[m])]}
        if v.dropped is not None:
            s = dag.stats[v.name][m]
            block |= {"delta": s.delta, "delta_ci": _pair(s.ci), "verdict": s.verdict}
        return block

    summary: dict[str, Any] = {
        "command": "ablate",
        "experiment": spec.experiment,
        "run_id": parent,
        "tracking_uri": tracker.uri,
        "task": data.task,
        "metric": inputs.metric,
        "greater_is_better": True,
        "folds": {"scheme": plan.scheme, "n": plan.n_folds, "seed": plan.seed, "hash": plan.hash},
        "data_fingerprint": data.fingerprint,
        "models": model_names,
        "headline": headline,
        "interval_method": INTERVAL_METHOD,
        "bootstrap_resamples": n_boot,
        "baseline": {"cv_score": float(np.mean(base_scores)), "fold_scores": list(base_scores),
                     "fit_seconds": base_fit, "cached": all(c for m in model_names for c in dag.cached[m]),
                     "models": {m: model_block(variants[0], m) for m in model_names}},
        "variants": [],
        "removal_candidates": removal_candidates(outcomes),
        "permutation_importance": {
            "measure": IMPORTANCE_MEASURE, "repeats": repeats,
            "models": {m: ({g: {"mean": i.mean, "std": i.std} for g, i in imp.items()} if imp is not None else None)
                       for m, imp in dag.importance.items()}},
        "dag": {"nodes_run": dict(sorted(nodes_run.items())),
                "fits": {"total": sum(len(c) for c in dag.cached.values()),
                         "cached": sum(sum(c) for c in dag.cached.values())}},
        "wall_seconds": 0.0,
        "startup_seconds": ctx.startup_seconds,
        "phase_seconds": {},
        "outputs": {k: storage.relocate(v, out_dir, target) for k, v in outputs.items()},
    }
    by_group = {v.name: v for v in variants}
    for o in ranked(outcomes):
        v = by_group[o.group]
        summary["variants"].append({
            "dropped": o.group, "columns": list(o.columns), "cv_score": o.cv_score,
            "fold_scores": list(dag.headline[o.group][1]), "fold_deltas": list(o.stats.fold_deltas),
            "delta": o.stats.delta, "delta_ci": _pair(o.stats.ci), "delta_ci_t": _pair(o.stats.ci_t),
            "verdict": o.stats.verdict, "fit_seconds": o.fit_seconds, "fit_time_share": o.fit_time_share,
            "cached": all(c for m in model_names for c in dag.cached[node_name(v, by_name[m])]),
            "models": {m: model_block(v, m) for m in model_names},
            "permutation_importance": {m: ({"mean": i.mean, "std": i.std} if i is not None else None)
                                       for m, i in o.importance.items()},
        })
    _log(tracker, parent, ctx.runs.children, variants, summary, dag, plan, data)
    summary["phase_seconds"] = dict(ctx.phases) | {"outputs_and_tracking": time.perf_counter() - tick}
    summary["wall_seconds"] = time.perf_counter() - ctx.wall_start
    write_json(outputs["summary"], summary)
    tracker.log(parent, metrics={"wall_seconds": summary["wall_seconds"]})
    tracker.log_artifacts(parent, out_dir)
    storage.publish_folder(out_dir, target)
    return AblationResult(summary=summary, out_dir=out_dir if not storage.is_uri(target) else target, report=text)


def _log(tracker: tk.Tracker, parent: str, children: Mapping[str, str], variants: list[Variant],
         summary: dict[str, Any], dag: AblationDag, plan: Any, data: Any) -> None:
    """Per variant child: its headline fold scores, per-model scores and (variants) the delta and verdict."""
    provenance = {tk.TAG_FOLDS_HASH: plan.hash, tk.TAG_DATA: data.fingerprint}
    rows = {row["dropped"]: row for row in summary["variants"]}
    for v in variants:
        scores = dag.headline[v.name][1]
        block = summary["baseline"] if v.dropped is None else rows[v.name]
        metrics = {tk.M_CV_SCORE: float(np.mean(scores)),
                   tk.M_FIT_SECONDS: float(block["fit_seconds"])} | {
            f"{tk.M_CV_SCORE}.{m}": b["cv_score"] for m, b in block["models"].items()}
        tags = dict(provenance)
        params = {"ablation.n_columns_dropped": len(v.columns), "ablation.columns_dropped": ",".join(v.columns)}
        if v.dropped is not None:
            metrics |= {"delta": block["delta"], "fit_time_share": block["fit_time_share"]}
            if block["delta_ci"] is not None:
                metrics |= {"delta_lo": block["delta_ci"][0], "delta_hi": block["delta_ci"][1]}
            tags[tk.TAG_ABLATION_VERDICT] = block["verdict"]
        tracker.log(children[v.name], params=params, metrics=metrics, tags=tags, steps={tk.M_FOLD_SCORE: scores})
        tracker.finish(children[v.name], ok=True)
    verdicts = Counter(row["verdict"] for row in summary["variants"])
    tracker.log(parent, metrics={tk.M_CV_SCORE: summary["baseline"]["cv_score"]}
                | {f"n_{verdict}": float(verdicts.get(verdict, 0)) for verdict in ("helps", "hurts", "neutral")},
                tags=provenance, steps={tk.M_FOLD_SCORE: summary["baseline"]["fold_scores"]})


def _pair(ci: tuple[float, float] | None) -> list[float] | None:
    return None if ci is None else [ci[0], ci[1]]


def _overlaps(variants: list[Variant]) -> str:
    seen: dict[str, str] = {}
    shared = []
    for v in variants:
        for c in v.columns:
            if c in seen and seen[c] != v.name:
                shared.append(f"`{c}` in {seen[c]} and {v.name}")
            seen.setdefault(c, v.name)
    return "; ".join(shared[:5]) + (" ..." if len(shared) > 5 else "")
