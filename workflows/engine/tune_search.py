"""The sweep's searcher and pruners (module level: Tune pickles them into the sweep's state).

- `FoldSearch`: Ray's OptunaSearch that tells Optuna a pruned trial is PRUNED, takes any of
  Optuna's samplers (`make_sampler`), one or several objectives (the score, then costs to
  minimise), an optional Optuna storage the driver alone writes, and a define-by-run space
  (`ConditionalSpace`) when several models share one study.
- The pruners (ASHA or the median rule on folds done) spare the baseline trials and can be
  given back the rung statistics of trials that ended before a resume (`seed_pruner`).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, MedianStoppingRule, TrialScheduler
from ray.tune.search.optuna import OptunaSearch

from foldwise.tasks.suggest import suggest

SCORE = "score"  # what a trial reports after each fold: the running mean of its fold scores
FOLDS_DONE = "folds_done"  # the pruners' clock
ASHA_REDUCTION = 2  # keep the better half at each rung (folds 1, 2, 4, ...), like Optuna's median pruner
MEDIAN_MIN_TRIALS = 3
SAMPLERS = ("tpe", "random", "grid", "cmaes", "gp", "nsga2")
# objective -> (the key a trial's last report holds it under, direction); the score comes first
OBJECTIVES = {"cv_score": (SCORE, "max"), "fit_seconds": ("cost.fit_seconds", "min"),
              "predict_seconds": ("cost.predict_seconds", "min"), "model_bytes": ("cost.model_bytes", "min")}


# --------------------------------------------------------------------------- the space and the sampler


@dataclass(frozen=True)
class ConditionalSpace:
    """Several models in one study (Optuna's define-by-run): the model first, then only its own params.

    `per_model`: model name -> ((param name as the trial sees it, Optuna distribution), ...);
    `shared`: params every trial samples whatever its model.
    """

    choice_key: str
    per_model: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...]
    shared: tuple[tuple[str, Any], ...] = ()

    def __call__(self, trial: Any) -> None:
        spaces = dict(self.per_model)
        model = trial.suggest_categorical(self.choice_key, list(spaces))
        for name, dist in (*self.shared, *spaces[model]):
            suggest(trial, name, dist)


class _GridOnce(optuna.samplers.GridSampler):
    """Optuna's grid without `study.stop()` (Tune, not `optimize`, runs the trials; the plan caps them at the grid).

    An enqueued trial (the spec's own point) takes its grid point's id, and every other trial the
    first point no trial has taken: Optuna's grid gives an enqueued trial no id and trial n the
    n-th point, so with a baseline enqueued the point it landed on was tried twice and another never.
    """

    def before_trial(self, study: Any, trial: Any) -> None:
        if "grid_id" in trial.system_attrs:
            return
        fixed = trial.system_attrs.get("fixed_params")
        if fixed is not None:
            wanted = tuple(fixed.get(name) for name in self._param_names)
            point = next((i for i, g in enumerate(self._all_grids) if tuple(g) == wanted), None)
            if point is not None:
                study._storage.set_trial_system_attr(trial._trial_id, "search_space", self._search_space)
                study._storage.set_trial_system_attr(trial._trial_id, "grid_id", point)
            return
        free = self._get_unvisited_grid_ids(study) or list(range(len(self._all_grids)))
        study._storage.set_trial_system_attr(trial._trial_id, "search_space", self._search_space)
        study._storage.set_trial_system_attr(trial._trial_id, "grid_id", min(free))

    def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
        return None


def make_sampler(name: str, seed: int, n_objectives: int, grid: Mapping[str, Sequence[Any]] | None = None) -> Any:
    """Optuna's sampler by name, seeded. TPE keeps the constant liar (trials run in parallel)."""
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, constant_liar=True)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "grid":
        return _GridOnce(dict(grid or {}), seed=seed)
    if name == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, warn_independent_sampling=False)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    raise ValueError(f"unknown sampler {name!r} (one of {', '.join(SAMPLERS)})")


# --------------------------------------------------------------------------- the searcher


