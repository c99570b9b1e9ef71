"""`foldwise ablate`: the edge (spec, RunPlan, variants), the fold DAG, then the ablation's own nodes."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from foldwise.tasks.train import FoldResult
from foldwise.workflows.commands.ablate.nodes import CountingExecutor, run_dag
from foldwise.workflows.commands.ablate.plan import (
    BOOTSTRAP_DEFAULT,
    BOOTSTRAP_SLOW_DEFAULT,
    CLOSED_FORM_METRICS,
    MIN_BOOTSTRAP,
    AblationPlan,
    check_step_names,
    node_name,
    only_models,
    plan_variants,
)
from foldwise.workflows.commands.ablate.report import AblationResult, finish
from foldwise.workflows.engine.cache import Cache
from foldwise.workflows.engine.idle import on_idle_thread
from foldwise.workflows.engine.lazy import LazyExecutor
from foldwise.workflows.errors import InputError, RunFailed, TaskFailed
from foldwise.workflows.pipeline.dag import early_work, node_keys, submit_folds
from foldwise.workflows.pipeline.failures import OpenRuns, closes_on_failure, describe_failure, marks_runs_failed
from foldwise.workflows.pipeline.plan import RunPlan, plan_run
from foldwise.workflows.pipeline.preflight import preflight
from foldwise.workflows.pipeline.runs import MLFLOW_SETUP_WAIT_S, FoldLog, RunContext, open_runs, set_up_when
from foldwise.workflows.pipeline.spec import WorkflowSpec, load_spec
from foldwise.workflows.pipeline.steps import stepped_frames
from foldwise.workflows.tracking import tracker as tk


def run_ablation(spec: WorkflowSpec | str | Path, *, groups: Sequence[str] | None = None, steps: Sequence[str] | None = None,
                 models: Sequence[str] | None = None, overrides: Sequence[str] = (), out: str | Path | None = None,
                 tracking_uri: str | None = None, address: str | None = None, executor: str = "auto",
                 progress: bool = False, no_cache: bool = False, cache_root: str | None = None,
                 n_boot: int | None = None, repeats: int = 3) -> AblationResult:
    """The Python API of `foldwise ablate` (same data as summary.json).

    `groups`/`models` restrict the ablation to those names; `steps` adds a variant per frame step
    named (`["all"]`: every step) without the columns it and its descendants made; `n_boot` is the number of
    bootstrap resamples (default 1000, or 200 for metrics without a closed form);
    `repeats` the shuffles per group for permutation importance. Raises
    SpecError/InputError (nothing started, nothing logged) or RunFailed.
    """
    wall_start, started = time.perf_counter(), time.time()
    if not isinstance(spec, WorkflowSpec):
        spec = load_spec(spec, overrides)
    spec = only_models(spec, models)
    plan = plan_run(spec, tracking_uri)
    preflight(spec, task=plan.inputs.task, out=out, cache_root=cache_root, address=address, executor=executor)
    inputs = plan.inputs
    if n_boot is not None and n_boot < MIN_BOOTSTRAP:
        raise InputError(f"--bootstrap: at least {MIN_BOOTSTRAP} resamples for a 95% interval (got {n_boot})")
    if repeats < 1:
        raise InputError(f"--repeats: at least 1 shuffle per group (got {repeats})")
    n_boot = n_boot or (BOOTSTRAP_DEFAULT if inputs.metric in CLOSED_FORM_METRICS else BOOTSTRAP_SLOW_DEFAULT)
    if steps is not None:
        check_step_names(spec, steps)  # before any step runs
    base = list(plan.models)
    if any(m.seeds for m in base):  # variants refit every fold: one seed each keeps the ablation's cost
        print("foldwise: note: ablate fits each model once per fold with cv.seed; models.seeds (seed averaging) "
              "applies to foldwise run", file=sys.stderr)
        base = [replace(m, seeds=()) for m in base]
    ex = CountingExecutor(LazyExecutor(executor, address))
    cache = Cache(cache_root, enabled=not no_cache)
    base_keys = node_keys(spec, inputs, base, plan.version)
    work = early_work(cache, inputs, base, base_keys)  # the baseline's folds: a lower bound of the variants'
    if work is not None:  # Ray (unless the work is small) starts now, beside the steps and the variants' planning
        ex.expect_early(work)
    with closes_on_failure(ex, spec):  # the frame steps first: a step variant drops the columns they made
        frames, step_facts = stepped_frames(ex, cache, spec, inputs, base_keys.steps,
                                            needed=not cache.has("data", base_keys.data))
    try:
        variants = plan_variants(spec, inputs, groups, steps, step_facts)
    except InputError:
        ex.close()
        raise
    nodes = {node_name(v, m): (v, m) for v in variants for m in base}
    ablation = AblationPlan(variants=tuple(variants), nodes=nodes, n_boot=n_boot, repeats=repeats)
    fit_models = [replace(m, name=node) for node, (v, m) in nodes.items()]
    drops = {node: v.columns for node, (v, _) in nodes.items() if v.columns}
    keys = node_keys(spec, inputs, fit_models, plan.version, drops)
    # fits go in split by split (every variant of fold 0, then fold 1, ...): each split's bootstrap task can
    # start as soon as its own fits are done, while later splits are still fitting (same keys, same results)
    keys = replace(keys, folds=dict(sorted(keys.folds.items(), key=lambda item: item[0][1])))
    phases = {"validate": time.perf_counter() - wall_start}
    try:
        sub = submit_folds(ex, cache, spec, inputs, fit_models, keys, drops, frames=frames)  # runs while MLflow is set up below
    except TaskFailed as e:
        ex.close()
        raise RunFailed(describe_failure(e, spec), None) from None

    def log_fold(runs: OpenRuns, r: FoldResult) -> None:
        v, m = nodes[r.model]
        runs.tracker.log_step(runs.children[v.name], f"{tk.M_FOLD_SCORE}.{m.name}", r.score, step=r.fold)

    # MLflow is set up on a CPU the folds leave free, as in `foldwise run` (see pipeline.runs.set_up_when)
    runs = on_idle_thread(lambda: open_ablation_runs(plan, ablation, started), name="foldwise-mlflow-setup",
                          wait_at_most=MLFLOW_SETUP_WAIT_S)
    with marks_runs_failed(runs, ex, spec):
        log = FoldLog(runs, log_fold)
        dag = run_dag(ex, cache, sub, plan, ablation, fit_models, keys, log, set_up_when(runs), progress)
        opened = runs.result()
        log.flush()
        ctx = RunContext(plan=plan, runs=opened, out=out, wall_start=wall_start, startup_seconds=ex.startup_seconds,
                         phases=phases | dag.phases)
        return finish(ctx, ablation, dag, dict(ex.counts))


def open_ablation_runs(plan: RunPlan, ablation: AblationPlan, started: float) -> OpenRuns:
    """A parent run and one child per variant (tagged with the group it drops)."""
    children = {v.name: {tk.TAG_ABLATION_VARIANT: v.name} | ({tk.TAG_ABLATION_DROPPED: v.dropped} if v.dropped else {})
                for v in ablation.variants}
    return open_runs(plan, "ablate", children, started=started,
                     params={"ablation.groups": ",".join(v.name for v in ablation.variants[1:]),
                             "ablation.bootstrap": ablation.n_boot, "ablation.repeats": ablation.repeats})

