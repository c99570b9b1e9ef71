"""The frame-step nodes of the DAG: raw frames -> one task per `steps:` entry -> the stepped frames
the data node, the checks and the folds read.

Each step is a cached node keyed by its function's code (its module and the helper modules it
imports, tasks.code_hash), its params, its mode and its inputs' keys; the raw node is keyed by
the data files. All steps still to run are submitted at once, each with its inputs' results as
arguments, so Ray runs independent ones in parallel and a step waits only for its own inputs.
A step whose result breaks a rule (rows, id, a column named like the target) is bad input (exit 2,
nothing cached); a step that raises fails the run (exit 1), the steps done before stay cached.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from foldwise.tasks.code_hash import module_source_hash
from foldwise.tasks.data import DataError, read_table
from foldwise.tasks.steps import (
    RAW,
    FrameStepConfig,
    StepError,
    StepOutput,
    StepRaised,
    ancestors,
    apply_frame_steps,
    feature_frame,
    run_frame_step,
    topo_order,
    with_outputs,
    with_target,
)
from foldwise.workflows.engine.cache import Cache, key_of, source_stamp
from foldwise.workflows.engine.executor import Slot
from foldwise.workflows.engine.lazy import LazyExecutor, Work
from foldwise.workflows.errors import InputError, RunFailed, TaskFailed
from foldwise.workflows.pipeline.inputs import Inputs
from foldwise.workflows.pipeline.provenance import tasks_version
from foldwise.workflows.pipeline.spec import WorkflowSpec
from foldwise.workflows.pipeline.spec_steps import step_config

FACTS_KIND = "step_facts"  # cache kind of the small record of what the steps made, beside the data


@dataclass(frozen=True)
class StepKeys:
    """Content keys of the raw node and each step node; `final` (all steps) enters the data node's key."""

    raw: str
    steps: dict[str, str]  # step name -> key
    final: str
    configs: tuple[FrameStepConfig, ...]  # in topological order


def step_configs(spec: WorkflowSpec) -> tuple[FrameStepConfig, ...]:
    return tuple(topo_order([step_config(s) for s in spec.steps]))


def step_keys(spec: WorkflowSpec, inputs: Inputs) -> StepKeys | None:
    """The keys of the frame-step nodes, None for a spec without steps (its keys stay as they were)."""
    if not spec.steps:
        return None
    d = inputs.data
    raw = key_of("raw", source_stamp(d.train), source_stamp(d.test), d.target, d.id, tasks_version())
    keys: dict[str, str] = {RAW: raw}
    configs = step_configs(spec)
    for s in configs:
        module = s.fn.partition(":")[0]
        keys[s.name] = key_of("step", s.fn, module_source_hash(module), s.params, s.mode, [keys[i] for i in s.inputs])
    steps = {s.name: keys[s.name] for s in configs}
    return StepKeys(raw=raw, steps=steps, final=key_of("steps", list(steps.items())), configs=configs)


def _facts(outputs: dict[str, StepOutput], cached: set[str], keys: StepKeys) -> dict[str, dict[str, Any]]:
    return {name: {"columns": list(o.columns), "removed": list(o.removed), "seconds": o.seconds,
                   "cached": name in cached, "started": o.started, "ended": o.ended, "key": keys.steps[name]}
            for name, o in outputs.items()}


def cached_facts(cache: Cache, keys: StepKeys) -> dict[str, dict[str, Any]] | None:
    """What the steps made, recorded when they last ran for these keys (every step counts as cached)."""
    found = cache.get(FACTS_KIND, keys.final)
    return None if found is None else {n: f | {"cached": True} for n, f in found.items()}


