"""`foldwise run`: spec -> Ray DAG of fold tasks -> OOF -> ensemble -> outputs, tracked in MLflow.

The DAG reads top to bottom in `_cv_dag`: prepare once, plan folds once, one
`train_fold` per model x fold (all submitted at once so Ray packs them into the free
slots), gather as they finish, then blend on OOF only.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from foldwise.infra import storage
from foldwise.tasks.data import DataError, PreparedData, prepare_data, prepare_frames
from foldwise.tasks.ensemble import EnsembleResult, blend
from foldwise.tasks.folds import FoldPlan, assign_folds
from foldwise.tasks.models import ModelConfig
from foldwise.tasks.report import (
    LeaderboardRow,
    leaderboard_markdown,
    oof_frame,
    submission_frame,
    test_frame,
    write_json,
)
from foldwise.tasks.slices import feature_frame, slice_scores
from foldwise.tasks.train import FoldResult, train_fold
from foldwise.workflows.engine.cache import Cache, key_of, source_stamp
from foldwise.workflows.engine.executor import LazyExecutor, Slot
from foldwise.workflows.engine.idle import IdleWork, on_idle_thread
from foldwise.workflows.errors import InputError, RunFailed, TaskFailed
from foldwise.workflows.pipeline.failures import OpenRuns, describe_failure, marks_runs_failed
from foldwise.workflows.pipeline.inputs import Inputs, data_warnings, usable_tracking_uri, validate_inputs
from foldwise.workflows.pipeline.provenance import adapter_version, code_version, git_commit, tasks_version
from foldwise.workflows.pipeline.spec import WorkflowSpec, load_spec, to_yaml
from foldwise.workflows.tracking import tracker as tk
from foldwise.workflows.tracking.fold_runs import log_fold_run


@dataclass(frozen=True)
class CVResult:
    """What `foldwise run` produces: the summary.json data plus the OOF frame."""

    summary: dict[str, Any]
    oof: pd.DataFrame
    out_dir: Path | str  # a URI when --out is one
    leaderboard: str = ""
    fold_results: tuple[FoldResult, ...] = field(default=(), repr=False)

    @property
    def run_id(self) -> str:
        return self.summary["run_id"]

    @property
    def cv_score(self) -> float:
        return self.summary["ensemble"]["cv_score"]


@dataclass(frozen=True)
class DagOutput:
    data: PreparedData
    plan: FoldPlan
    folds: dict[str, list[FoldResult]]  # model -> results in fold order
    ensemble: EnsembleResult
    phases: dict[str, float]  # seconds per DAG stage, for benchmarks and users' curiosity
    cached: dict[str, list[bool]]  # model -> per fold: taken from the cache
    ensemble_cached: bool


def model_config(spec_model: Any) -> ModelConfig:
    return ModelConfig(name=spec_model.name, type=spec_model.type, params=dict(spec_model.params),
                       estimator=spec_model.estimator, preprocess=tuple(spec_model.preprocess),
                       cpus=spec_model.resources.cpus, gpus=spec_model.resources.gpus,
                       memory=spec_model.resources.memory,
                       augment=spec_model.augment.model_dump() if spec_model.augment else None, tta=tuple(spec_model.tta))


def run_cv(spec: WorkflowSpec | str | Path, *, overrides: Sequence[str] = (), out: str | Path | None = None,
           tracking_uri: str | None = None, address: str | None = None, executor: str = "ray",
           progress: bool = False, no_cache: bool = False, cache_root: str | None = None,
           checks: bool = True, parent_run_id: str | None = None, run_name: str | None = None) -> CVResult:
    """The Python API of `foldwise run` (same data as summary.json, plus the OOF frame).

    `checks` runs the cheap data checks of `foldwise check` first (no model, no drift):
    their errors stop the run before any task, their warnings go to stderr, summary.json
    and the MLflow run. `parent_run_id` nests the run under another command's MLflow run
    (a sweep's refit). Raises SpecError/InputError (nothing started, nothing logged) or RunFailed.
    """
    wall_start, started = time.perf_counter(), time.time()
    if not isinstance(spec, WorkflowSpec):
        spec = load_spec(spec, overrides)
    inputs = validate_inputs(spec)
    models = [model_config(m) for m in spec.models]
    version = code_version(models)
    keys = node_keys(spec, inputs, models, version)
    uri = usable_tracking_uri(tracking_uri, spec)
    cache = Cache(cache_root, enabled=not no_cache)
    warnings, frames = _data_warnings(cache, spec, inputs, keys) if checks else ([], None)
    for line in warnings:
        print(f"foldwise: warning: {line}", file=sys.stderr)
    phases = {"validate": time.perf_counter() - wall_start}
    ex = LazyExecutor(executor, address)
    try:
        dag = _submit(ex, cache, spec, inputs, models, keys, frames=frames)  # runs while MLflow is set up below
        del frames  # the driver keeps the prepared arrays (in the object store), not the frames
    except TaskFailed as e:
        ex.close()
        raise RunFailed(describe_failure(e, spec), None) from None
    # MLflow is set up (imported, store opened, runs started) on a thread while the folds run, when it
    # costs them least (see set_up_when): fold results finished before that wait for it in `log`.
    runs = on_idle_thread(lambda: _open_runs(uri, spec, inputs, models, version, run_name, parent_run_id, started),
                          name="foldwise-mlflow-setup", wait_at_most=MLFLOW_SETUP_WAIT_S)
    with marks_runs_failed(runs, ex, spec):
        log = FoldLog(runs, _log_fold)
        result = _gather(ex, cache, dag, spec, inputs, models, keys, log, progress, set_up_when(runs))
        tick = time.perf_counter()
        opened = runs.result()
        log.flush()
        phases |= {"tracking_setup": runs.seconds, "tracking_wait": time.perf_counter() - tick}
        return _finish(spec, inputs, models, result, opened.tracker, opened.parent, dict(opened.children), out,
                       ex.startup_seconds, wall_start, phases | result.phases | cache.io_seconds(), warnings)


def _open_runs(uri: str, spec: WorkflowSpec, inputs: Inputs, models: list[ModelConfig], version: str,
               run_name: str | None, parent_run_id: str | None, started: float) -> OpenRuns:
    """The run's MLflow runs, dated from `started` (the command's start): a parent (the spec's
    params) and one child per model."""
    tracker = tk.Tracker(uri, spec.experiment)
    tracker.fail_abandoned_runs()
    tags = {tk.TAG_COMMAND: "run", tk.TAG_GIT: git_commit(), tk.TAG_CODE: version} | tk.process_tags()
    parent = tracker.start_run(run_name or f"run-{datetime.fromtimestamp(started, timezone.utc):%Y%m%d-%H%M%S}", tags,
                               parent_id=parent_run_id, start_time=started)
    children = {m.name: tracker.start_run(m.name, {**tags, tk.TAG_MODEL: m.name}, parent_id=parent, start_time=started)
                for m in models}
    tracker.log(parent, params=tk.flatten(spec.model_dump(mode="json")) | {"task": inputs.task, "metric": inputs.metric,
                                                                         "cv.scheme": inputs.scheme})
    return OpenRuns(tracker, parent, children)


# How long the MLflow set-up waits for a free CPU before it runs anyway (at idle priority): the
# latest the run can appear in the MLflow UI after its folds start, plus the set-up itself.
MLFLOW_SETUP_WAIT_S = 20.0


def set_up_when(work: IdleWork) -> Callable[[float, float], None]:
    """When to start `work` (the MLflow set-up), told the CPUs the unfinished folds need and the
    cluster's: on the first free CPU, at idle priority, so it costs the folds nothing; but right
    away at normal priority when the folds fill every CPU to the end (equal rounds: no CPU frees
    before the last fold ends, and the set-up would only add its seconds after them)."""
    first = True

    def on_slots(busy: float, capacity: float) -> None:
        nonlocal first
        if busy < capacity:
            work.start_now()
        elif first and (capacity <= 0 or _fills_to_the_end(busy, capacity)):
            work.start_now(lower=False)
        first = False

    return on_slots


def _fills_to_the_end(busy: float, capacity: float) -> bool:
    """Folds needing `busy` CPUs run in rounds of `capacity` with no partial last round (equal-length
    folds assumed: the only knowledge there is before any fold ends)."""
    rest = busy % capacity
    return rest < 1e-9 or capacity - rest < 1e-9


class FoldLog:
    """Hands each fold result to `write` with the open runs as it finishes; results that finish
    before the runs are open wait here until they are (the next fold, or `flush` once all are in)."""

    def __init__(self, runs: Future[OpenRuns], write: Callable[[OpenRuns, FoldResult], None]) -> None:
        self.runs, self.write = runs, write
        self.pending: list[FoldResult] = []

    def __call__(self, result: FoldResult) -> None:
        self.pending.append(result)
        if self.runs.done():
            self.flush()

    def flush(self) -> None:
        opened = self.runs.result()
        for r in self.pending:
            self.write(opened, r)
        self.pending.clear()


def _log_fold(runs: OpenRuns, r: FoldResult) -> None:
    runs.tracker.log_step(runs.children[r.model], tk.M_FOLD_SCORE, r.score, step=r.fold)
    log_fold_run(runs.tracker, runs.children[r.model], r)


def _data_warnings(cache: Cache, spec: WorkflowSpec, inputs: Inputs, keys: NodeKeys
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
    """What `_submit` started: cached values where the cache had them, handles for the rest."""

    data: PreparedData | None  # None while a prepare task makes it
    plan: FoldPlan
    prepared: Any  # handle of the prepared data (a task, or the driver's value put once), or None
    plan_handle: Any
    cached: dict[tuple[str, int], FoldResult]
    fits: dict[Any, tuple[str, int]]  # handle -> (model, fold)
    seconds: float
    new: tuple[str, ...] = ()  # nodes made on the driver here ("data", "plan"): _collect caches them


def _submit(ex: LazyExecutor, cache: Cache, spec: WorkflowSpec, inputs: Inputs, models: list[ModelConfig],
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


def _gather(ex: LazyExecutor, cache: Cache, sub: Submitted, spec: WorkflowSpec, inputs: Inputs,
            models: list[ModelConfig], keys: NodeKeys, log_fold: Callable[[FoldResult], None],
            progress: bool, on_slots: Callable[[float, float], None]) -> DagOutput:
    """Collect fold results as they finish (each handed to `log_fold` at once), then blend on OOF only."""
    data, plan, done, phases = _collect(ex, cache, sub, models, keys, log_fold, progress, on_slots)
    tick = time.perf_counter()
    names = spec.ensemble.models or [m.name for m in models]
    ens, ens_was_cached = _ensemble(ex, cache, spec, inputs, keys, names, done, data, plan)
    phases["ensemble"] = time.perf_counter() - tick
    cached = {name: [(name, k) in sub.cached for k in range(plan.n_folds)] for name in done}
    return DagOutput(data=data, plan=plan, folds=done, ensemble=ens, phases=phases, cached=cached,
                     ensemble_cached=ens_was_cached)


def _collect(ex: LazyExecutor, cache: Cache, sub: Submitted, models: list[ModelConfig], keys: NodeKeys,
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
    with _progress_bar(progress, len(keys.folds), done=len(sub.cached)) as bar:
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


def _ensemble(ex: LazyExecutor, cache: Cache, spec: WorkflowSpec, inputs: Inputs, keys: NodeKeys, names: list[str],
              folds: dict[str, list[FoldResult]], data: PreparedData, plan: FoldPlan) -> tuple[EnsembleResult, bool]:
    """The spec's ensemble of the models `names` on their OOF (from the cache when unchanged); (result, was cached)."""
    ens_key = key_of("ensemble", names, [keys.folds[(n, k)] for n in names for k in range(plan.n_folds)],
                     spec.ensemble.model_dump(mode="json"), inputs.metric, spec.cv.seed, keys.version)
    ens = cache.get("ensemble", ens_key)
    if ens is not None:
        return ens, True
    oof = {n: _assemble_oof(folds[n], len(data.y)) for n in names}
    test = {n: _average_test(folds[n]) for n in names} if data.X_test is not None else None
    ens = ex.run(blend, spec.ensemble.method, oof, test, data.y, plan, inputs.metric, data.task, spec.cv.seed,
                 spec.ensemble.meta, dict(spec.ensemble.params), name="ensemble")
    cache.put("ensemble", ens_key, ens)
    return ens, False