class FoldSearch(OptunaSearch):
    """OptunaSearch that tells Optuna a pruned trial is PRUNED (Tune would report it as complete)."""

    def __init__(self, *args: Any, n_folds: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._n_folds = n_folds

    @property
    def _multi(self) -> bool:
        return isinstance(self.metric, list)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        """Optuna's intermediate value at step = folds done (trials report only where a pruner looks).

        A multi-objective study takes no intermediate values (Optuna prunes single objectives only);
        Tune's pruner still reads the score.
        """
        if self._multi or trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        with warnings.catch_warnings():  # a trial run again after a resume reports its folds again: fine
            warnings.filterwarnings("ignore", message=".*is already reported")
            self._ot_trials[trial_id].report(float(result[SCORE]), int(result[FOLDS_DONE]))

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id not in self._ot_trials:
            # Resumed from a searcher state saved before this trial was asked for (Tune saves the
            # trials and the searcher one after the other): the study never had it, so there is
            # nothing to tell; its run in MLflow is complete all the same.
            self._completed_trials.add(trial_id)
            return
        cut_short = bool(result) and not error and int(result.get(FOLDS_DONE, self._n_folds)) < self._n_folds
        if cut_short and trial_id in self._ot_trials and trial_id not in self._completed_trials:
            ot_trial = self._ot_trials[trial_id]
            if not self._multi:
                try:
                    ot_trial.report(float(result[SCORE]), int(result[FOLDS_DONE]))
                except Exception:  # noqa: BLE001 - Optuna refuses a step reported twice; the first value stands
                    pass
            self._ot_study.tell(ot_trial, state=optuna.trial.TrialState.PRUNED)
            self._completed_trials.add(trial_id)
            return
        super().on_trial_complete(trial_id, result=result, error=error)

    def restore(self, checkpoint_path: str) -> None:
        """Tune's saved searcher; in a shared storage, trials asked after that save are closed as FAIL.

        The driver died after asking them: the resumed study samples their replacements, and
        optuna-dashboard must not show them RUNNING forever.
        """
        super().restore(checkpoint_path)
        if self._storage is None or self._ot_study is None:
            return
        known = {t._trial_id for t in self._ot_trials.values()}
        running = self._ot_study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
        for t in running:
            if t._trial_id not in known:
                self._ot_study._storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)


@dataclass(frozen=True)
class SearchConfig:
    """What the searcher is built from (a new sweep only; a resume restores the saved searcher)."""

    space: Any  # name -> Optuna distribution, or a ConditionalSpace
    seed: int
    sampler: str = "tpe"
    objectives: tuple[str, ...] = ("cv_score",)
    grid: dict[str, list[Any]] | None = None  # the grid sampler's values per param
    storage: str | None = None  # an Optuna storage URL the driver writes the study to
    study_name: str = "foldwise-sweep"
    baselines: tuple[dict[str, Any], ...] = ()  # enqueued first, in order (the baseline trials)