def run_steps(ex: LazyExecutor, cache: Cache, spec: WorkflowSpec, inputs: Inputs, keys: StepKeys,
              raw: tuple[pd.DataFrame, pd.DataFrame | None] | None = None
              ) -> tuple[tuple[pd.DataFrame, pd.DataFrame | None], dict[str, dict[str, Any]]]:
    """The stepped (train, test) frames (train with its target back) and each step's facts
    (columns, seconds, cached). Steps found in the cache are not submitted.

    Raises InputError for a step result that breaks a rule (nothing cached) and TaskFailed
    for a step that raised (the steps that finished are cached first)."""
    d = inputs.data
    if raw is None:
        try:
            raw = (read_table(d.train), read_table(d.test) if d.test else None)
        except DataError as e:
            raise InputError(f"data: {e}") from None
    train, test = feature_frame(raw[0], d.target), feature_frame(raw[1], d.target) if raw[1] is not None else None
    outputs: dict[str, StepOutput] = {}
    for s in keys.configs:
        found = cache.get("step", keys.steps[s.name])
        if found is not None:
            outputs[s.name] = found
    cached = set(outputs)
    todo = [s for s in keys.configs if s.name not in cached]
    if todo:
        # `--executor auto` settles here when steps run first: in this process for small data (one step at a time)
        if hasattr(ex, "expect"):  # a sweep hands its RayExecutor itself
            ex.expect(Work(rows=len(train) + (len(test) if test is not None else 0), features=train.shape[1], fits=len(todo)))
        ups = ancestors(keys.configs)
        train_ref, test_ref = ex.put(train), ex.put(test) if test is not None else None
        handles: dict[str, Any] = {}
        for s in todo:  # topological order: every input already has a value or a handle
            args = [handles.get(a, outputs.get(a)) for a in ups[s.name]]
            handles[s.name] = ex.submit(run_frame_step, s, train_ref, test_ref, d.id, d.target, *args,
                                        slot=Slot(1.0, 0.0, retries=0), name=f"step {s.name}")
        names = {h: n for n, h in handles.items()}
        new: dict[str, StepOutput] = {}
        try:
            for handle, out in ex.as_completed(list(handles.values())):
                new[names[handle]] = out
        except TaskFailed:
            for handle, out in ex.finished(list(handles.values())):
                new[names[handle]] = out
            for name, out in new.items():  # completed steps stay cached
                if out.problem is None:
                    cache.put("step", keys.steps[name], out)
            ex.cancel(list(handles.values()))
            raise
        bad = next((o.problem for o in (new[s.name] for s in todo) if o.problem), None)
        if bad:
            raise InputError(bad)
        outputs |= new
    _check_collisions(keys.configs, outputs)
    for s in todo:
        cache.put("step", keys.steps[s.name], outputs[s.name])
    ordered = [outputs[s.name] for s in keys.configs]
    stepped_train, stepped_test = with_outputs(train, test, ordered)
    facts = _facts({s.name: outputs[s.name] for s in keys.configs}, cached, keys)
    cache.put(FACTS_KIND, keys.final, facts)
    return (with_target(stepped_train, raw[0], d.target), stepped_test), facts


def _check_collisions(configs: tuple[FrameStepConfig, ...], outputs: dict[str, StepOutput]) -> None:
    """Two steps neither of which depends on the other must not make the same column (which would win?)."""
    ups = ancestors(configs)
    names = [s.name for s in configs]
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            if a in ups[b] or b in ups[a]:
                continue
            both = sorted(set(outputs[a].columns) & set(outputs[b].columns))
            if both:
                raise InputError(f"steps {a!r} and {b!r} both make column(s) {both[:5]}; rename one, or make one "
                                 f"step an input of the other (inputs: [{a}])")


def stepped_frames(ex: LazyExecutor, cache: Cache, spec: WorkflowSpec, inputs: Inputs, keys: StepKeys | None,
                   needed: bool) -> tuple[tuple[pd.DataFrame, pd.DataFrame | None] | None, dict[str, dict[str, Any]]]:
    """The stepped frames when `needed` (a node that reads them is not cached), else None, and the
    steps' facts for summary.json; ({} facts, None) for a spec without steps."""
    if keys is None:
        return None, {}
    if not needed:
        facts = cached_facts(cache, keys)
        if facts is not None:
            return None, facts
    return run_steps(ex, cache, spec, inputs, keys)


def stepped_in_process(spec: WorkflowSpec, inputs: Inputs, train: pd.DataFrame, other: pd.DataFrame | None
                       ) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """The frame steps on frames already read, in this process and uncached (`foldwise check`, which
    compares train with a test set or an older version of the data and writes no cache entry).
    InputError for a result that breaks a rule, RunFailed naming the step when its function raises."""
    if not spec.steps:
        return train, other
    try:
        return apply_frame_steps(step_configs(spec), train, other, inputs.data.id, inputs.data.target)
    except StepError as e:
        raise InputError(str(e)) from None
    except StepRaised as e:
        raise RunFailed(str(e), None) from None