def _assemble_oof(results: list[FoldResult], n_rows: int) -> np.ndarray:
    """Stitch the held-out predictions; rows never held out (time scheme) stay NaN."""
    first = results[0].oof
    oof = np.full((n_rows, *first.shape[1:]), np.nan)
    for r in results:
        oof[r.valid_rows] = r.oof
    return oof


def _average_test(results: list[FoldResult]) -> np.ndarray:
    return np.mean([r.test for r in results], axis=0)


def _finish(spec: WorkflowSpec, inputs: Inputs, models: list[ModelConfig], dag: DagOutput, tracker: tk.Tracker,
            parent: str, children: dict[str, str], out: str | Path | None, startup_seconds: float,
            wall_start: float, phases: dict[str, float], warnings: list[str]) -> CVResult:
    tick = time.perf_counter()
    data, plan, ens = dag.data, dag.plan, dag.ensemble
    target = str(out) if out else storage.join(storage.outputs_root(), spec.name, parent)
    out_dir = storage.staging_folder(target)  # `target` itself, or a local folder uploaded to it at the end
    model_summaries = {}
    rows = []
    for m in models:
        rs = dag.folds[m.name]
        scores = [r.score for r in rs]
        model_summaries[m.name] = {
            "cv_score": float(np.mean(scores)), "fold_scores": scores,
            "fit_seconds": [r.fit_seconds for r in rs], "predict_seconds": [r.predict_seconds for r in rs],
            "model_bytes": [r.model_bytes for r in rs], tk.M_PEAK_MEMORY: [r.peak_memory_bytes for r in rs],
            "cached": dag.cached[m.name],
        }
        rows.append(LeaderboardRow(m.name, float(np.mean(scores)), tuple(scores), sum(r.fit_seconds for r in rs)))
        tracker.log(children[m.name],
                    params=tk.flatten({"model": _model_params(m)}) | {"metric": inputs.metric, "cv.scheme": plan.scheme,
                                                                     "cv.folds": plan.n_folds, "cv.seed": plan.seed},
                    metrics={tk.M_CV_SCORE: float(np.mean(scores)), tk.M_MODEL_BYTES: float(np.mean([r.model_bytes for r in rs]))},
                    tags={tk.TAG_FOLDS_HASH: plan.hash, tk.TAG_DATA: data.fingerprint},
                    steps={tk.M_FIT_SECONDS: [r.fit_seconds for r in rs], tk.M_PREDICT_SECONDS: [r.predict_seconds for r in rs],
                           tk.M_PEAK_MEMORY: [float(r.peak_memory_bytes) for r in rs]})
        tracker.finish(children[m.name], ok=True)
    if len(models) > 1:
        rows.append(LeaderboardRow(f"ensemble ({ens.method})", ens.cv_score, tuple(ens.fold_scores), 0.0,
                                   note=", ".join(f"{k}={v:.2f}" for k, v in ens.weights.items())))
    leaderboard = leaderboard_markdown(rows, inputs.metric)
    oof_preds = {n: _assemble_oof(rs, len(data.y)) for n, rs in dag.folds.items()} | {"ensemble": ens.oof}
    oof = oof_frame(data, plan, oof_preds)
    outputs: dict[str, Path | None] = {"oof": out_dir / "oof.parquet", "test_predictions": None,
                                       "submission": None, "leaderboard": out_dir / "leaderboard.md",
                                       "feature_importance": None}
    oof.to_parquet(outputs["oof"], index=False)
    outputs["leaderboard"].write_text(f"# {spec.name}: cross-validation leaderboard\n\n{leaderboard}")
    if data.X_test is not None and ens.test is not None:
        test_preds = {n: _average_test(rs) for n, rs in dag.folds.items()} | {"ensemble": ens.test}
        outputs["test_predictions"] = out_dir / "test_predictions.parquet"
        outputs["submission"] = out_dir / "submission.csv"
        test_frame(data, test_preds).to_parquet(outputs["test_predictions"], index=False)
        submission_frame(data, ens.test).to_csv(outputs["submission"], index=False)
    (out_dir / "spec.yaml").write_text(to_yaml(spec))
    importances = {n: imp for n, rs in dag.folds.items() if (imp := mean_importance(rs))}
    if importances:
        outputs["feature_importance"] = out_dir / "feature_importance.json"
        outputs["feature_importance"].write_text(json.dumps(importances, indent=1))
    slices = slice_summary(spec.slices, data, plan, oof_preds, inputs.metric)
    summary = {
        "command": "run",
        "experiment": spec.experiment,
        "run_id": parent,
        "tracking_uri": tracker.uri,
        "task": data.task,
        "metric": inputs.metric,
        "greater_is_better": True,
        "folds": {"scheme": plan.scheme, "n": plan.n_folds, "seed": plan.seed, "hash": plan.hash},
        "data_fingerprint": data.fingerprint,
        "rows": {"train": int(len(data.y)), "test": int(len(data.X_test)) if data.X_test is not None else 0,
                 "features": len(data.columns)},
        "models": model_summaries,
        "ensemble": {"method": ens.method, "weights": ens.weights, "cv_score": ens.cv_score,
                     "fold_scores": list(ens.fold_scores), "cached": dag.ensemble_cached},
        "slices": slices,
        "warnings": warnings,
        "wall_seconds": time.perf_counter() - wall_start,
        "startup_seconds": startup_seconds,
        "phase_seconds": phases | {"outputs_and_tracking": time.perf_counter() - tick},
        "outputs": {k: storage.relocate(v, out_dir, target) for k, v in outputs.items()},
    }
    write_json(out_dir / "summary.json", summary)
    slice_metrics = {tk.metric_key(tk.M_SLICE, name, model): v for name, row in slices.items()
                     for model, v in row["scores"].items() if not np.isnan(v)}
    tracker.log(parent, metrics={tk.M_CV_SCORE: ens.cv_score, "wall_seconds": summary["wall_seconds"],
                                 "startup_seconds": startup_seconds} | slice_metrics
                | {f"{tk.M_CV_SCORE}.{k}": v["cv_score"] for k, v in model_summaries.items()},
                tags={tk.TAG_FOLDS_HASH: plan.hash, tk.TAG_DATA: data.fingerprint,
                      tk.TAG_DATA_WARNINGS: str(len(warnings))},
                steps={tk.M_FOLD_SCORE: ens.fold_scores})
    tracker.log_artifacts(parent, out_dir)
    storage.publish_folder(out_dir, target)
    return CVResult(summary=summary, oof=oof, out_dir=out_dir if not storage.is_uri(target) else target, leaderboard=leaderboard,
                    fold_results=tuple(r for rs in dag.folds.values() for r in rs))


