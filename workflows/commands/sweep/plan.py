"""The sweep's plan: the search section and the command's flags, validated before anything starts."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
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
    return SweepPlan(model=model_config(m), model_index=index, space=space, trials=trials or search.trials,
                     concurrency=concurrency, timeout=timeout, pruner=search.pruner,
                     parallel_folds=search.parallel_folds, refit=search.refit, seed=spec.cv.seed)


def spec_hash(spec: WorkflowSpec) -> str:
    """What must not change between a sweep and its resume (the trial budget is checked on its own)."""
    raw = spec.model_dump(mode="json")
    raw["search"] = {k: v for k, v in (raw.get("search") or {}).items() if k != "trials"}
    return hashlib.sha256(json.dumps(raw, sort_keys=True).encode()).hexdigest()[:16]
