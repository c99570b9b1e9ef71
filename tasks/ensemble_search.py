"""A sweep's ensemble phase: Optuna searches the ensemble's method and settings on stored OOF predictions.

Why a phase of its own, after the models' study: an ensemble is a function of its models' OOF
predictions, and blending them costs a fraction of a fold fit, so once each model's best trial
is known (and its OOF computed by the refit's folds) every ensemble setting can be scored on
those same OOF without training anything again. Searching it inside each model trial would
need every trial to train every model.

Honest by construction: each candidate is scored by `blend_repeats`, which cross-fits whatever
learns from labels (greedy weights, the stack's meta-model) on the *other* held-out folds, so
no setting is scored on rows it was fitted on. Choosing the best of N settings on the same OOF
is a selection on the CV score like any hyperparameter search's (the fewer trials, the smaller
the optimism); the chosen setting's fold scores are paired with the models' own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from foldwise.tasks.folds import FoldPlan
from foldwise.tasks.repeats import blend_repeats
from foldwise.tasks.suggest import suggest

KEY = "ensemble"  # trial params read ensemble.method, ensemble.params.C, ensemble.layers, ensemble.passthrough
STACK_ONLY = ("layers", "passthrough")  # settings (besides the meta-model's params) only a stack takes


@dataclass(frozen=True)
class EnsembleSpace:
    """What the ensemble phase samples (Optuna distributions), define-by-run: the method first,
    then, in trials whose method is stack, the meta-model's params, layers and passthrough."""

    methods: tuple[str, ...]  # the method's choices (one: the method is fixed)
    params: tuple[tuple[str, Any], ...] = ()  # meta-model param -> distribution (stack trials only)
    layers: Any = None  # a distribution, or None: the spec's
    passthrough: Any = None  # a distribution, or None: the spec's
    fixed_params: tuple[tuple[str, Any], ...] = ()  # the spec's ensemble.params (stack), under the sampled ones
    fixed_layers: int = 1
    fixed_passthrough: bool = False
    meta: str | None = None  # the spec's stack meta-model (None: logistic / ridge)
    trials: int = 20
    seed: int = 0


@dataclass(frozen=True)
class EnsembleTrial:
    """One ensemble setting tried: its params as the sweep names them, and its cross-fitted score."""

    number: int
    params: dict[str, Any]  # ensemble.method, ensemble.params.C, ... (the sampled keys only)
    setting: dict[str, Any]  # the full setting: method, params, layers, passthrough
    cv_score: float | None  # None: the blend failed
    fold_scores: tuple[float, ...] = ()
    error: str | None = None
    repeat_of: int | None = None  # the earlier trial with the same setting (its score, not recomputed)


@dataclass(frozen=True)
class EnsembleSearchResult:
    trials: tuple[EnsembleTrial, ...]
    best: EnsembleTrial  # the greatest score, earliest on ties


def sample_setting(trial: Any, space: EnsembleSpace) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the sampled params as named in the sweep's space, the full setting they make)."""
    sampled: dict[str, Any] = {}
    method = space.methods[0]
    if len(space.methods) > 1:
        method = sampled[f"{KEY}.method"] = trial.suggest_categorical(f"{KEY}.method", list(space.methods))
    setting: dict[str, Any] = {"method": method, "params": {}, "layers": 1, "passthrough": False}
    if method == "stack":
        params = dict(space.fixed_params)
        for name, dist in space.params:
            params[name] = sampled[f"{KEY}.params.{name}"] = suggest(trial, f"{KEY}.params.{name}", dist)
        setting["params"] = params
        setting["layers"] = space.fixed_layers
        setting["passthrough"] = space.fixed_passthrough
        if space.layers is not None:
            setting["layers"] = sampled[f"{KEY}.layers"] = suggest(trial, f"{KEY}.layers", space.layers)
        if space.passthrough is not None:
            setting["passthrough"] = sampled[f"{KEY}.passthrough"] = suggest(trial, f"{KEY}.passthrough",
                                                                             space.passthrough)
    return sampled, setting


def search_ensemble(space: EnsembleSpace, oof: dict[str, list[np.ndarray]], y: np.ndarray, plan: FoldPlan,
                    metric: str, task: str, seed: int, X: np.ndarray | None = None) -> EnsembleSearchResult:
    """`space.trials` ensemble settings by Optuna's TPE (seeded), each scored by the cross-fitted
    `blend_repeats` on `oof` (model -> one OOF array per repeat); see the module docstring.

    A setting sampled again reuses its score (blending is deterministic). Raises ValueError when
    every setting failed (the first error named)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=space.seed))
    done: dict[str, EnsembleTrial] = {}
    trials: list[EnsembleTrial] = []
    for number in range(space.trials):
        ot = study.ask()
        sampled, setting = sample_setting(ot, space)
        key = repr(sorted((k, repr(v)) for k, v in setting.items()))
        if key in done:
            first = done[key]
            t = EnsembleTrial(number=number, params=sampled, setting=setting, cv_score=first.cv_score,
                              fold_scores=first.fold_scores, error=first.error, repeat_of=first.number)
        else:
            try:
                ens = blend_repeats(setting["method"], oof, None, y, plan, metric, task, seed, space.meta,
                                    dict(setting["params"]), int(setting["layers"]), bool(setting["passthrough"]),
                                    X if setting["passthrough"] else None, None)
                t = EnsembleTrial(number=number, params=sampled, setting=setting, cv_score=float(ens.cv_score),
                                  fold_scores=tuple(float(s) for s in ens.fold_scores))
            except (ValueError, TypeError, ArithmeticError) as e:  # a setting the meta-model refuses: that trial fails
                t = EnsembleTrial(number=number, params=sampled, setting=setting, cv_score=None,
                                  error=f"{type(e).__name__}: {e}")
            done[key] = t
        trials.append(t)
        if t.cv_score is None or not np.isfinite(t.cv_score):
            study.tell(ot, state=optuna.trial.TrialState.FAIL)
        else:
            study.tell(ot, t.cv_score)
    scored = [t for t in trials if t.cv_score is not None and np.isfinite(t.cv_score)]
    if not scored:
        raise ValueError(f"every ensemble setting failed; first: {trials[0].error}")
    best = max(scored, key=lambda t: (t.cv_score, -t.number))
    return EnsembleSearchResult(trials=tuple(trials), best=best)
