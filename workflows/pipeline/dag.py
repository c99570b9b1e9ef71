"""The fold DAG that `foldwise run`, `sweep` and `ablate` compose: checks -> data -> fold plan ->
one `train_fold` per model x fold -> ensemble on OOF only.

Every node has a content key (`node_keys`: its inputs' keys + its own config + the code it
runs), so a node found in the cache is never submitted, and Ray starts only if something
must run. Nodes are submitted all at once so Ray packs them into the free slots; results
are gathered as they finish and cached at once (a crash loses only work in flight).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import pandas as pd

from foldwise.tasks.data import DataError, PreparedData, prepare_data, prepare_frames
from foldwise.tasks.ensemble import EnsembleResult, blend
from foldwise.tasks.folds import FoldPlan, assign_folds
from foldwise.tasks.models import ModelConfig
from foldwise.tasks.train import FoldResult, train_fold
from foldwise.workflows.engine.cache import Cache, key_of, source_stamp
from foldwise.workflows.engine.executor import LazyExecutor, Slot
from foldwise.workflows.engine.progress import FoldProgress
from foldwise.workflows.errors import InputError, TaskFailed
from foldwise.workflows.pipeline.inputs import Inputs, data_warnings
from foldwise.workflows.pipeline.provenance import adapter_version, tasks_version
from foldwise.workflows.pipeline.spec import WorkflowSpec


@dataclass(frozen=True)
class DagOutput:
    data: PreparedData
    plan: FoldPlan
    folds: dict[str, list[FoldResult]]  # model -> results in fold order
    ensemble: EnsembleResult
    phases: dict[str, float]  # seconds per DAG stage, for benchmarks and users' curiosity
    cached: dict[str, list[bool]]  # model -> per fold: taken from the cache
    ensemble_cached: bool


def checked_data(cache: Cache, spec: WorkflowSpec, inputs: Inputs, keys: NodeKeys
                   ) -> tuple[list[str], tuple[pd.DataFrame, pd.DataFrame | None] | None]:
    """The cheap checks' warnings, cached with the data they read (errors are never cached),
    and the (train, test) frames the checks read, None when the warnings came from the cache."""
    key = key_of("checks", keys.data, spec.cv.seed)
    found = cache.get("checks", key)
    if found is not None:
        return found, None
    found, findings = data_warnings(spec, inputs)
    cache.put("checks", key, found)
    return found, (findings.train, findings.other.frame if findings.other is not None else None)


def fold_plan(spec: WorkflowSpec, inputs: Inputs) -> FoldPlan:
    """The fold plan, on the driver: it needs only the target and groups, which validation already
    read, so no task waits on a plan task (and its sklearn import) before the first fold."""
    return assign_folds(inputs.summary.y, inputs.summary.groups, inputs.scheme, spec.cv.folds, spec.cv.seed)


@dataclass(frozen=True)
class NodeKeys:
    """Cache keys of every DAG node, computed before anything runs."""

    data: str
    plan: str
    folds: dict[tuple[str, int], str]  # (model, fold) -> key
    version: str


def node_keys(spec: WorkflowSpec, inputs: Inputs, models: list[ModelConfig], version: str,
              drops: Mapping[str, tuple[str, ...]] | None = None) -> NodeKeys:
    """A node's key: its inputs' keys + its own config + the code version, nothing else.

    A model's name is not part of its folds' keys (renaming recomputes nothing); every
    param, preprocessing step and resource that can change its output is. `drops` (model
    name -> feature columns it must not see, for `foldwise ablate`) enters a fold's key
    only when non-empty, so an ablation's baseline has exactly `foldwise run`'s keys. A memory
    reservation only changes where a fold runs, so raising it after an OOM refits nothing done.
    """
    data = key_of("data", asdict(inputs.data), source_stamp(inputs.data.train), source_stamp(inputs.data.test),
                  tasks_version(), *([inputs.summary.image_stamp] if inputs.summary.image_stamp else []))
    plan = key_of("plan", data, inputs.scheme, spec.cv.folds, spec.cv.seed)
    drops = drops or {}
    adapters = {m.name: adapter_version(m.type, m.estimator) for m in models}
    folds = {(m.name, k): key_of("fold", plan, _fold_config(m), k, inputs.metric, spec.cv.seed,
                                 tasks_version(), adapters[m.name],
                                 *([sorted(drops[m.name])] if drops.get(m.name) else []))
             for m in models for k in range(spec.cv.folds)}
    return NodeKeys(data=data, plan=plan, folds=folds, version=version)


def _fold_config(m: ModelConfig) -> dict[str, Any]:
    config = asdict(m) | {"name": None}
    config.pop("memory")
    return config


@dataclass
class Submitted:
    """What `submit_folds` started: cached values where the cache had them, handles for the rest."""

    data: PreparedData | None  # None while a prepare task makes it
    plan: FoldPlan
    prepared: Any  # handle of the prepared data (a task, or the driver's value put once), or None
    plan_handle: Any
    cached: dict[tuple[str, int], FoldResult]
    fits: dict[Any, tuple[str, int]]  # handle -> (model, fold)
    seconds: float
    new: tuple[str, ...] = ()  # nodes made on the driver here ("data", "plan"): collect_folds caches them


def submit_folds(ex: LazyExecutor, cache: Cache, spec: WorkflowSpec, inputs: Inputs, models: list[ModelConfig],
            keys: NodeKeys, drops: Mapping[str, tuple[str, ...]] | None = None,
            frames: tuple[pd.DataFrame, pd.DataFrame | None] | None = None) -> Submitted:
    """The DAG: prepare once -> plan folds once -> one train_fold per model x fold, all at once.

    Nodes found in the cache are not submitted; Ray starts only if something must run. The
    plan is made here on the driver; so is the prepared data when `frames` (train, test: what
    the data checks read) are given, else a prepare task reads the files.
    `drops`: model name -> feature columns its folds leave out (ablation variants).
    """
    tick = time.perf_counter()
    # a fold's key leaves out the model's name, so a cached result may carry an earlier name: rename it
    cached = {(name, k): replace(r, model=name) for (name, k), key in keys.folds.items()
              if (r := cache.get("fold", key)) is not None}
    data, plan = cache.get("data", keys.data), cache.get("plan", keys.plan)
    new: list[str] = []
    if plan is None:
        plan = fold_plan(spec, inputs)
        new.append("plan")
    if data is None and frames is not None:
        try:
            data = prepare_frames(inputs.data, *frames)
        except DataError as e:  # nothing started yet: bad data, like any other found before compute
            raise InputError(f"data: {e}") from None
        new.append("data")
    todo = [mk for mk in keys.folds if mk not in cached]
    prepared = plan_handle = None
    fits: dict[Any, tuple[str, int]] = {}
    if data is None:
        prepared = ex.submit(prepare_data, inputs.data, name="prepare")
    if todo:
        if prepared is None:
            prepared = ex.put(data)
            data = ex.get(prepared)  # a zero-copy view of the stored arrays: the driver holds no second copy
        plan_handle = ex.put(plan)
        by_name = {m.name: m for m in models}
        for name, k in todo:
            m = by_name[name]
            handle = ex.submit(train_fold, prepared, plan_handle, m, k, inputs.metric, spec.cv.seed,
                               tuple((drops or {}).get(name, ())),
                               slot=Slot(m.cpus, m.gpus, memory=m.memory), name=f"train_fold[model={name}, fold={k}]")
            fits[handle] = (name, k)
    return Submitted(data=data, plan=plan, prepared=prepared, plan_handle=plan_handle, cached=cached, fits=fits,
                     seconds=time.perf_counter() - tick, new=tuple(new))


def gather(ex: LazyExecutor, cache: Cache, sub: Submitted, spec: WorkflowSpec, inputs: Inputs,
            models: list[ModelConfig], keys: NodeKeys, log_fold: Callable[[FoldResult], None],
            progress: bool, on_slots: Callable[[float, float], None]) -> DagOutput:
    """Collect fold results as they finish (each handed to `log_fold` at once), then blend on OOF only."""
    data, plan, done, phases = collect_folds(ex, cache, sub, models, keys, log_fold, progress, on_slots)
    tick = time.perf_counter()
    names = spec.ensemble.models or [m.name for m in models]
    ens, ens_was_cached = ensemble_node(ex, cache, spec, inputs, keys, names, done, data, plan)
    phases["ensemble"] = time.perf_counter() - tick
    cached = {name: [(name, k) in sub.cached for k in range(plan.n_folds)] for name in done}
    return DagOutput(data=data, plan=plan, folds=done, ensemble=ens, phases=phases, cached=cached,
                     ensemble_cached=ens_was_cached)


def collect_folds(ex: LazyExecutor, cache: Cache, sub: Submitted, models: list[ModelConfig], keys: NodeKeys,
             on_fold: Callable[[FoldResult], None], progress: bool, on_slots: Callable[[float, float], None]
             ) -> tuple[PreparedData, FoldPlan, dict[str, list[FoldResult]], dict[str, float]]:
    """Prepared data, fold plan and every fold result (each cached at once: a crash loses only work in flight).

    `on_slots(cpus, capacity)` hears, once the folds are submitted and after each one finishes,
    the CPUs the folds still to finish need and the cluster's CPUs."""
    phases = {"submit": sub.seconds}
    tick = time.perf_counter()
    data, plan = sub.data, sub.plan
    if "plan" in sub.new:
        cache.put("plan", keys.plan, plan)
    if data is None:
        data = ex.get(sub.prepared)  # the prepare task's
    if sub.data is None or "data" in sub.new:  # made by the prepare task or on the driver: cache it
        cache.put("data", keys.data, data)
    phases["prepare"] = time.perf_counter() - tick
    tick = time.perf_counter()
    folds: dict[str, list[FoldResult | None]] = {m.name: [None] * plan.n_folds for m in models}
    for (name, k), r in sub.cached.items():
        folds[name][k] = r
        on_fold(r)
    cpus = {m.name: m.cpus for m in models}
    busy = sum(cpus[name] for name, _ in sub.fits.values())
    capacity = ex.cpus()
    with FoldProgress(progress, len(keys.folds), done=len(sub.cached)) as bar:
        try:
            on_slots(busy, capacity)
            for _, result in ex.as_completed(list(sub.fits)):
                busy -= cpus[result.model]
                on_slots(busy, capacity)
                cache.put("fold", keys.folds[(result.model, result.fold)], result)
                folds[result.model][result.fold] = result
                on_fold(result)
                bar.advance(f"{result.model} fold {result.fold}: {result.score:.5f}")
        except TaskFailed:
            for _, result in ex.finished(list(sub.fits)):  # done but not yet gathered: keep them too
                cache.put("fold", keys.folds[(result.model, result.fold)], result)
            ex.cancel(list(sub.fits))
            raise
    phases["train_folds"] = time.perf_counter() - tick
    done = {name: [r for r in rs if r is not None] for name, rs in folds.items()}
    return data, plan, done, phases


