"""The sweep's plan: the search section and the command's flags, validated before anything starts."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from foldwise.tasks.ensemble_search import EnsembleSpace
from foldwise.tasks.models import ModelConfig
from foldwise.workflows.engine.tune_search import ConditionalSpace
from foldwise.workflows.errors import InputError
from foldwise.workflows.pipeline.inputs import model_param_problem
from foldwise.workflows.pipeline.plan import model_config
from foldwise.workflows.pipeline.search_space import (
    MODEL_KEY,
    ParamDist,
    SpaceKey,
    grid_values,
    parse_space,
    split_key,
    to_optuna,
)
from foldwise.workflows.pipeline.spec import WorkflowSpec


@dataclass(frozen=True)
class SweepPlan:
    """Everything the sweep needs, checked at the edge."""

    model: ModelConfig  # the tuned model with the spec's fixed params (several: the one that sizes the slots)
    model_index: int
    space: tuple[ParamDist, ...]  # named by their space keys (`lgbm.num_leaves` with several models)
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
    models: tuple[ModelConfig, ...] = ()  # several models in one study (search.models); () for one
    model_indices: tuple[int, ...] = ()
    keys: tuple[SpaceKey, ...] = ()  # what each space entry sets, in the space's order
    sampler: str = "tpe"
    sampler_seed: int = 0
    objectives: tuple[str, ...] = ("cv_score",)
    storage: str | None = None
    grid: dict[str, list[Any]] | None = None
    baselines: tuple[dict[str, Any], ...] = ()  # enqueued first, in order: one per model with a point
    ensemble: EnsembleSpace | None = None  # space keys ensemble.*: searched after the models, on their best OOF

    @property
    def multi(self) -> bool:
        return bool(self.models)

    @property
    def step_keys(self) -> tuple[str, ...]:
        """The space keys that set frame-step params (`steps.NAME.PARAM`): each trial's data depends on them."""
        return tuple(k.key for k in self.keys if k.scope == "steps")

    def distributions(self) -> dict[str, Any]:
        """The space as Optuna distributions, flat (the study the plots are drawn from); the model's choice too."""
        out = {d.name: to_optuna(d) for d in self.space}
        if self.multi:
            from optuna.distributions import CategoricalDistribution

            out = {MODEL_KEY: CategoricalDistribution([m.name for m in self.models]), **out}
        return out

    def search_space(self) -> Any:
        """What the searcher samples: the flat space, or a define-by-run space with several models."""
        if not self.multi:
            return self.distributions()
        per_model = tuple((m.name, tuple((d.name, to_optuna(d)) for d, k in zip(self.space, self.keys, strict=True)
                                         if k.owner == m.name or k.scope == "steps")) for m in self.models)
        return ConditionalSpace(choice_key=MODEL_KEY, per_model=per_model)

    def typed_params(self, raw: dict[str, str]) -> dict[str, Any]:
        """MLflow keeps params as text; give them back their types from the space."""
        out: dict[str, Any] = {}
        if self.multi and MODEL_KEY in raw:
            out[MODEL_KEY] = raw[MODEL_KEY]
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
    if search.models is not None and search.model is not None:
        raise InputError("search: give search.model (one model) or search.models (several in one study), not both")
    if search.model is None and search.models is None and len(names) > 1:
        raise InputError(f"search.model: name the model to tune (one of {', '.join(names)}), "
                         "or list several in search.models")
    if search.models is not None and (not search.models or len(set(search.models)) != len(search.models)):
        raise InputError(f"search.models: list each model once, at least one (got {search.models})")
    if not search.space:
        raise InputError("search.space is empty; name at least one parameter, e.g. learning_rate: {loguniform: [0.01, 0.3]}")
    tuned = tuple(search.models or ())
    parsed = parse_space(search.space)
    ensemble_keys = tuple(d for d in parsed if split_key(d.name, tuned).scope == "ensemble")
    ensemble = ensemble_space(spec, ensemble_keys, tuned) if ensemble_keys else None
    space = tuple(d for d in parsed if d not in ensemble_keys)
    if not space:
        raise InputError("search.space: name at least one model parameter (the ensemble is searched on the models' best trials)")
    keys = tuple(split_key(d.name, tuned) for d in space)
    for dist, key in zip(space, keys, strict=True):
        where = f"search.space.{dist.name}"
        if "/" in dist.name:
            raise InputError(f"{where}: a parameter name cannot contain '/'")
        if key.scope == "steps":  # a frame step's param: each trial computes (or finds cached) its own frame
            problem = step_param_problem(spec, key)
            if problem:
                raise InputError(f"{where}: {problem}")
            continue
        if key.scope != "model":
            raise InputError(f"{where}: {key.scope} params cannot be searched by sweep (model params only)")
        if tuned and key.owner is None:
            raise InputError(f"{where}: with search.models, say whose param it is ({', '.join(f'{m}.{dist.name}' for m in tuned)})")
        m = spec.models[names.index(key.owner or search.model or names[0])]
        problem = model_param_problem(m.type, m.estimator, {key.param: dist.example})
        if problem:
            raise InputError(f"{where}: {problem}")
    if trials is not None and trials < 1:
        raise InputError(f"--trials must be at least 1 (got {trials})")
    if concurrency is not None and concurrency < 1:
        raise InputError(f"--concurrency must be at least 1 (got {concurrency})")
    if timeout is not None and timeout <= 0:
        raise InputError(f"--timeout must be > 0 seconds (got {timeout})")
    objectives = tuple(search.objectives)
    grid = _grid(search.sampler, space, tuned)
    n_trials = trials or search.trials
    if grid is not None:
        n_trials = min(n_trials, math.prod(len(v) for v in grid.values()))  # a grid has no more points to try
    if search.sampler == "cmaes" and len(objectives) > 1:
        raise InputError(f"search.sampler cmaes: optimises one objective; with search.objectives {list(objectives)} "
                         "use nsga2, tpe, gp or random")
    _check_storage(search.storage)
    needs = {"cmaes": "cmaes", "gp": "torch"}.get(search.sampler)
    if needs and importlib.util.find_spec(needs) is None:
        raise InputError(f"search.sampler {search.sampler}: needs the package {needs} "
                         "(pip install 'foldwise[samplers]')")
    common = dict(trials=n_trials, concurrency=concurrency, timeout=timeout, pruner=search.pruner,
                  parallel_folds=search.parallel_folds, refit=search.refit, seed=spec.cv.seed, keys=keys,
                  sampler=search.sampler, sampler_seed=spec.cv.seed if search.seed is None else search.seed,
                  objectives=objectives, storage=search.storage, grid=grid, ensemble=ensemble)
    if not tuned:
        index = names.index(search.model) if search.model is not None else 0
        model = model_config(spec.models[index], spec.preprocess)
        baseline, skipped = baseline_point({**model.params, **step_values(spec)}, space)
        # a grid takes an enqueued point only whole (every key), and then as one of its points
        whole = bool(baseline) and (grid is None or len(baseline) == len(space))
        return SweepPlan(model=model, model_index=index, space=space, baseline=baseline, baseline_skipped=skipped,
                         baselines=(baseline,) if whole else (), **common)
    indices = tuple(names.index(n) for n in tuned)
    models = tuple(model_config(spec.models[i], spec.preprocess) for i in indices)
    baselines, skipped = [], {}
    for m in models:
        own = tuple(replace(d, name=k.param if k.scope == "model" else k.key) for d, k in zip(space, keys, strict=True)
                    if k.owner == m.name or k.scope == "steps")
        point, why = baseline_point({**m.params, **step_values(spec)}, own)
        skipped.update({p if p.startswith("steps.") else f"{m.name}.{p}": w for p, w in why.items()})
        if point:
            baselines.append({MODEL_KEY: m.name, **{p if p.startswith("steps.") else f"{m.name}.{p}": v
                                                    for p, v in point.items()}})
    widest = max(range(len(models)), key=lambda i: (models[i].gpus, models[i].cpus))
    return SweepPlan(model=models[widest], model_index=indices[widest], space=space, baseline_skipped=skipped,
                     models=models, model_indices=indices, baselines=tuple(baselines), **common)


