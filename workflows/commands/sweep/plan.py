"""The sweep's plan: the search section and the command's flags, validated before anything starts."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any

from foldwise.tasks.models import ModelConfig
from foldwise.workflows.errors import InputError
from foldwise.workflows.pipeline.inputs import model_param_problem
from foldwise.workflows.pipeline.plan import model_config
from foldwise.workflows.pipeline.search_space import ParamDist, parse_space, to_optuna
from foldwise.workflows.pipeline.spec import WorkflowSpec


@dataclass(frozen=True)
class SweepPlan:
    """Everything the sweep needs, checked at the edge."""

    model: ModelConfig  # the tuned model with the spec's fixed params
    model_index: int
    space: tuple[ParamDist, ...]
    trials: int
    concurrency: int | None  # None -> what the cluster holds
    timeout: float | None
    pruner: str
    parallel_folds: bool
    refit: bool
    seed: int
    # the model's own params for the space's keys, where they lie inside it: enqueued as trial 0
    # (the baseline trial), so a sweep's best is never worse than the untuned model
    baseline: dict[str, Any] = field(default_factory=dict)
    baseline_skipped: dict[str, str] = field(default_factory=dict)  # space key -> why it is not in `baseline`

    def distributions(self) -> dict[str, Any]:
        """The space as Optuna distributions (the searcher's, and the study the plots are drawn from)."""
        return {d.name: to_optuna(d) for d in self.space}

    def typed_params(self, raw: dict[str, str]) -> dict[str, Any]:
        """MLflow keeps params as text; give them back their types from the space."""
        out: dict[str, Any] = {}
        for d in self.space:
            if d.name not in raw:
                continue
            text = raw[d.name]
            if d.kind == "int":
                out[d.name] = int(float(text))
            elif d.kind == "float":
                out[d.name] = float(text)
            else:
                out[d.name] = next((c for c in d.choices if str(c) == text), text)
        return out


def plan_sweep(spec: WorkflowSpec, trials: int | None = None, concurrency: int | None = None,
               timeout: float | None = None) -> SweepPlan:
    """The search section and the command's flags, or InputError naming the key (exit 2)."""
    search = spec.search
    if search is None:
        raise InputError("spec has no search section; add search: {model: NAME, space: {PARAM: {loguniform: [LOW, HIGH]}}}")
    names = [m.name for m in spec.models]
    if search.model is None and len(names) > 1:
        raise InputError(f"search.model: name the model to tune (one of {', '.join(names)})")
    index = names.index(search.model) if search.model is not None else 0
    if not search.space:
        raise InputError("search.space is empty; name at least one parameter, e.g. learning_rate: {loguniform: [0.01, 0.3]}")
    space = parse_space(search.space)
    m = spec.models[index]
    for dist in space:
        if "/" in dist.name:
            raise InputError(f"search.space.{dist.name}: a parameter name cannot contain '/'")
        problem = model_param_problem(m.type, m.estimator, {dist.name: dist.example})
        if problem:
            raise InputError(f"search.space.{dist.name}: {problem}")
    if trials is not None and trials < 1:
        raise InputError(f"--trials must be at least 1 (got {trials})")
    if concurrency is not None and concurrency < 1:
        raise InputError(f"--concurrency must be at least 1 (got {concurrency})")
    if timeout is not None and timeout <= 0:
        raise InputError(f"--timeout must be > 0 seconds (got {timeout})")
    model = model_config(m)
    baseline, skipped = baseline_point(model.params, space)
    return SweepPlan(model=model, model_index=index, space=space, trials=trials or search.trials,
                     concurrency=concurrency, timeout=timeout, pruner=search.pruner,
                     parallel_folds=search.parallel_folds, refit=search.refit, seed=spec.cv.seed,
                     baseline=baseline, baseline_skipped=skipped)


def baseline_point(params: dict[str, Any], space: tuple[ParamDist, ...]) -> tuple[dict[str, Any], dict[str, str]]:
    """The model's own values of the space's keys that lie inside it, and why each other key is left out.

    A key left out is sampled in trial 0 like any other trial's: then trial 0 is not the untuned model.
    """
    point: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    for d in space:
        if d.name not in params:
            skipped[d.name] = "not in the model's params"
        elif not inside(d, params[d.name]):
            skipped[d.name] = f"the model's value {params[d.name]!r} is outside the space"
        else:
            point[d.name] = params[d.name]
    return point, skipped


def inside(d: ParamDist, value: Any) -> bool:
    """Whether the space's distribution can draw `value` (its range, its step grid, its choices)."""
    if d.kind == "categorical":
        return any(value == c and type(value) is type(c) for c in d.choices)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return False
    if d.kind == "int" and int(value) != value:
        return False
    if not d.low <= value <= d.high:
        return False
    step = d.step or (1 if d.kind == "int" else None)
    if step:
        k = (value - d.low) / step
        return abs(k - round(k)) < 1e-8
    return True


def spec_hash(spec: WorkflowSpec) -> str:
    """What must not change between a sweep and its resume (the trial budget is checked on its own)."""
    raw = spec.model_dump(mode="json")
    raw["search"] = {k: v for k, v in (raw.get("search") or {}).items() if k != "trials"}
    return hashlib.sha256(json.dumps(raw, sort_keys=True).encode()).hexdigest()[:16]
