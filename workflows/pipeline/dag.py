"""The fold DAG that `foldwise run`, `sweep` and `ablate` compose: checks -> data -> fold plan ->
one `train_fold` per model x fold -> one `predict_test` per fold model (with a test set) ->
ensemble on OOF only.

Every node has a content key (`node_keys`: its inputs' keys + its own config + the code it
runs), so a node found in the cache is never submitted, and Ray starts only if something
must run. Nodes are submitted all at once so Ray packs them into the free slots; results
are gathered as they finish and cached at once (a crash loses only work in flight).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from foldwise.tasks.data import DataError, PreparedData, drop_columns, prepare_data, prepare_frames
from foldwise.tasks.ensemble import EnsembleResult
from foldwise.tasks.folds import FoldPlan, assign_folds
from foldwise.tasks.models import ModelConfig
from foldwise.tasks.repeats import blend_repeats, mean_over_repeats, oof_by_repeat
from foldwise.tasks.seeds import average_seeds, base_name, is_seed_node
from foldwise.tasks.test_prediction import TestPrediction, predict_test
from foldwise.tasks.train import FoldResult, train_fold
from foldwise.workflows.engine.cache import Cache, key_of, source_stamp
from foldwise.workflows.engine.executor import Slot
from foldwise.workflows.engine.lazy import LazyExecutor, Work
from foldwise.workflows.engine.progress import FoldProgress
from foldwise.workflows.errors import InputError, TaskFailed
from foldwise.workflows.pipeline.inputs import Inputs, data_warnings
from foldwise.workflows.pipeline.provenance import adapter_version, metric_stamp, tasks_version
from foldwise.workflows.pipeline.spec import WorkflowSpec
from foldwise.workflows.pipeline.steps import StepKeys, run_steps, step_keys


@dataclass(frozen=True)
class DagOutput:
    data: PreparedData
    plan: FoldPlan
    folds: dict[str, list[FoldResult]]  # model -> results in fold order
    ensemble: EnsembleResult
    phases: dict[str, float]  # seconds per DAG stage, for benchmarks and users' curiosity
    cached: dict[str, list[bool]]  # model -> per fold: taken from the cache
    ensemble_cached: bool


def checks_key(spec: WorkflowSpec, keys: NodeKeys) -> str:
    return key_of("checks", keys.data, spec.cv.seed)


def checked_data(cache: Cache, spec: WorkflowSpec, inputs: Inputs, keys: NodeKeys,
                 frames: tuple[pd.DataFrame, pd.DataFrame | None] | None = None
                 ) -> tuple[list[str], tuple[pd.DataFrame, pd.DataFrame | None] | None]:
    """The cheap checks' warnings, cached with the data they read (errors are never cached),
    and the (train, test) frames the checks read, None when the warnings came from the cache.
    `frames`: the frames to check (the frame steps' output) instead of the files."""
    key = checks_key(spec, keys)
    found = cache.get("checks", key)
    if found is not None:
        return found, frames
    found, findings = data_warnings(spec, inputs, frames)
    cache.put("checks", key, found)
    return found, (findings.train, findings.other.frame if findings.other is not None else None)


def early_work(cache: Cache, inputs: Inputs, models: list[ModelConfig], keys: NodeKeys) -> Work | None:
    """The fold work as known before the data is read in full (rows and feature columns from
    validation's cheap read, folds and test predictions not in the cache), for
    `LazyExecutor.expect_early`; None when every fold node is cached (nothing may need Ray)."""
    fits = [mk for mk, key in keys.folds.items() if not cache.has("fold", key)]
    tests = [mk for mk, key in keys.tests.items() if not cache.has("test", key)]
    if not fits and not tests:
        return None
    by_gpu = {m.name: m.gpus > 0 for m in models}
    summary = inputs.summary
    return Work(rows=summary.n_rows, features=len(summary.columns), fits=len(fits),
                gpus=any(by_gpu[name] for name, _ in fits + tests))


def fold_plan(spec: WorkflowSpec, inputs: Inputs) -> FoldPlan:
    """The fold plan, on the driver: it needs only the target and groups, which validation already
    read, so no task waits on a plan task (and its sklearn import) before the first fold."""
    return assign_folds(inputs.summary.y, inputs.summary.groups, inputs.scheme, spec.cv.folds, spec.cv.seed,
                        spec.cv.repeats)


@dataclass(frozen=True)
class NodeKeys:
    """Cache keys of every DAG node, computed before anything runs."""

    data: str  # the prepared data: training and test sets
    plan: str  # from the training data only (`train`), so a new test set keeps every fold's key
    folds: dict[tuple[str, int], str]  # (model, fold) -> key
    version: str
    tests: dict[tuple[str, int], str] = field(default_factory=dict)  # (model, fold) -> its test prediction's key
    steps: StepKeys | None = None  # the frame-step nodes (None: no `steps:`)


def node_keys(spec: WorkflowSpec, inputs: Inputs, models: list[ModelConfig], version: str,
              drops: Mapping[str, tuple[str, ...]] | None = None) -> NodeKeys:
    """A node's key: its inputs' keys + its own config + the code version, nothing else.

    A model's name is not part of its folds' keys (renaming recomputes nothing); every
    param, preprocessing step and resource that can change its output is. `drops` (model
    name -> feature columns it must not see, for `foldwise ablate`) enters a fold's key
    only when non-empty, so an ablation's baseline has exactly `foldwise run`'s keys. A memory
    reservation only changes where a fold runs, so raising it after an OOM refits nothing done.
    The plan (hence every fold) is keyed by the training data alone; a fold's test prediction by
    the fold's key and the data's (training + test), so a new `data.test` refits nothing.
    """
    summary = inputs.summary
    steps = step_keys(spec, inputs)  # frame steps key the training data too (`together` steps read the test rows)
    train = key_of("data", asdict(replace(inputs.data, test=None)), source_stamp(inputs.data.train),
                   tasks_version(), *([summary.image_stamp] if summary.image_stamp else []),
                   *([steps.final] if steps is not None else []))
    data = train if inputs.data.test is None else key_of("data", train, source_stamp(inputs.data.test),
                                                         summary.test_image_stamp)
    plan = key_of("plan", train, inputs.scheme, spec.cv.folds, spec.cv.seed, *([spec.cv.repeats] if spec.cv.repeats > 1 else []))
    drops = drops or {}
    adapters = {m.name: adapter_version(m.type, m.estimator) for m in models}
    folds = {(m.name, k): key_of("fold", plan, _fold_config(m), k, metric_stamp(inputs.metric), spec.cv.seed,
                                 tasks_version(), adapters[m.name],
                                 *([sorted(drops[m.name])] if drops.get(m.name) else []))
             for m in models for k in range(spec.cv.folds * spec.cv.repeats)}  # k: split (repeat x fold)
    tests = {mk: key_of("test", key, data) for mk, key in folds.items()} if inputs.data.test is not None else {}
    return NodeKeys(data=data, plan=plan, folds=folds, version=version, tests=tests, steps=steps)


def _fold_config(m: ModelConfig) -> dict[str, Any]:
    config = asdict(m) | {"name": None}
    config.pop("memory")
    config.pop("seeds")  # a node fits one seed; with none set, keys stay as before seed averaging existed
    if config["seed"] is None:
        config.pop("seed")
    if not config["fold_steps"]:
        config.pop("fold_steps")  # a spec without fold steps keeps the keys it had before they existed
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
    tests: dict[tuple[str, int], np.ndarray] = field(default_factory=dict)  # cached test predictions
    predicting: dict[Any, tuple[str, int]] = field(default_factory=dict)  # predict_test handle -> (model, fold)
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
    if data is None and frames is None and keys.steps is not None:  # the frames a stepped data node is made of
        frames, _ = run_steps(ex, cache, spec, inputs, keys.steps)
    if data is None and frames is not None:
        try:
            data = prepare_frames(inputs.data, *frames)
        except DataError as e:  # nothing started yet: bad data, like any other found before compute
            raise InputError(f"data: {e}") from None
        new.append("data")
    todo = [mk for mk in keys.folds if mk not in cached]
    tests = {mk: p.values for mk, key in keys.tests.items() if (p := cache.get("test", key)) is not None}
    to_predict = [mk for mk in keys.tests if mk not in tests]
    by_gpu = {m.name: m.gpus > 0 for m in models}
    prepared = plan_handle = None
    fits: dict[Any, tuple[str, int]] = {}
    predicting: dict[Any, tuple[str, int]] = {}
    if data is None and (todo or to_predict) and ex.kind == "auto":  # its size settles where the folds run
        data = ex.run(prepare_data, inputs.data, name="prepare")
        new.append("data")
    if data is not None and (todo or to_predict):
        ex.expect(Work(rows=len(data.y), features=len(data.columns), fits=len(todo),
                       gpus=any(by_gpu[name] for name, _ in todo + to_predict)))
    if data is None:
        prepared = ex.submit(prepare_data, inputs.data, name="prepare")
    if todo or to_predict:
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
        handles = {mk: h for h, mk in fits.items()}
        for name, k in to_predict:  # after its fold's fit (a handle: Ray runs it once the fit is done)
            m = by_name[name]
            fold = handles[(name, k)] if (name, k) in handles else cached[(name, k)]
            handle = ex.submit(predict_test, prepared, plan_handle, fold, tuple((drops or {}).get(name, ())),
                               slot=Slot(m.cpus, m.gpus, memory=m.memory), name=f"predict_test[model={name}, fold={k}]")
            predicting[handle] = (name, k)
    return Submitted(data=data, plan=plan, prepared=prepared, plan_handle=plan_handle, cached=cached, fits=fits,
                     seconds=time.perf_counter() - tick, new=tuple(new), tests=tests, predicting=predicting)


def gather(ex: LazyExecutor, cache: Cache, sub: Submitted, spec: WorkflowSpec, inputs: Inputs,
            models: list[ModelConfig], keys: NodeKeys, log_fold: Callable[[FoldResult], None],
            progress: bool, on_slots: Callable[[float, float], None]) -> DagOutput:
    """Collect fold results as they finish (each handed to `log_fold` at once), then blend on OOF only."""
    seeded = any(is_seed_node(m.name) for m in models)  # seed nodes are logged once averaged
    data, plan, done, phases = collect_folds(ex, cache, sub, models, keys,
                                             (lambda r: None if is_seed_node(r.model) else log_fold(r)), progress, on_slots)
    cached = {name: [(name, k) in sub.cached for k in range(plan.n_splits)] for name in done}
    if seeded:
        done, cached = average_seeds(done, cached, inputs.metric, data.task, data.y)
        for r in (r for m in {base_name(m.name) for m in models if is_seed_node(m.name)} for r in done[m]):
            log_fold(r)
    tick = time.perf_counter()
    names = spec.ensemble.models or list(dict.fromkeys(base_name(m.name) for m in models))
    ens, ens_was_cached = ensemble_node(ex, cache, spec, inputs, keys, names, done, data, plan)
    phases["ensemble"] = time.perf_counter() - tick
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
    folds: dict[str, list[FoldResult | None]] = {m.name: [None] * plan.n_splits for m in models}
    for (name, k), r in sub.cached.items():
        folds[name][k] = r
        on_fold(r)
    cpus = {m.name: m.cpus for m in models}
    busy = sum(cpus[name] for name, _ in sub.fits.values())
    capacity = ex.cpus()
    tests = dict(sub.tests)
    handles = list(sub.fits) + list(sub.predicting)
    with FoldProgress(progress, len(keys.folds), done=len(sub.cached)) as bar:
        try:
            on_slots(busy, capacity)
            for _, result in ex.as_completed(handles):
                if isinstance(result, TestPrediction):
                    cache.put("test", keys.tests[(result.model, result.fold)], result)
                    tests[(result.model, result.fold)] = result.values
                    continue
                busy -= cpus[result.model]
                on_slots(busy, capacity)
                cache.put("fold", keys.folds[(result.model, result.fold)], result)
                folds[result.model][result.fold] = result
                on_fold(result)
                bar.advance(f"{result.model} fold {result.fold}: {result.score:.5f}")
        except TaskFailed:
            for _, result in ex.finished(handles):  # done but not yet gathered: keep them too
                if isinstance(result, TestPrediction):
                    cache.put("test", keys.tests[(result.model, result.fold)], result)
                else:
                    cache.put("fold", keys.folds[(result.model, result.fold)], result)
            ex.cancel(handles)
            raise
    phases["train_folds"] = time.perf_counter() - tick
    done = {name: [r if (name, r.fold) not in tests else replace(r, test=tests[(name, r.fold)])
                   for r in rs if r is not None] for name, rs in folds.items()}
    return data, plan, done, phases


def ensemble_key(spec: WorkflowSpec, inputs: Inputs, keys: NodeKeys, names: list[str], n_splits: int) -> str:
    """The ensemble node's key (`foldwise dag` shows it before the run)."""
    return key_of("ensemble", names, [key for n in names for k in range(n_splits) for key in seed_keys(keys.folds, n, k)],
                  spec.ensemble.model_dump(mode="json"), inputs.metric, spec.cv.seed, keys.version,
                  *([keys.data] if keys.tests else []))


def ensemble_node(ex: LazyExecutor, cache: Cache, spec: WorkflowSpec, inputs: Inputs, keys: NodeKeys, names: list[str],
              folds: dict[str, list[FoldResult]], data: PreparedData, plan: FoldPlan,
              drop: tuple[str, ...] = ()) -> tuple[EnsembleResult, bool]:
    """The spec's ensemble of the models `names` on their OOF (from the cache when unchanged); (result, was cached).
    `drop`: feature columns a passthrough stack must not see either (an ablation variant's)."""
    ens_key = ensemble_key(spec, inputs, keys, names, plan.n_splits)
    ens = cache.get("ensemble", ens_key)
    if ens is not None:
        return ens, True
    oof = {n: oof_by_repeat(folds[n], plan, len(data.y)) for n in names}  # fitted per repeat, averaged
    test = {n: average_test(folds[n]) for n in names} if data.X_test is not None else None
    through = spec.ensemble.passthrough  # stack layers that also see the original features
    if through and drop:
        data = drop_columns(data, drop)
    ens = ex.run(blend_repeats, spec.ensemble.method, oof, test, data.y, plan, inputs.metric, data.task, spec.cv.seed,
                 spec.ensemble.meta, dict(spec.ensemble.params), spec.ensemble.layers, through,
                 data.X if through else None, data.X_test if through else None, name="ensemble")
    cache.put("ensemble", ens_key, ens)
    return ens, False


def seed_keys(folds: dict[tuple[str, int], str], name: str, k: int) -> list[str]:
    """The fold keys behind model `name`'s split k: its own, or its seed nodes' (seed averaging)."""
    if (name, k) in folds:
        return [folds[(name, k)]]
    return [key for (node, split), key in folds.items() if split == k and base_name(node) == name and is_seed_node(node)]


def assemble_oof(results: list[FoldResult], n_rows: int, plan: FoldPlan | None = None) -> np.ndarray:
    """Stitch the held-out predictions; rows never held out (time scheme) stay NaN. With repeats
    (a `plan` of several), each repeat is stitched and the repeats are averaged."""
    if plan is not None and plan.repeats > 1:
        return mean_over_repeats(oof_by_repeat(results, plan, n_rows))
    first = results[0].oof
    oof = np.full((n_rows, *first.shape[1:]), np.nan)
    for r in results:
        oof[r.valid_rows] = r.oof
    return oof


def average_test(results: list[FoldResult]) -> np.ndarray:
    return np.mean([r.test for r in results], axis=0)