def step_param_problem(spec: WorkflowSpec, key: SpaceKey) -> str | None:
    """Why `steps.NAME.PARAM` names no param of a frame step (unknown step, a param its function does not take)."""
    from foldwise.tasks.steps import fn_problem

    names = [s.name for s in spec.steps]
    if key.owner is None:
        return f"a frame step's param is written steps.STEP.PARAM (steps: {', '.join(names) or 'none in this spec'})"
    if key.owner not in names:
        return f"unknown step {key.owner!r} (steps: {', '.join(names) or 'none in this spec'})"
    step = spec.steps[names.index(key.owner)]
    problem = fn_problem(step.fn, {**step.params, key.param: None})
    return f"step {key.owner!r}: {problem}" if problem else None


def step_values(spec: WorkflowSpec) -> dict[str, Any]:
    """The spec's own frame-step params as space keys (`steps.NAME.PARAM`): the baseline trial's values."""
    return {f"steps.{s.name}.{p}": v for s in spec.steps for p, v in s.params.items()}


ENSEMBLE_KEYS = ("ensemble.method", "ensemble.params.NAME", "ensemble.layers", "ensemble.passthrough")


def ensemble_space(spec: WorkflowSpec, dists: tuple[ParamDist, ...], tuned: tuple[str, ...]) -> EnsembleSpace:
    """The `ensemble.*` space keys as the ensemble phase samples them, or InputError naming the key (exit 2)."""
    from foldwise.tasks.ensemble import METHODS

    search, ens = spec.search, spec.ensemble
    assert search is not None
    first = f"search.space.{dists[0].name}"
    if len(tuned) < 2:
        raise InputError(f"{first}: the ensemble is searched over several models' best trials; "
                         "list two or more models in search.models")
    if not search.refit:
        raise InputError(f"{first}: the ensemble is searched on the best trials' OOF, which the refit computes; "
                         "set search.refit: true")
    methods: tuple[str, ...] = (ens.method,)
    params, layers, passthrough = [], None, None
    for d in dists:
        where, key = f"search.space.{d.name}", split_key(d.name, tuned)
        if key.owner is None and key.param == "method":
            bad = [c for c in d.choices if c not in METHODS]
            if d.kind != "categorical" or bad:
                raise InputError(f"{where}: give {{categorical: [...]}} of the methods {', '.join(METHODS)}"
                                 + (f" (got {bad[0]!r})" if bad else ""))
            methods = tuple(d.choices)
        elif key.owner == "params" and key.param:
            params.append(d)
        elif key.owner is None and key.param == "layers":
            if d.kind != "int" or d.low < 1 or d.high > 5:
                raise InputError(f"{where}: give {{int: [LOW, HIGH]}} within 1..5 (stack layers)")
            layers = to_optuna(d)
        elif key.owner is None and key.param == "passthrough":
            if d.kind != "categorical" or any(not isinstance(c, bool) for c in d.choices):
                raise InputError(f"{where}: give {{categorical: [false, true]}}")
            passthrough = to_optuna(d)
        else:
            raise InputError(f"{where}: not a searchable ensemble key (valid: {', '.join(ENSEMBLE_KEYS)})")
    stack_keys = [d.name for d in params] + [d.name for d in dists if d.name in ("ensemble.layers", "ensemble.passthrough")]
    if stack_keys and "stack" not in methods:
        raise InputError(f"search.space.{stack_keys[0]}: only method stack takes it; add stack to "
                         f"ensemble.method's choices (or set ensemble.method: stack)")
    return EnsembleSpace(methods=methods, params=tuple((d.name.removeprefix("ensemble.params."), to_optuna(d)) for d in params),
                         layers=layers, passthrough=passthrough, fixed_params=tuple(ens.params.items()),
                         fixed_layers=ens.layers, fixed_passthrough=ens.passthrough, meta=ens.meta,
                         trials=search.ensemble_trials, seed=spec.cv.seed if search.seed is None else search.seed)