def mean_importance(results: list[FoldResult]) -> dict[str, float]:
    """A model's per-column importance averaged over folds ({} when its adapter reports none)."""
    per_fold = [r.importance for r in results if r.importance]
    if not per_fold:
        return {}
    columns = sorted({c for imp in per_fold for c in imp})
    return {c: float(np.mean([imp.get(c, 0.0) for imp in per_fold])) for c in columns}


def slice_summary(slices: dict[str, str], data: PreparedData, plan: FoldPlan, oof: dict[str, np.ndarray],
                  metric: str) -> dict[str, dict[str, Any]]:
    """Each spec slice's OOF score per model and the ensemble: {name: {query, rows, scores{model: score}}}."""
    if not slices:
        return {}
    frame = feature_frame(data.X, data.columns, data.categories).assign(fold=plan.fold_of_row)
    table = slice_scores(frame, slices, data.y, oof, metric, data.task)
    return {name: {"query": slices[name], "rows": int(row.pop("rows")), "scores": row} for name, row in table.items()}


def _model_params(m: ModelConfig) -> dict[str, Any]:
    return {"name": m.name, "type": m.type, "estimator": m.estimator, "params": m.params,
            "preprocess": ",".join(m.preprocess), "resources": {"cpus": m.cpus, "gpus": m.gpus, "memory": m.memory}}



class _progress_bar:
    """A rich progress bar of folds done (on stderr), or nothing when disabled."""

    def __init__(self, enabled: bool, total: int, done: int = 0) -> None:
        self.enabled, self.total, self.done = enabled, total, done
        self._progress = None

    def __enter__(self) -> _progress_bar:
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(TextColumn("[bold]folds"), BarColumn(), MofNCompleteColumn(),
                                      TimeElapsedColumn(), TextColumn("{task.description}"),
                                      console=Console(stderr=True))
            self._progress.start()
            self._task = self._progress.add_task(f"{self.done} from the cache" if self.done else "",
                                                 total=self.total, completed=self.done)
        return self

    def advance(self, description: str) -> None:
        if self._progress is not None:
            self._progress.update(self._task, advance=1, description=description)

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()
