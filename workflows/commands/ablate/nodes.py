"""The ablation's DAG after the folds: one ensemble per variant, permutation importance on the
baseline's fitted folds, and the paired statistics of every variant against the baseline."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from foldwise.tasks.ablation import (
    FoldImportance,
    GroupImportance,
    PairedDelta,
    paired_delta,
    permutation_importance_fold,
)
from foldwise.tasks.bootstrap import fold_bootstrap, fold_bootstrap_of_fits
from foldwise.tasks.models import ModelConfig
from foldwise.tasks.repeats import oof_by_repeat
from foldwise.tasks.train import FoldResult
from foldwise.workflows.commands.ablate.plan import BASELINE, AblationPlan, Variant, node_name
from foldwise.workflows.engine.cache import Cache, key_of
from foldwise.workflows.engine.executor import Slot
from foldwise.workflows.engine.lazy import LazyExecutor
from foldwise.workflows.errors import TaskFailed
from foldwise.workflows.pipeline.dag import Submitted, collect_folds, ensemble_node
from foldwise.workflows.pipeline.inputs import Inputs
from foldwise.workflows.pipeline.plan import RunPlan
from foldwise.workflows.pipeline.provenance import tasks_version
from foldwise.workflows.pipeline.spec import WorkflowSpec


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


@dataclass(frozen=True)
class AblationDag:
    data: Any  # PreparedData
    plan: Any  # FoldPlan
    folds: dict[str, list[FoldResult]]  # node name -> results in fold order
    headline: dict[str, tuple[list[np.ndarray], list[float]]]  # variant -> (ensemble OOF per repeat, split scores)
    stats: dict[str, dict[str | None, PairedDelta]]  # variant -> {None: headline, model: per model}
    importance: dict[str, dict[str, GroupImportance] | None]  # model -> group -> importance
    cached: dict[str, list[bool]]  # node name -> per fold: from the cache
    phases: dict[str, float]
    importance_task_seconds: float = 0.0  # the importance tasks' own seconds (they overlap the fits)


def run_dag(ex: CountingExecutor, cache: Cache, sub: Any, run: RunPlan, ablation: AblationPlan,
             fit_models: list[ModelConfig], keys: Any, log_fold: Callable[[FoldResult], None],
             on_slots: Callable[[float, float], None], progress: bool) -> AblationDag:
    """Folds (cached or fitted) -> one ensemble per variant -> importance on the baseline -> paired statistics."""
    spec, inputs, base, variants = run.spec, run.inputs, list(run.models), list(ablation.variants)
    n_boot, repeats = ablation.n_boot, ablation.repeats
    groups = {v.name: v.columns for v in variants[1:]}
    # importance goes in with the fits: each task waits on its baseline fold's handle only, so it runs in
    # a slot the fits leave (between them, or in their last round) instead of after every fit
    pending = submit_importance(ex, cache, sub, base, keys, groups, inputs.metric, spec.cv.seed, repeats)
    # so does each model's bootstrap of a split, on that split's fit handles (the executor is up anyway)
    early = submit_fold_bootstraps(ex, sub, base, variants, inputs.metric, n_boot, spec.cv.seed) if ex.started else {}
    try:
        data, plan, folds, phases = collect_folds(ex, cache, sub, fit_models, keys, log_fold, progress, on_slots)
    except TaskFailed:
        ex.cancel(list(early.values()))
        pending.abandon(ex, cache)
        raise
    tick = time.perf_counter()
    ens_names = spec.ensemble.models or [m.name for m in base]
    by_name = {m.name: m for m in base}
    headline = {}
    for v in variants:
        ens, _ = ensemble_node(ex, cache, spec, inputs, keys, [node_name(v, by_name[n]) for n in ens_names], folds,
                           data, plan, tuple(v.columns))
        headline[v.name] = (list(ens.repeat_oof) or [ens.oof], list(ens.fold_scores))  # OOF per repeat
    phases["ensembles"] = time.perf_counter() - tick

    tick = time.perf_counter()
    try:
        stats = paired_statistics(ex, spec, inputs, data, plan, base, variants, folds, headline, n_boot,
                                  sole=ens_names[0] if len(ens_names) == 1 else None, early=early)
    except TaskFailed:
        ex.cancel(list(early.values()))
        pending.abandon(ex, cache)
        raise
    phases["statistics"] = time.perf_counter() - tick
    waited = time.perf_counter()
    importance = pending.gather(ex, cache)
    phases["importance_after_statistics"] = time.perf_counter() - waited  # what importance still added at the end
    phases["statistics_and_importance"] = time.perf_counter() - tick
    cached = {node: [(node, k) in sub.cached for k in range(plan.n_splits)] for node in folds}
    return AblationDag(data=data, plan=plan, folds=folds, headline=headline, stats=stats, importance=importance,
                       cached=cached, phases=phases, importance_task_seconds=pending.task_seconds)


def paired_statistics(ex: CountingExecutor, spec: WorkflowSpec, inputs: Inputs, data: Any, plan: Any,
                base: list[ModelConfig], variants: list[Variant], folds: dict[str, list[FoldResult]],
                headline: dict[str, tuple[list[np.ndarray], list[float]]], n_boot: int,
                sole: str | None, early: dict[tuple[str, int], Any] | None = None) -> dict[str, dict[str | None, PairedDelta]]:
    """paired_delta of every variant vs the baseline: its headline (key None) and each model.

    One fold_bootstrap per comparison set (the headline, each model) x fold: it draws that fold's
    resamples and scores the baseline once for every variant, so all variants are judged on the
    same resamples. Tasks in parallel when the executor is up anyway, else here; with a
    one-model ensemble the headline is that model, computed once. `early`: (model, split) ->
    the handle of that split's bootstrap, submitted with the fits (`submit_fold_bootstraps`).
    """
    early = early or {}
    y = data.y
    oof = {node: oof_by_repeat(rs, plan, len(y)) for node, rs in folds.items()}  # one array per repeat
    sets: dict[str | None, tuple[list[np.ndarray], dict[str, list[np.ndarray]]]] = {}
    if sole is None:
        sets[None] = (headline[BASELINE][0], {v.name: headline[v.name][0] for v in variants[1:]})
    for m in base:
        sets[m.name] = (oof[m.name], {v.name: oof[node_name(v, m)] for v in variants[1:]})
    seed = spec.cv.seed
    calls = {}
    for key, (b, vs) in sets.items():
        for k in range(plan.n_splits):  # every repeat x fold
            if (key, k) in early:
                continue
            rows, r = plan.valid_rows(k), k // plan.n_folds
            calls[(key, k)] = (inputs.metric, data.task, y[rows], b[r][rows], {n: v[r][rows] for n, v in vs.items()},
                               n_boot, (seed, k))
    if ex.started:
        handles = {ex.submit(fold_bootstrap, *args, name=f"fold_bootstrap[model={key or 'ensemble'}, fold={k}]"):
                   (key, k) for (key, k), args in calls.items()} | {h: ck for ck, h in early.items()}
        try:
            drawn = {handles[h]: r for h, r in ex.as_completed(list(handles))}
        except TaskFailed:
            ex.cancel(list(handles))
            raise
    else:
        drawn = {ck: ex.run(fold_bootstrap, *args, name="fold_bootstrap") for ck, args in calls.items()}
    stats: dict[str, dict[str | None, PairedDelta]] = {v.name: {} for v in variants[1:]}
    for key, (b, vs) in sets.items():
        for name, v in vs.items():
            boot = sum(drawn[(key, k)][name] for k in range(plan.n_splits)) / plan.n_splits
            stats[name][key] = paired_delta(inputs.metric, data.task, y, plan, b, v, n_boot, seed, boot=boot)
    if sole is not None:
        for per_model in stats.values():
            per_model[None] = per_model[sole]
    return stats


def shared_refs(ex: CountingExecutor, sub: Submitted) -> tuple[Any, Any]:
    """Handles of the prepared data and the fold plan for the tasks after the fits (each stored once)."""
    if sub.prepared is None:
        sub.prepared = ex.put(sub.data)
    if sub.plan_handle is None:
        sub.plan_handle = ex.put(sub.plan)
    return sub.prepared, sub.plan_handle


def submit_fold_bootstraps(ex: CountingExecutor, sub: Submitted, base: list[ModelConfig], variants: list[Variant],
                           metric: str, n_boot: int, seed: int) -> dict[tuple[str, int], Any]:
    """(model, split) -> the handle of one fold_bootstrap_of_fits: each model's baseline and variants on that
    split, taking the fits' handles (or cached results), so it runs once that split's fits are done."""
    fitting = {mk: handle for handle, mk in sub.fits.items()}

    def fold(name: str, k: int) -> Any:  # a cached result goes in by value: without the pickled model it never reads
        return fitting[(name, k)] if (name, k) in fitting else replace(sub.cached[(name, k)], fitted=None, training=None)

    data_ref, plan_ref = shared_refs(ex, sub)
    names = tuple(v.name for v in variants[1:])
    return {(m.name, k): ex.submit(fold_bootstrap_of_fits, data_ref, plan_ref, k, metric, n_boot, seed, names,
                                   fold(m.name, k), *(fold(node_name(v, m), k) for v in variants[1:]),
                                   name=f"fold_bootstrap[model={m.name}, fold={k}]")
            for k in range(sub.plan.n_splits) for m in base}


@dataclass
class PendingImportance:
    """permutation_importance_fold results: from the cache, or tasks still running."""

    results: list[FoldImportance]
    todo: dict[Any, str]  # handle -> cache key
    task_seconds: float = 0.0  # summed time the tasks gathered here ran (cached results: 0)

    def gather(self, ex: CountingExecutor, cache: Cache) -> dict[str, dict[str, GroupImportance] | None]:
        from foldwise.tasks.ablation import summarise_importance

        try:
            for handle, fi in ex.as_completed(list(self.todo)):
                self._keep(cache, handle, fi)
        except TaskFailed:
            self.abandon(ex, cache)
            raise
        return summarise_importance(sorted(self.results, key=lambda f: (f.model, f.fold)))

    def _keep(self, cache: Cache, handle: Any, fi: FoldImportance) -> None:
        cache.put("importance", self.todo.pop(handle), fi)
        self.results.append(fi)
        self.task_seconds += fi.seconds

    def abandon(self, ex: CountingExecutor, cache: Cache) -> None:
        """The command fails: cache the tasks that finished, cancel the rest."""
        for handle, fi in ex.finished(list(self.todo)):
            self._keep(cache, handle, fi)
        ex.cancel(list(self.todo))


def submit_importance(ex: CountingExecutor, cache: Cache, sub: Submitted, base: list[ModelConfig], keys: Any,
                      groups: dict[str, tuple[str, ...]], metric: str, seed: int, repeats: int) -> PendingImportance:
    """One permutation_importance_fold per baseline model x fold (cached by the fold's key): re-predicts, never
    refits. Submitted with the folds: a fold still being fitted is passed as its task's handle."""

    def key(m: ModelConfig, k: int) -> str:
        return key_of("importance", keys.folds[(m.name, k)], sorted(groups.items()), metric, seed, repeats,
                      tasks_version())

    pending = PendingImportance(results=[], todo={})
    fitting = {mk: handle for handle, mk in sub.fits.items()}
    for m in base:
        for k in range(sub.plan.n_splits):
            hit = cache.get("importance", key(m, k))
            if hit is not None:
                pending.results.append(hit)
                continue
            data_ref, plan_ref = shared_refs(ex, sub)
            # the baseline node is named as the model; a fold still being fitted goes in as its handle
            fold = fitting[(m.name, k)] if (m.name, k) in fitting else sub.cached[(m.name, k)]
            handle = ex.submit(permutation_importance_fold, data_ref, plan_ref, fold, groups, metric, seed, repeats,
                               slot=Slot(m.cpus, m.gpus), name=f"permutation_importance[model={m.name}, fold={k}]")
            pending.todo[handle] = key(m, k)
    return pending