def ensemble_problem_for(spec: WorkflowSpec, space: EnsembleSpace, task: str) -> str | None:
    """Checks that need the task: rank_mean needs a binary task; the meta-model must take the searched params."""
    from foldwise.workflows.pipeline.preflight import ensemble_problem

    if "rank_mean" in space.methods and task != "binary":
        return f"search.space.ensemble.method: rank_mean needs a binary task (the task is {task})"
    if not space.params:
        return None
    probe = spec.model_copy(update={"ensemble": spec.ensemble.model_copy(update={
        "method": "stack", "params": {name: dist_example(d) for name, d in space.params}})})
    problem = ensemble_problem(probe, task)
    return f"search.space.{problem.replace('ensemble.params:', 'ensemble.params.*:', 1)}" if problem else None


def dist_example(dist: Any) -> Any:
    """A value of an Optuna distribution (for a name check)."""
    return dist.choices[0] if hasattr(dist, "choices") else dist.low


def _grid(sampler: str, space: tuple[ParamDist, ...], tuned: tuple[str, ...]) -> dict[str, list[Any]] | None:
    """The grid sampler's points per key (every key needs a finite set), or None for other samplers."""
    if sampler != "grid":
        return None
    if tuned:
        raise InputError("search.sampler grid: one model per grid (a grid over several models' params would "
                         "repeat each model's points); use random or tpe with search.models")
    grid = {}
    for d in space:
        values = grid_values(d)
        if values is None:
            raise InputError(f"search.space.{d.name}: search.sampler grid needs a finite set of values; "
                             "give the range a step (uniform: [0.1, 0.5], step: 0.1) or use categorical")
        grid[d.name] = values
    return grid


def _check_storage(url: str | None) -> None:
    """An sqlite storage's folder must exist (Optuna would fail only once the sweep had started)."""
    if url is None or not url.startswith("sqlite:///"):
        return
    path = Path(url.removeprefix("sqlite:///"))
    if not path.parent.exists():
        raise InputError(f"search.storage {url}: folder {path.parent} does not exist")


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
