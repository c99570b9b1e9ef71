"""The `search.space` of a spec: one entry per hyperparameter, checked at load, turned into Optuna distributions.

Each entry names exactly one distribution plus options:

    learning_rate: {loguniform: [0.01, 0.3]}
    num_leaves:    {int: [8, 128], log: true}
    subsample:     {uniform: [0.5, 1.0], step: 0.1}
    boosting:      {categorical: [gbdt, dart]}

The checks here need no Optuna and no data, so `load_spec` runs them on every spec and a
mistake exits 2 naming the parameter before anything starts. The model-specific check
(does the estimator accept the name?) needs the model type and lives in the sweep.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

DISTRIBUTIONS = ("loguniform", "uniform", "int", "categorical")
OPTIONS = ("step", "log")


@dataclass(frozen=True)
class ParamDist:
    """One hyperparameter's distribution, as plain data."""

    name: str
    kind: str  # float | int | categorical
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple[Any, ...] = ()

    @property
    def example(self) -> Any:
        """A value of the distribution (its low end or first choice), for name checks."""
        return self.choices[0] if self.kind == "categorical" else self.low


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def parse_param(name: str, entry: Any) -> ParamDist:
    """One `search.space` entry -> ParamDist; ValueError with what is wrong and what is valid."""
    if not isinstance(entry, dict):
        raise ValueError(f"must be a mapping like {{loguniform: [0.01, 0.3]}} (got {entry!r})")
    kinds = [k for k in entry if k in DISTRIBUTIONS]
    unknown = [k for k in entry if k not in DISTRIBUTIONS and k not in OPTIONS]
    if unknown:
        raise ValueError(f"unknown distribution or option {unknown[0]!r} "
                         f"(distributions: {', '.join(DISTRIBUTIONS)}; options: {', '.join(OPTIONS)})")
    if len(kinds) != 1:
        found = f" (got {', '.join(kinds)})" if kinds else ""
        raise ValueError(f"give exactly one distribution of {', '.join(DISTRIBUTIONS)}{found}")
    kind = kinds[0]
    value = entry[kind]
    step, log = entry.get("step"), entry.get("log", False)
    if not isinstance(log, bool):
        raise ValueError(f"log must be true or false (got {log!r})")
    if kind == "categorical":
        if step is not None or "log" in entry:
            raise ValueError("categorical takes no step or log option")
        if not isinstance(value, list) or not value:
            raise ValueError(f"categorical needs a non-empty list of choices (got {value!r})")
        bad = [c for c in value if c is not None and not isinstance(c, bool | int | float | str)]
        if bad:
            raise ValueError(f"categorical choices must be strings, numbers, booleans or null (got {bad[0]!r})")
        if len({repr(c) for c in value}) != len(value):
            raise ValueError(f"categorical choices repeat a value ({value!r})")
        return ParamDist(name=name, kind="categorical", choices=tuple(value))
    if not isinstance(value, list) or len(value) != 2 or not all(_number(v) for v in value):
        raise ValueError(f"{kind} needs [low, high], two finite numbers (got {value!r})")
    low, high = value
    if low > high:
        raise ValueError(f"{kind} low {low} is greater than high {high}")
    if kind == "loguniform":
        log = True
        if step is not None:
            raise ValueError("loguniform takes no step (a log scale has no even step)")
    if log and low <= 0:
        raise ValueError(f"a log scale needs low > 0 (got {low})")
    if step is not None:
        if log:
            raise ValueError("step and log cannot be combined")
        if not _number(step) or step <= 0:
            raise ValueError(f"step must be a number > 0 (got {step!r})")
    if kind == "int":
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise ValueError(f"int needs integer bounds (got {value!r}); use uniform for real numbers")
        if step is not None and not isinstance(step, int):
            raise ValueError(f"int needs an integer step (got {step!r})")
        return ParamDist(name=name, kind="int", low=int(low), high=int(high), log=log, step=step)
    return ParamDist(name=name, kind="float", low=float(low), high=float(high), log=log,
                     step=float(step) if step is not None else None)


def parse_space(space: dict[str, Any]) -> tuple[ParamDist, ...]:
    """The whole space, in the spec's order (already validated at load, so this cannot fail then)."""
    return tuple(parse_param(name, entry) for name, entry in space.items())


def to_optuna(dist: ParamDist) -> Any:
    """The Optuna distribution of one parameter."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if dist.kind == "categorical":
        return CategoricalDistribution(list(dist.choices))
    if dist.kind == "int":
        return IntDistribution(int(dist.low), int(dist.high), log=dist.log, step=int(dist.step or 1))
    return FloatDistribution(float(dist.low), float(dist.high), log=dist.log, step=dist.step)


# --------------------------------------------------------------------------- where a space key applies

MODEL_KEY = "model"  # the trial's choice of model in a multi-model study (search.models)
SCOPES = ("steps", "ensemble")  # dotted keys that address something other than a model's params


@dataclass(frozen=True)
class SpaceKey:
    """What a `search.space` key sets: a model's param (`lgbm.num_leaves`, or `num_leaves` with one
    tuned model), or a param of another scope (`steps.ratios.eps`); commands say which they take."""

    key: str  # as written in the spec (also the trial's param name)
    scope: str  # "model" | one of SCOPES
    owner: str | None  # the model's (or step's) name; None: the one tuned model
    param: str


def split_key(key: str, models: tuple[str, ...] = ()) -> SpaceKey:
    """Read a space key. `models`: the study's models when it has several (then a model key needs its prefix)."""
    head, _, rest = key.partition(".")
    if rest and head in models:
        return SpaceKey(key=key, scope="model", owner=head, param=rest)
    if rest and head in SCOPES:
        owner, _, param = rest.partition(".")
        return SpaceKey(key=key, scope=head, owner=owner if param else None, param=param or owner)
    return SpaceKey(key=key, scope="model", owner=None, param=key)


def grid_values(dist: ParamDist) -> list[Any] | None:
    """Every value the distribution can take, for a grid (None: a continuous range, which has no grid)."""
    if dist.kind == "categorical":
        return list(dist.choices)
    if dist.kind == "int":
        return list(range(int(dist.low), int(dist.high) + 1, int(dist.step or 1)))
    if dist.step is None:
        return None
    n = int(math.floor((dist.high - dist.low) / dist.step + 1e-9))
    return [round(dist.low + i * dist.step, 12) for i in range(n + 1)]