def make_searcher(config: SearchConfig, n_folds: int) -> FoldSearch:
    """The searcher over `config.space` with its sampler, objectives and storage.

    `config.baselines` are enqueued: Optuna's first trials take those values and sample the
    rest (not OptunaSearch's points_to_evaluate: it insists on a value for every key). Only a
    new sweep builds a searcher; a resume restores the saved one, whose study already holds the
    enqueued trials, so no point is added twice.
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = make_sampler(config.sampler, config.seed, len(config.objectives), config.grid)
    keys = [OBJECTIVES[o][0] for o in config.objectives]
    modes = [OBJECTIVES[o][1] for o in config.objectives]
    multi = len(keys) > 1
    storage = optuna.storages.RDBStorage(config.storage) if config.storage else None
    space = config.space if callable(config.space) else dict(config.space)
    searcher = FoldSearch(space=space, metric=keys if multi else keys[0], mode=modes if multi else modes[0],
                          sampler=sampler, n_folds=n_folds, storage=storage,
                          study_name=config.study_name if storage is not None else None)
    for point in config.baselines:
        searcher._ot_study.enqueue_trial(dict(point))
    return searcher


# --------------------------------------------------------------------------- pruners on folds done


class FoldMedianRule(MedianStoppingRule):
    """The median rule, never pausing a trial while too few have reported (a paused function trial restarts)."""

    def _on_insufficient_samples(self, tune_controller: Any, trial: Any, time: float) -> str:
        return TrialScheduler.CONTINUE


class _SparesBaseline:
    """A pruner that records the baseline trials' scores like any other's but never stops them."""

    spare_baselines = 0  # creation indices below this are baseline trials
    replaying: frozenset[str] = frozenset()  # a resume's replayed trials: they ended before, as MLflow records

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        decision = super().on_trial_result(tune_controller, trial, result)  # type: ignore[misc]
        index = creation_index(trial)
        spared = (index is not None and index < self.spare_baselines) or trial.trial_id in self.replaying
        if spared and decision != TrialScheduler.NOOP:
            return TrialScheduler.CONTINUE
        return decision


class FoldASHA(_SparesBaseline, ASHAScheduler):
    """ASHA on folds done, sparing the baseline trials."""


class SparingMedianRule(_SparesBaseline, FoldMedianRule):
    """The median rule on folds done, sparing the baseline trials."""

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        decision = super().on_trial_result(tune_controller, trial, result)
        if decision == TrialScheduler.CONTINUE:
            self._stopped_trials.discard(trial)  # the rule asserts a trial it stopped never reports again
        return decision


def make_scheduler(pruner: str, n_folds: int, spare_baselines: int = 0) -> TrialScheduler:
    """ASHA (rungs at 1, 2, 4... folds; the better half goes on), the median rule, or none.

    `spare_baselines`: the first trials (the spec's own params, enqueued first) run every fold,
    so the sweep's best is never worse than them; their scores still count in the pruners' rungs.
    """
    if pruner == "asha" and n_folds > 1:
        scheduler: Any = FoldASHA(time_attr=FOLDS_DONE, max_t=n_folds, grace_period=1, reduction_factor=ASHA_REDUCTION)
    elif pruner == "median" and n_folds > 1:
        scheduler = SparingMedianRule(time_attr=FOLDS_DONE, grace_period=1, min_samples_required=MEDIAN_MIN_TRIALS)
    else:
        return FIFOScheduler()
    scheduler.spare_baselines = spare_baselines
    return scheduler


def creation_index(trial: Any) -> int | None:
    """0, 1, ... in the order Tune created the trials from the searcher's suggestions ("3_lr=0.1" -> 2)."""
    head = str(getattr(trial, "experiment_tag", "") or "").split("_", 1)[0]
    return int(head) - 1 if head.isdigit() and int(head) > 0 else None


# --------------------------------------------------------------------------- the pruner's state across a resume


@dataclass(frozen=True)
class _EndedTrial:
    """A trial that ended before the resume, as the median rule keys its results (it never runs again)."""

    trial_id: str


def seed_pruner(scheduler: TrialScheduler, history: Sequence[tuple[str, Sequence[float]]],
                replaying: Sequence[str] = ()) -> None:
    """Give a restored pruner back the statistics of trials that ended before the driver died.

    Tune saves the searcher but restores the pruner as it was built, empty: without this a
    resumed sweep would judge its next trials against no one. `history`: (trial id, the running
    score after 1, 2, ... folds) per ended trial, exactly what it reported. ASHA gets each rung's
    recorded score; the median rule the trial's reports at every fold done. The `replaying` trials
    (ended before, as MLflow has them) report their scores again and are never stopped.
    """
    if isinstance(scheduler, _SparesBaseline):
        scheduler.replaying = frozenset(replaying)
    if isinstance(scheduler, ASHAScheduler):
        for trial_id, means in history:
            for bracket in scheduler._brackets:
                for milestone, recorded in bracket._rungs:
                    if milestone <= len(means):
                        recorded.setdefault(trial_id, float(means[int(milestone) - 1]))
    elif isinstance(scheduler, MedianStoppingRule):
        for trial_id, means in history:
            scheduler._results[_EndedTrial(trial_id)] = [{FOLDS_DONE: k + 1, SCORE: float(m)} for k, m in enumerate(means)]


def rung_counts(scheduler: TrialScheduler) -> dict[int, int]:
    """How many trials the pruner has seen at each number of folds done (its rungs, or the median rule's steps)."""
    if isinstance(scheduler, ASHAScheduler):
        counts: dict[int, int] = {}
        for bracket in scheduler._brackets:
            for milestone, recorded in bracket._rungs:
                counts[int(milestone)] = counts.get(int(milestone), 0) + len(recorded)
        return dict(sorted(counts.items()))
    if isinstance(scheduler, MedianStoppingRule):
        seen: dict[int, set] = {}
        for key, results in scheduler._results.items():
            for r in results:
                if FOLDS_DONE in r:
                    seen.setdefault(int(r[FOLDS_DONE]), set()).add(getattr(key, "trial_id", key))
        return {k: len(v) for k, v in sorted(seen.items())}
    return {}
