"""`foldwise run`'s whole graph as one call: the fold DAG, its MLflow runs, outputs and summary.

`run` composes it with the edge (spec + RunPlan); a sweep's refit of its best params runs the
very same graph as a child run.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from foldwise.infra import storage
from foldwise.tasks.dag_picture import TO_RUN, DagNode, write_pictures
from foldwise.tasks.data import PreparedData
from foldwise.tasks.folds import FoldPlan
from foldwise.tasks.models import ModelConfig
from foldwise.tasks.repeats import repeat_scores, repeat_std
from foldwise.tasks.report import (
    LeaderboardRow,
    class_facts,
    leaderboard_markdown,
    submission_facts,
    write_json,
)
from foldwise.tasks.seeds import expand_seeds
from foldwise.tasks.train import FoldResult
from foldwise.workflows.engine.cache import Cache
from foldwise.workflows.engine.idle import on_idle_thread
from foldwise.workflows.engine.lazy import LazyExecutor
from foldwise.workflows.errors import RunFailed, TaskFailed
from foldwise.workflows.pipeline.dag import (
    DagOutput,
    checked_data,
    checks_key,
    early_work,
    gather,
    node_keys,
    submit_folds,
)
from foldwise.workflows.pipeline.dag_nodes import dag_nodes
from foldwise.workflows.pipeline.failures import OpenRuns, closes_on_failure, describe_failure, marks_runs_failed
from foldwise.workflows.pipeline.inputs import shown_warnings
from foldwise.workflows.pipeline.outputs import slice_summary, write_run_files
from foldwise.workflows.pipeline.plan import RunPlan
from foldwise.workflows.pipeline.run_model import log_model
from foldwise.workflows.pipeline.runs import MLFLOW_SETUP_WAIT_S, FoldLog, RunContext, open_runs, set_up_when
from foldwise.workflows.pipeline.steps import stepped_frames
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


def cross_validate(plan: RunPlan, *, out: str | Path | None = None, address: str | None = None,
                   executor: str = "auto", progress: bool = False, no_cache: bool = False,
                   cache_root: str | None = None, checks: bool = True, parent_run_id: str | None = None,
                   run_name: str | None = None, wall_start: float | None = None,
                   started: float | None = None, register: str | None = None) -> CVResult:
    """The run graph of a validated plan: checks -> data -> folds -> ensemble -> outputs, in MLflow.

    `checks` runs the cheap data checks of `foldwise check` first (no model, no drift): their
    errors stop the run before any task (InputError), their warnings go to stderr, summary.json
    and the MLflow run. `parent_run_id` nests the run under another command's MLflow run (a
    sweep's refit). `wall_start`/`started` date the command (perf_counter / epoch seconds) when
    it began before the plan. `register` names the MLflow registered model the run's logged model
    becomes a new version of. Raises InputError (nothing started, nothing logged) or RunFailed.
    """
    wall_start = time.perf_counter() if wall_start is None else wall_start
    started = time.time() if started is None else started
    spec, inputs, models = plan.spec, plan.inputs, list(plan.models)
    fit_models = expand_seeds(models)  # seed averaging: a node per model x seed x split
    keys = node_keys(spec, inputs, fit_models, plan.version)
    cache = Cache(cache_root, enabled=not no_cache)
    nodes = dag_nodes(spec, inputs, models, keys, cache, checks)  # the graph as it stands before this run, drawn with the outputs
    ex = LazyExecutor(executor, address)
    work = early_work(cache, inputs, fit_models, keys)
    if work is not None:  # folds to fit and not small: Ray starts now, beside the steps and the data checks
        ex.expect_early(work)
    tick = time.perf_counter()
    with closes_on_failure(ex, spec):  # the frame steps first (when a node that reads their frames must run): the checks see them
        frames, step_facts = stepped_frames(ex, cache, spec, inputs, keys.steps, needed=not cache.has("data", keys.data)
                                            or (checks and not cache.has("checks", checks_key(spec, keys))))
        steps_seconds = time.perf_counter() - tick
        warnings, frames = checked_data(cache, spec, inputs, keys, frames) if checks else ([], frames)
    timeline = {"checks_done": time.perf_counter() - wall_start}
    warnings = shown_warnings(warnings, spec, inputs.scheme)
    for line in warnings:
        print(f"foldwise: warning: {line}", file=sys.stderr)
    phases = {"validate": time.perf_counter() - wall_start - steps_seconds, "steps": steps_seconds}
    try:
        dag = submit_folds(ex, cache, spec, inputs, fit_models, keys, frames=frames)  # runs while MLflow is set up below
        del frames  # the driver keeps the prepared arrays (in the object store), not the frames
    except TaskFailed as e:
        ex.close()
        raise RunFailed(describe_failure(e, spec), None) from None
    # MLflow is set up (imported, store opened, runs started) on a thread while the folds run, when it
    # costs them least (see set_up_when): fold results finished before that wait for it in `log`.
    runs = on_idle_thread(lambda: open_runs(plan, "run", {m.name: {tk.TAG_MODEL: m.name} for m in models},
                                            started=started, run_name=run_name, parent_id=parent_run_id),
                          name="foldwise-mlflow-setup", wait_at_most=MLFLOW_SETUP_WAIT_S)
    with marks_runs_failed(runs, ex, spec):
        log = FoldLog(runs, _log_fold)
        result = gather(ex, cache, dag, spec, inputs, fit_models, keys, log, progress, set_up_when(runs))
        ex.close_beside()  # every task is done: Ray shuts down beside the outputs and the logging (joined on exit)
        tick = time.perf_counter()
        opened = runs.result()
        log.flush()
        phases |= {"tracking_setup": runs.seconds, "tracking_wait": time.perf_counter() - tick}
        ctx = RunContext(plan=plan, runs=opened, out=out, wall_start=wall_start, startup_seconds=ex.startup_seconds,
                         phases=phases | result.phases | cache.io_seconds(), warnings=tuple(warnings),
                         executor=ex.chosen, ray_start_seconds=ex.start_seconds,
                         timeline=timeline | ex.timeline(wall_start))
        return _finish(ctx, result, register, step_facts, nodes)


def model_folds(plan: RunPlan, *, address: str | None = None, executor: str = "auto", cache_root: str | None = None
                ) -> DagOutput:
    """The run graph's data, fold results and the spec's ensemble, with no MLflow run and no outputs.

    What a sweep's ensemble phase searches on (the best trials' OOF) before its refit: every node
    goes to the cache at `cache_root`, so a `cross_validate` of the same models after it trains
    nothing again. Raises RunFailed when a task fails."""
    spec, inputs = plan.spec, plan.inputs
    fit_models = expand_seeds(list(plan.models))
    keys = node_keys(spec, inputs, fit_models, plan.version)
    cache = Cache(cache_root, enabled=True)
    ex = LazyExecutor(executor, address)
    with closes_on_failure(ex, spec):
        sub = submit_folds(ex, cache, spec, inputs, fit_models, keys)
        dag = gather(ex, cache, sub, spec, inputs, fit_models, keys, lambda r: None, False, lambda busy, cap: None)
    ex.close()
    return dag


def _log_fold(runs: OpenRuns, r: FoldResult) -> None:
    runs.tracker.log_step(runs.children[r.model], tk.M_FOLD_SCORE, r.score, step=r.fold)
    log_fold_run(runs.tracker, runs.children[r.model], r)


def _finish(ctx: RunContext, dag: DagOutput, register: str | None = None, step_facts: dict[str, Any] | None = None,
            nodes: list[DagNode] | None = None) -> CVResult:
    """Outputs, summary.json and the MLflow logs of a finished DAG; the runs end FINISHED."""
    spec, inputs, models = ctx.spec, ctx.plan.inputs, ctx.plan.models
    tracker, parent, children = ctx.tracker, ctx.parent, ctx.runs.children
    warnings = list(ctx.warnings)
    tick = time.perf_counter()
    data, plan, ens = dag.data, dag.plan, dag.ensemble
    target = ctx.out_target()
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
        } | _repeat_facts(scores, plan)
        best = {r.fold: int(r.best_iteration) for r in rs if r.best_iteration is not None}
        if best:
            model_summaries[m.name]["best_iteration"] = [best.get(r.fold) for r in rs]
        rows.append(LeaderboardRow(m.name, float(np.mean(scores)), tuple(scores), sum(r.fit_seconds for r in rs)))
        tracker.log(children[m.name],
                    params=tk.flatten({"model": _model_params(m)}) | {"metric": inputs.metric, "cv.scheme": plan.scheme,
                                                                     "cv.folds": plan.n_folds, "cv.seed": plan.seed,
                                                                     "cv.repeats": plan.repeats},
                    metrics={tk.M_CV_SCORE: float(np.mean(scores)), tk.M_MODEL_BYTES: float(np.mean([r.model_bytes for r in rs]))},
                    tags={tk.TAG_FOLDS_HASH: plan.hash, tk.TAG_DATA: data.fingerprint},
                    steps={tk.M_FIT_SECONDS: [r.fit_seconds for r in rs], tk.M_PREDICT_SECONDS: [r.predict_seconds for r in rs],
                           tk.M_PEAK_MEMORY: [float(r.peak_memory_bytes) for r in rs]}
                    | ({tk.M_BEST_ITERATION: {k: float(v) for k, v in best.items()}} if best else {}))
    if len(models) > 1:
        rows.append(LeaderboardRow(f"ensemble ({ens.method})", ens.cv_score, tuple(ens.fold_scores), 0.0,
                                   note=", ".join(f"{k}={v:.2f}" for k, v in ens.weights.items())))
    leaderboard = leaderboard_markdown(rows, inputs.metric)
    oof_preds, oof, outputs = write_run_files(out_dir, spec, dag, leaderboard)
    slices = slice_summary(spec.slices, data, plan, oof_preds, inputs.metric)
    pictures = write_pictures(nodes, Path(out_dir), spec.name) if nodes else {}  # logged with the outputs below
    summary = {
        "command": "run",
        "experiment": spec.experiment,
        "run_id": parent,
        "tracking_uri": tracker.uri,
        "task": data.task,
        "metric": inputs.metric,
        "greater_is_better": True,
        "folds": {"scheme": plan.scheme, "n": plan.n_folds, "seed": plan.seed, "hash": plan.hash, "repeats": plan.repeats},
        "data_fingerprint": data.fingerprint,
        "rows": {"train": int(len(data.y)), "test": int(len(data.X_test)) if data.X_test is not None else 0,
                 "features": len(data.columns)},
        **class_facts(data),
        "submission": submission_facts(data, spec.submission.kind, spec.submission.column) if outputs["submission"] else None,
        "models": model_summaries,
        "ensemble": {"method": ens.method, "weights": ens.weights, "cv_score": ens.cv_score,
                     "fold_scores": list(ens.fold_scores), "cached": dag.ensemble_cached}
                    | _repeat_facts(ens.fold_scores, plan),
        "slices": slices,
        "steps": step_facts or {},
        "dag": {"nodes": len(nodes or []), "to_run": sum(n.state == TO_RUN for n in nodes or []),
                "pictures": {k: storage.relocate(v, out_dir, target) for k, v in pictures.items()}},
        "warnings": warnings,
        "wall_seconds": time.perf_counter() - ctx.wall_start,
        "startup_seconds": ctx.startup_seconds,
        "ray_start_seconds": ctx.ray_start_seconds,
        "timeline": dict(ctx.timeline),
        "executor": ctx.executor,
        "phase_seconds": dict(ctx.phases) | {"outputs_and_tracking": time.perf_counter() - tick},
        "outputs": {k: storage.relocate(v, out_dir, target) for k, v in outputs.items()},
    }
    slice_metrics = {tk.metric_key(tk.M_SLICE, name, model): v for name, row in slices.items()
                     for model, v in row["scores"].items() if not np.isnan(v)}
    tracker.log(parent, metrics={tk.M_CV_SCORE: ens.cv_score, "wall_seconds": summary["wall_seconds"],
                                 "startup_seconds": ctx.startup_seconds} | slice_metrics
                | {f"{tk.M_CV_SCORE}.{k}": v["cv_score"] for k, v in model_summaries.items()},
                tags={tk.TAG_FOLDS_HASH: plan.hash, tk.TAG_DATA: data.fingerprint,
                      tk.TAG_DATA_WARNINGS: str(len(warnings))} | _class_tags(data),
                steps={tk.M_FOLD_SCORE: ens.fold_scores})
    tick = time.perf_counter()
    summary["model"] = log_model(ctx.plan, dag, tracker.uri, parent, register)
    summary["phase_seconds"]["log_model"] = time.perf_counter() - tick
    write_json(out_dir / "summary.json", summary)
    tracker.log_artifacts(parent, out_dir)
    storage.publish_folder(out_dir, target)
    for m in models:  # only now: a failure writing the outputs leaves every child FAILED with the parent
        tracker.finish(children[m.name], ok=True)
    return CVResult(summary=summary, oof=oof, out_dir=out_dir if not storage.is_uri(target) else target, leaderboard=leaderboard,
                    fold_results=tuple(r for rs in dag.folds.values() for r in rs))


def _repeat_facts(split_scores: list[float], plan: FoldPlan) -> dict[str, Any]:
    """Repeated CV: each repeat's mean score and their standard deviation (fold_scores run repeat by repeat)."""
    if plan.repeats == 1:
        return {}
    return {"repeat_scores": repeat_scores(split_scores, plan.n_folds), "repeat_std": repeat_std(split_scores, plan.n_folds)}


def _class_tags(data: PreparedData) -> dict[str, str]:
    """The class order on the parent run, so a probability read back from MLflow says what it is of."""
    facts = class_facts(data)
    if not facts["classes"]:
        return {}
    tags = {tk.TAG_CLASSES: json.dumps(facts["classes"], default=str)}
    if "positive_class" in facts:
        tags[tk.TAG_POSITIVE_CLASS] = str(facts["positive_class"])
    return tags


def _model_params(m: ModelConfig) -> dict[str, Any]:
    return {"name": m.name, "type": m.type, "estimator": m.estimator, "params": m.params,
            "preprocess": ",".join(m.preprocess), "resources": {"cpus": m.cpus, "gpus": m.gpus, "memory": m.memory}}