def ensemble_node(ex: LazyExecutor, cache: Cache, spec: WorkflowSpec, inputs: Inputs, keys: NodeKeys, names: list[str],
              folds: dict[str, list[FoldResult]], data: PreparedData, plan: FoldPlan) -> tuple[EnsembleResult, bool]:
    """The spec's ensemble of the models `names` on their OOF (from the cache when unchanged); (result, was cached)."""
    ens_key = key_of("ensemble", names, [keys.folds[(n, k)] for n in names for k in range(plan.n_folds)],
                     spec.ensemble.model_dump(mode="json"), inputs.metric, spec.cv.seed, keys.version)
    ens = cache.get("ensemble", ens_key)
    if ens is not None:
        return ens, True
    oof = {n: assemble_oof(folds[n], len(data.y)) for n in names}
    test = {n: average_test(folds[n]) for n in names} if data.X_test is not None else None
    ens = ex.run(blend, spec.ensemble.method, oof, test, data.y, plan, inputs.metric, data.task, spec.cv.seed,
                 spec.ensemble.meta, dict(spec.ensemble.params), name="ensemble")
    cache.put("ensemble", ens_key, ens)
    return ens, False


def assemble_oof(results: list[FoldResult], n_rows: int) -> np.ndarray:
    """Stitch the held-out predictions; rows never held out (time scheme) stay NaN."""
    first = results[0].oof
    oof = np.full((n_rows, *first.shape[1:]), np.nan)
    for r in results:
        oof[r.valid_rows] = r.oof
    return oof


def average_test(results: list[FoldResult]) -> np.ndarray:
    return np.mean([r.test for r in results], axis=0)

