"""`run_sweep`: validate -> data and folds once -> the MLflow parent -> Ray Tune's trials -> outputs.

Everything the sweep writes after its parent run exists ends: the parent and every trial run
end FINISHED, FAILED or KILLED (never RUNNING), and `sweep.json` says whether a `--resume`
can continue it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from foldwise.infra.storage import is_uri, join, outputs_root
from foldwise.tasks.data import PreparedData, prepare_data, prepare_frames
from foldwise.tasks.folds import FoldPlan
from foldwise.tasks.models import ModelConfig
from foldwise.tasks.sweep_report import best_of, counts
from foldwise.workflows.commands.sweep.finish import SweepContext, SweepResult, finish
from foldwise.workflows.commands.sweep.plan import SweepPlan, ensemble_problem_for, plan_sweep, spec_hash
from foldwise.workflows.commands.sweep.progress import SweepProgress
from foldwise.workflows.commands.sweep.state import SweepState, resolve_storage, resumable
from foldwise.workflows.engine.cache import Cache
from foldwise.workflows.engine.executor import RayExecutor, make_executor
from foldwise.workflows.engine.frame_server import start_frame_server, stop_frame_server
from foldwise.workflows.engine.tune import Replay, TrialInputs, TuneJob, plan_slots, report_points, run_tuner
from foldwise.workflows.engine.tune_search import SearchConfig
from foldwise.workflows.errors import InputError, RunFailed, TaskFailed
from foldwise.workflows.pipeline.dag import fold_plan, node_keys
from foldwise.workflows.pipeline.inputs import Inputs, usable_tracking_uri, validate_inputs
from foldwise.workflows.pipeline.preflight import preflight
from foldwise.workflows.pipeline.provenance import code_version, git_commit
from foldwise.workflows.pipeline.search_space import MODEL_KEY
from foldwise.workflows.pipeline.spec import WorkflowSpec, load_spec
from foldwise.workflows.pipeline.steps import run_steps
from foldwise.workflows.pipeline.sweep_frames import SteppedData
from foldwise.workflows.tracking import tracker as tk
from foldwise.workflows.tracking.sweep_book import MlflowWriter, SweepBook, TrialRecord, end_open_trials, reconcile


def run_sweep(spec: WorkflowSpec | str | Path, *, overrides: Sequence[str] = (), trials: int | None = None,
              concurrency: int | None = None, timeout: float | None = None, resume: str | None = None,
              out: str | Path | None = None, tracking_uri: str | None = None, address: str | None = None,
              storage: str | None = None, progress: bool = False, no_cache: bool = False,
              cache_root: str | None = None, register: str | None = None) -> SweepResult:
    """The Python API of `foldwise sweep` (`resume`: None, "latest", or the sweep's parent run id).

    `out`: the outputs' folder (or URI); default `$FOLDWISE_OUTPUTS` (or outputs/) / spec name /
    parent run id. Raises SpecError/InputError (nothing started, nothing logged) or RunFailed.
    """
    wall_start = time.perf_counter()
    if not isinstance(spec, WorkflowSpec):
        spec = load_spec(spec, overrides)
    plan = plan_sweep(spec, trials, concurrency, timeout)
    if register and not plan.refit:
        raise InputError("--register registers the refit's model: set search.refit: true (or drop --register)")
    inputs = validate_inputs(spec)
    if plan.ensemble is not None and (problem := ensemble_problem_for(spec, plan.ensemble, inputs.task)):
        raise InputError(problem)
    storage_root = resolve_storage(storage)
    prior: SweepState | None = None
    if resume is not None:
        prior = resumable(storage_root, spec, resume, trials=trials, timeout=timeout, tracking_uri=tracking_uri)
        plan = replace(plan, trials=prior.trials, timeout=prior.timeout)
        uri = prior.tracking_uri
    else:
        uri = usable_tracking_uri(tracking_uri, spec)
    preflight(spec, task=inputs.task, out=out, cache_root=cache_root, address=address)

    ex = make_executor("ray", address)
    assert isinstance(ex, RayExecutor)
    try:
        return _sweep(spec, plan, inputs, ex, prior, out=out, uri=uri, storage_root=storage_root,
                      progress=progress, no_cache=no_cache, cache_root=cache_root, wall_start=wall_start,
                      register=register)
    finally:
        ex.close()


def _prepare(ex: RayExecutor, cache: Cache, spec: WorkflowSpec, inputs: Inputs, model: ModelConfig,
             version: str) -> tuple[PreparedData, FoldPlan, Any, Any]:
    """The data and the fold plan, once, in the object store (from the cache when `foldwise run` made them)."""
    keys = node_keys(spec, inputs, [model], version)
    data, plan = cache.get("data", keys.data), cache.get("plan", keys.plan)
    if data is None and keys.steps is not None:  # the spec's frame steps first: trials fit on their columns
        data = prepare_frames(inputs.data, *run_steps(ex, cache, spec, inputs, keys.steps)[0])
        cache.put("data", keys.data, data)
    data_ref = ex.put(data) if data is not None else ex.submit(prepare_data, inputs.data, name="prepare")
    if plan is None:
        plan = fold_plan(spec, inputs)  # on the driver, from the validated target and groups
        cache.put("plan", keys.plan, plan)
    plan_ref = ex.put(plan)
    if data is None:
        data = ex.get(data_ref)
        cache.put("data", keys.data, data)
    return data, plan, data_ref, plan_ref


def pruner_history(adopted: Sequence[TrialRecord], replays: dict[str, Replay]) -> tuple[tuple[str, tuple[float, ...]], ...]:
    """What the trials that ended before a resume reported to the pruner: their running score after each fold.

    Trials that replay report again themselves; failed and interrupted ones reported nothing that counts.
    """
    out = []
    for rec in adopted:
        if rec.state in ("completed", "pruned") and rec.trial_id not in replays and rec.fold_scores:
            scores = [rec.fold_scores[k] for k in sorted(rec.fold_scores)]
            out.append((rec.trial_id, tuple(float(np.mean(scores[:i + 1])) for i in range(len(scores)))))
    return tuple(out)


def _absolute(target: str) -> str:
    """A local outputs folder as an absolute path (what `--resume` writes to); a URI as it is."""
    return target if is_uri(target) else str(Path(target.removeprefix("file://")).resolve())


def _sweep(spec: WorkflowSpec, plan: SweepPlan, inputs: Inputs, ex: RayExecutor, prior: SweepState | None, *,
           out: str | Path | None, uri: str, storage_root: Path, progress: bool, no_cache: bool,
           cache_root: str | None, wall_start: float, register: str | None = None) -> SweepResult:
    phases: dict[str, float] = {"validate_and_start": time.perf_counter() - wall_start}
    tick = time.perf_counter()
    version = code_version(list(plan.models) or [plan.model])
    cache = Cache(cache_root, enabled=not no_cache)
    try:
        data, folds, data_ref, plan_ref = _prepare(ex, cache, spec, inputs, plan.model, version)
    except TaskFailed as e:
        raise RunFailed(f"{e.task}: {e.error}", None) from None
    n_folds = folds.n_splits  # repeated CV: every repeat x fold is a step of the trial
    slots = plan_slots(plan.model, n_folds, parallel_folds=plan.parallel_folds, concurrency=plan.concurrency)
    phases["prepare"] = time.perf_counter() - tick
    tick = time.perf_counter()
    tracker = tk.Tracker(uri, spec.experiment)
    reader = tk.RunReader(uri)
    tags = {tk.TAG_COMMAND: "sweep", tk.TAG_GIT: git_commit(), tk.TAG_CODE: version} | tk.process_tags()
    facts = {tk.TAG_MODEL: ",".join(m.name for m in plan.models) or plan.model.name, tk.TAG_FOLDS_HASH: folds.hash, tk.TAG_DATA: data.fingerprint}
    if prior is None:
        tracker.fail_abandoned_runs()
        parent = tracker.start_run(f"sweep-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}", {**tags, **facts})
    else:
        parent = prior.parent_run_id
    # From here on the parent run exists: whatever happens, it and its trials end (never RUNNING).
    state, writer, status, ok, killed = prior, None, "failed", False, False
    frames = None
    try:
        if plan.step_keys:  # trials search frame-step params: each distinct set's data is built once, cached
            builder = SteppedData(spec, inputs, plan.model, version, cache, folds)
            frames = start_frame_server(builder, {builder.key({}): data_ref})
        replays: dict[str, Replay] = {}
        adopted: list[TrialRecord] = []
        if prior is None:
            target = str(out) if out else join(outputs_root(), spec.name, parent)
            folder = storage_root / spec.name / parent
            state = SweepState(parent_run_id=parent, spec_name=spec.name, experiment=spec.experiment,
                               tracking_uri=uri, spec_hash=spec_hash(spec), trials=plan.trials, timeout=plan.timeout,
                               out_dir=_absolute(target), tune_path=str(folder / "tune"), status="running",
                               started=datetime.now(timezone.utc).isoformat()).save()
            tracker.log(parent, params=tk.flatten(spec.model_dump(mode="json")) | {
                "task": inputs.task, "metric": inputs.metric, "cv.scheme": inputs.scheme,
                "sweep.trials": plan.trials, "sweep.concurrency": slots.concurrency,
                "sweep.parallel_fold_bundles": slots.bundles, "sweep.timeout": plan.timeout,
                "sweep.sampler": plan.sampler, "sweep.sampler_seed": plan.sampler_seed,
                "sweep.storage": state.tune_path})
        else:
            target = str(out) if out else prior.out_dir
            adopted, replays = reconcile(reader, tracker, prior.parent_run_id, prior.tune_path, plan.typed_params, n_folds)
            tracker.reopen(parent)
            state = prior.save(status="running", resumes=prior.resumes + 1)
            tracker.log(parent, tags={**tk.process_tags(), "foldwise.resumes": str(state.resumes)})
            tracker.fail_abandoned_runs()
        writer = MlflowWriter(tracker)
        deadline = time.time() + plan.timeout if plan.timeout else None
        phases["tracking_setup"] = time.perf_counter() - tick
        tick = time.perf_counter()
        with SweepProgress(progress, plan.trials, inputs.metric) as bar:
            book = SweepBook(writer, parent, n_folds, {**tags, **facts, tk.TAG_COMMAND: "sweep-trial"}, bar, deadline)
            for rec in adopted:
                book.adopt(rec)
            bar.update(book)
            trial_inputs = TrialInputs(data=data_ref, plan=plan_ref, model=plan.model, metric=inputs.metric,
                                       seed=spec.cv.seed, n_folds=n_folds, parallel_folds=plan.parallel_folds,
                                       bundles=slots.bundles, report_at=report_points(plan.pruner, n_folds),
                                       replays=replays, models={m.name: m for m in plan.models},
                                       choice_key=MODEL_KEY if plan.multi else None,
                                       step_keys=plan.step_keys, frames=frames)
            search = SearchConfig(space=plan.search_space(), seed=plan.sampler_seed, sampler=plan.sampler,
                                  objectives=plan.objectives, grid=plan.grid, storage=plan.storage,
                                  study_name=f"{spec.name}-{parent}", baselines=plan.baselines)
            job = TuneJob(tune_path=state.tune_path, search=search, pruner=plan.pruner, trials=plan.trials,
                          timeout=plan.timeout, resume=prior is not None,
                          pruner_history=pruner_history(adopted, replays))
            rungs = run_tuner(job, trial_inputs, slots, book)
            writer.flush()
            bar.update(book, force=True)
        phases["tune"] = time.perf_counter() - tick
        if book.interrupted:
            raise KeyboardInterrupt
        status = "finished"  # Tune is done with it: nothing is left to resume, whatever comes next
        outcomes = book.outcomes()
        best = best_of(outcomes)
        if best is None:
            c = counts(outcomes)
            first = next((o.error for o in outcomes if o.error), None)
            raise RunFailed(f"no trial completed ({c['failed']} failed, {c['pruned']} pruned, {c['stopped']} stopped"
                            + (f"; first error: {first}" if first else "") + ")", parent)
        ctx = SweepContext(spec=spec, plan=plan, inputs=inputs, folds=folds, data_fingerprint=data.fingerprint, rungs=rungs,
                           tracker=tracker, parent=parent, state=state, out=target, slots=slots,
                           startup_seconds=ex.startup_seconds, tracking_uri=uri, wall_start=wall_start, phases=phases,
                           progress=progress, no_cache=no_cache, cache_root=cache_root, register=register)
        result = finish(ctx, outcomes, best)
        ok = True
        return result
    except KeyboardInterrupt:
        killed = True
        if status == "finished":  # the trials had all ended: only the outputs or the refit were cut
            raise RunFailed(f"interrupted after every trial ended, before the outputs were complete "
                            f"(MLflow run {parent} marked KILLED; trials.csv and the trial runs are complete)", None) from None
        status = "interrupted"
        raise RunFailed(f"interrupted (MLflow run {parent} marked KILLED); continue it with: "
                        f"foldwise sweep SPEC --resume {parent}", None) from None
    except RunFailed:
        raise
    except Exception as e:  # noqa: BLE001 - any other failure still ends the runs
        raise RunFailed(f"{type(e).__name__}: {e}", parent) from e
    finally:
        if frames is not None:
            stop_frame_server(frames)
        if writer is not None:
            try:
                writer.flush()
            except RuntimeError:
                pass
            writer.close()
        end_open_trials(tracker, reader, parent)
        tracker.end(parent, "FINISHED" if ok else ("KILLED" if killed else "FAILED"))
        if state is not None:
            state.save(status=status)
