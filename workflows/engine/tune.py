"""Ray Tune for `foldwise sweep`: what a trial runs, slots, and the Tuner itself (the searcher and pruners: tune_search).

Ray Tune owns its actors, placement groups and event loop, so trials cannot go through
`executor.submit`: a trial (`run_trial`, on a Tune actor) reads the prepared data and the
fold plan by reference and scores the folds itself, in order or as fold tasks inside its
own placement group (`search.parallel_folds`). `run_tuner` builds (or restores, for
`--resume`) the Tuner and runs it; Tune's trial events reach the sweep's book (its MLflow
runs, in tracking) through `TrialsToMlflow`, which knows the book only by the `TrialBook`
protocol. `saved_trials` reads what Tune saved, for a resume to reconcile with MLflow.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import ray
from ray import tune
from ray.tune import Callback, PlacementGroupFactory

from foldwise.tasks.models import ModelConfig
from foldwise.tasks.trial import FoldScore, score_fold
from foldwise.workflows.engine.frame_server import trial_frame
from foldwise.workflows.engine.tune_search import (
    ASHA_REDUCTION,
    FOLDS_DONE,
    SCORE,
    SearchConfig,
    creation_index,
    make_scheduler,
    make_searcher,
    rung_counts,
    seed_pruner,
)
from foldwise.workflows.engine.tune_storage import atomic_local_filesystem

__all__ = ["FOLDS_DONE", "SCORE", "creation_index"]  # re-exported: the sweep's book and tests read them here
PACED_FROM = 200  # trials: larger sweeps let Tune pace its state saves (tune_environment)
BASELINE_TRIAL = 0  # the creation index of the first enqueued trial (Optuna hands out enqueued trials first)


# --------------------------------------------------------------------------- what a trial runs (on a Tune actor)


@dataclass(frozen=True)
class Replay:
    """A trial that ended before the driver died, after Tune's last saved state: report it, do not train."""

    fold_scores: tuple[tuple[int, float], ...]
    failed: str | None = None
    costs: dict[str, float] = field(default_factory=dict)  # per fold, as recorded (multi-objective sweeps)


@dataclass(frozen=True)
class TrialInputs:
    """What every trial reads: references to the prepared data and fold plan (in the object store once)."""

    data: Any  # ObjectRef[PreparedData]
    plan: Any  # ObjectRef[FoldPlan]
    model: ModelConfig  # the tuned model (with several: the one whose resources size the slots)
    metric: str
    seed: int
    n_folds: int
    parallel_folds: bool
    bundles: int  # fold bundles in the trial's placement group (parallel_folds)
    report_at: frozenset[int] = frozenset()  # folds done at which to report (where the pruner looks, and the end)
    replays: dict[str, Replay] = field(default_factory=dict)
    models: dict[str, ModelConfig] = field(default_factory=dict)  # several models in one study: by name
    choice_key: str | None = None  # the config key naming the trial's model (None: one model, plain keys)
    step_keys: tuple[str, ...] = ()  # config keys that set frame-step params (`steps.NAME.PARAM`), not the model's
    frames: Any = None  # the frame server (engine.frame_server) that hands out each step params' data


def trial_model(config: dict[str, Any], inputs: TrialInputs) -> ModelConfig:
    """The trial's model: its sampled params on top of the model's own (`MODEL.param` keys with several)."""
    if inputs.choice_key is None:
        own = {k: v for k, v in config.items() if k not in inputs.step_keys}
        return replace(inputs.model, params={**inputs.model.params, **own})
    name = config[inputs.choice_key]
    base, prefix = inputs.models[name], f"{name}."
    own = {k[len(prefix):]: v for k, v in config.items() if k.startswith(prefix)}
    return replace(base, params={**base.params, **own})


def _add(f: FoldScore, done: dict[int, FoldScore], report_at: frozenset[int]) -> None:
    """Keep a fold; report the running mean when the pruner looks at this many folds (and at the end).

    Every report carries all folds so far, so fewer reports lose nothing; each report is a
    round trip to Tune's driver, so a trial makes only the ones a pruner can use.
    """
    done[f.fold] = f
    if len(done) not in report_at:
        return
    folds = sorted(done)
    tune.report({SCORE: float(np.mean([done[k].score for k in folds])), FOLDS_DONE: len(done),
                 "fold_scores": [[k, done[k].score] for k in folds],
                 "fit_seconds": [[k, done[k].fit_seconds] for k in folds],
                 "fold_seconds": [[k, done[k].seconds] for k in folds],
                 **costs([done[k] for k in folds])})


def costs(folds: Sequence[FoldScore]) -> dict[str, float]:
    """A trial's costs as objectives read them: one fold's fit and predict seconds and model size, averaged."""
    return {"cost.fit_seconds": float(np.mean([f.fit_seconds for f in folds])),
            "cost.predict_seconds": float(np.mean([f.predict_seconds for f in folds])),
            "cost.model_bytes": float(np.mean([f.model_bytes for f in folds]))}


def report_points(pruner: str, n_folds: int) -> frozenset[int]:
    """Folds done at which trials report: ASHA's rungs (1, 2, 4, ...), every fold for the median rule, the end."""
    if pruner == "median":
        return frozenset(range(1, n_folds + 1))
    points = {n_folds}
    if pruner == "asha":
        rung = 1
        while rung < n_folds:
            points.add(rung)
            rung *= ASHA_REDUCTION
    return frozenset(points)


def run_trial(config: dict[str, Any], inputs: TrialInputs) -> None:
    """One trial: the sampled params on top of the model's own, every fold of the shared plan, a report per fold."""
    replay = inputs.replays.get(tune.get_context().get_trial_id())
    if replay is not None:
        if replay.failed is not None:
            raise RuntimeError(f"(replayed) {replay.failed}")
        done: dict[int, FoldScore] = {}
        every = frozenset(range(1, len(replay.fold_scores) + 1))
        for k, s in replay.fold_scores:
            _add(FoldScore(fold=k, score=s, fit_seconds=replay.costs.get("fit_seconds", 0.0), seconds=0.0,
                           predict_seconds=replay.costs.get("predict_seconds", 0.0),
                           model_bytes=int(replay.costs.get("model_bytes", 0))), done, every)
        return
    model = trial_model(config, inputs)
    data_ref = inputs.data
    if inputs.step_keys:  # its own step params: the data they make (built once per distinct params, cached)
        data_ref = trial_frame(inputs.frames, {k: config[k] for k in inputs.step_keys})
    done = {}
    if not inputs.parallel_folds:
        data, plan = ray.get([data_ref, inputs.plan])
        for k in range(inputs.n_folds):
            _add(score_fold(data, plan, model, k, inputs.metric, inputs.seed), done, inputs.report_at)
        return
    from ray.util.placement_group import get_current_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    pg = get_current_placement_group()
    remote = ray.remote(score_fold)
    pending = []
    for k in range(inputs.n_folds):
        options: dict[str, Any] = {"num_cpus": model.cpus, "num_gpus": model.gpus, "max_retries": 0,
                                   "name": f"train_fold[model={model.name}, fold={k}]"}
        if pg is not None:  # one bundle per fold: reserved with the trial, so full trials cannot starve their folds
            options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
                pg, placement_group_bundle_index=k % inputs.bundles)
        pending.append(remote.options(**options).remote(data_ref, inputs.plan, model, k, inputs.metric, inputs.seed))
    try:
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            _add(ray.get(ready[0]), done, inputs.report_at)
    finally:  # pruned (Tune ends the trial at a report) or failed: drop the folds still running
        for ref in pending:
            ray.cancel(ref)


# --------------------------------------------------------------------------- slots


@dataclass(frozen=True)
class Slots:
    """How trials share the cluster."""

    concurrency: int
    bundles: int  # per trial with parallel folds (1 otherwise)
    resources: Any  # a Tune resource request


def plan_slots(model: ModelConfig, n_folds: int, *, parallel_folds: bool, concurrency: int | None,
               cluster: dict[str, float] | None = None) -> Slots:
    """Sequential folds: a trial takes one model slot and as many trials run as there are slots.

    Parallel folds: a trial's placement group holds one bundle per fold (up to its share of
    the cluster), reserved before the trial starts, so trials filling the cluster never wait
    on their own fold tasks. `cluster`: the resources to share (default: the connected cluster's).
    """
    cluster = ray.cluster_resources() if cluster is None else cluster
    slots = int(cluster.get("CPU", 1) // model.cpus)
    if model.gpus:
        slots = min(slots, int(cluster.get("GPU", 0) // model.gpus))
    slots = max(1, slots)
    bundle = {"CPU": model.cpus, **({"GPU": model.gpus} if model.gpus else {})}
    if not parallel_folds:
        k = concurrency or slots
        return Slots(concurrency=k, bundles=1, resources=PlacementGroupFactory([bundle]))
    k = concurrency or max(1, slots // n_folds)
    bundles = max(1, min(n_folds, slots // k))
    return Slots(concurrency=k, bundles=bundles, resources=PlacementGroupFactory([{}] + [bundle] * bundles))


@contextmanager
def tune_environment(trials: int = 0) -> Iterator[None]:
    """Tune quiet and lean for the sweep: no per-trial logger files, no console tables.

    Tune saves every trial's state at each checkpoint, so a save costs more the more trials a
    sweep has: each second up to PACED_FROM trials; beyond, Tune's own pacing ("auto": every
    10 s or more, so that saving takes at most 5% of the time), which keeps a trial's cost flat.
    """
    wanted = {"TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1", "RAY_AIR_NEW_OUTPUT": "0",
              "TUNE_PRINT_ALL_TRIAL_ERRORS": "0", "TUNE_GLOBAL_CHECKPOINT_S": "1" if trials <= PACED_FROM else "auto",
              "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0"}
    before = {k: os.environ.get(k) for k in wanted}
    for k, v in wanted.items():
        os.environ.setdefault(k, v)
    tune_log = logging.getLogger("ray.tune.tune")  # "Trials did not complete": the summary says which and why
    level = tune_log.level
    tune_log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        tune_log.setLevel(level)
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# --------------------------------------------------------------------------- the Tuner: built or restored, then run


@dataclass(frozen=True)
class TuneJob:
    """One sweep's Tune experiment: where Tune keeps its state, what it searches, how long."""

    tune_path: str  # <storage>/<spec name>/<parent run id>/tune
    search: SearchConfig  # the searcher a new sweep builds (a resume restores the saved one)
    pruner: str  # asha | median | none
    trials: int
    timeout: float | None
    resume: bool  # restore Tune's saved experiment when there is one
    # a resume: (trial id, running score after 1, 2, ... folds) of each trial that ended before
    pruner_history: tuple[tuple[str, tuple[float, ...]], ...] = ()


def run_tuner(job: TuneJob, inputs: TrialInputs, slots: Slots, book: TrialBook) -> dict[int, int]:
    """Build the Tuner (or restore it from `job.tune_path`), run every trial; Tune's events go to `book`.

    Tune's state is written atomically (tune_storage). A restored pruner is given back the
    statistics of the trials that ended before (`job.pruner_history`). Returns how many trials
    the pruner saw at each number of folds done, over the whole sweep.
    """
    trainable = tune.with_resources(tune.with_parameters(run_trial, inputs=inputs), slots.resources)
    callback = TrialsToMlflow(book, total=job.trials, replays=list(inputs.replays))
    fs = atomic_local_filesystem()
    with tune_environment(job.trials):
        if job.resume and tune.Tuner.can_restore(job.tune_path, storage_filesystem=fs):
            tuner = tune.Tuner.restore(job.tune_path, trainable, resume_unfinished=True, resume_errored=False,
                                       restart_errored=False, storage_filesystem=fs)
            # private: Tuner.restore has no `callbacks=` (nor `run_config=`) argument and a Tuner has no
            # public run-config accessor (ray-project/ray#41364); the restored run config holds the
            # pickled, book-less callback, so the live book is put in its place here. Likewise the
            # restored pruner is the one pickled when the sweep began: empty.
            tuner._local_tuner.get_run_config().callbacks = [callback]
            scheduler = tuner._local_tuner._tune_config.scheduler
            seed_pruner(scheduler, job.pruner_history, replaying=list(inputs.replays))
        else:
            scheduler = make_scheduler(job.pruner, inputs.n_folds, spare_baselines=len(job.search.baselines))
            tuner = tune.Tuner(
                trainable,
                tune_config=tune.TuneConfig(
                    metric=SCORE, mode="max", search_alg=make_searcher(job.search, inputs.n_folds),
                    scheduler=scheduler, num_samples=job.trials,
                    max_concurrent_trials=slots.concurrency, reuse_actors=True, time_budget_s=job.timeout),
                run_config=tune.RunConfig(name=Path(job.tune_path).name, storage_path=str(Path(job.tune_path).parent),
                                          storage_filesystem=fs, verbose=0, callbacks=[callback],
                                          failure_config=tune.FailureConfig(max_failures=0)))
        tuner.fit()
    return rung_counts(scheduler)


# --------------------------------------------------------------------------- Tune's trial events -> the sweep's book


class TrialBook(Protocol):
    """What the Tune callback tells the sweep's record of trials (tracking's SweepBook), on the driver."""

    def start(self, trial_id: str, params: dict[str, Any], replay: bool, created: int | None = None) -> None: ...

    def result(self, trial_id: str, result: dict[str, Any]) -> None: ...

    def complete(self, trial_id: str) -> None: ...

    def error(self, trial_id: str, message: str) -> None: ...

    def experiment_end(self, unfinished: bool) -> None: ...


class TrialsToMlflow(Callback):
    """Tune's trial events -> the sweep's book (MLflow child runs, the live line). Runs on the driver."""

    def __init__(self, book: TrialBook | None, total: int = 0, replays: Sequence[str] = ()) -> None:
        self.book, self.total = book, total
        self.replays = set(replays)

    def __reduce__(self) -> tuple:
        # Tune pickles its run config into the sweep folder; the live book (threads, MLflow
        # client) stays behind, and a resumed sweep installs a fresh callback.
        return (TrialsToMlflow, (None,))

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if self.book is not None:
            self.book.start(trial.trial_id, dict(trial.config), replay=trial.trial_id in self.replays,
                            created=creation_index(trial))

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if self.book is not None and "fold_scores" in result:
            self.book.result(trial.trial_id, result)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if self.book is not None:
            self.book.complete(trial.trial_id)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if self.book is not None:
            self.book.error(trial.trial_id, error_line(trial))

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        if self.book is not None:
            unfinished = len(trials) < self.total or any(t.status not in ("TERMINATED", "ERROR") for t in trials)
            self.book.experiment_end(unfinished)


def error_line(trial: Any) -> str:
    """The user-facing line of a trial's error: the innermost exception, without Ray's or Tune's wrapping."""
    error: Any = None
    try:
        path = trial.pickled_error_file  # written on the driver when the trial failed
        if path and os.path.exists(path):
            import ray.cloudpickle as cloudpickle

            with open(path, "rb") as f:
                error = cloudpickle.load(f)
        elif trial.error_file and os.path.exists(trial.error_file):
            error = Path(trial.error_file).read_text()
        else:
            error = trial.get_error()
    except Exception:  # noqa: BLE001 - an unreadable error record still means the trial failed
        error = None
    if isinstance(error, BaseException):
        while getattr(error, "cause", None) is not None and error.cause is not error:
            error = error.cause
        lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
        text = lines[-1] if lines else ""
        return f"{type(error).__name__}: {text}".rstrip(": ")
    lines = [ln.strip() for ln in str(error or "").splitlines() if ln.strip()]
    for line in reversed(lines):
        if ":" in line and not line.startswith(("File ", "^", "During handling", "The above exception")):
            return line
    return lines[-1] if lines else "trial failed (no error recorded)"


# --------------------------------------------------------------------------- what Tune saved (a resume starts from it)


@dataclass(frozen=True)
class SavedTrial:
    """One trial as Tune's last saved experiment state has it (what a resume starts from)."""

    trial_id: str
    status: str  # PENDING | RUNNING | PAUSED | TERMINATED | ERROR
    config: dict[str, Any]
    last_result: dict[str, Any]
    error: str | None

    @property
    def ended(self) -> bool:
        return self.status in ("TERMINATED", "ERROR")


def saved_trials(tune_path: str | Path) -> dict[str, SavedTrial]:
    """Read Tune's newest experiment state file as plain JSON ({} when Tune saved nothing yet).

    Plain JSON on purpose: no Tune objects are rebuilt and nothing pickled is loaded.
    """
    files = sorted(Path(tune_path).glob("experiment_state-*.json"))
    if not files:
        return {}
    out = {}
    for state_text, meta_text in json.loads(files[-1].read_text())["trial_data"]:
        state, meta = json.loads(state_text), json.loads(meta_text)
        error = None
        if meta.get("error_filename"):
            path = Path(tune_path, state.get("relative_logdir") or "", meta["error_filename"])
            lines = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()] if path.exists() else []
            error = lines[-1] if lines else "failed"
        out[state["trial_id"]] = SavedTrial(trial_id=state["trial_id"], status=state["status"],
                                            config=dict(state.get("config") or {}),
                                            last_result=dict(meta.get("last_result") or {}), error=error)
    return out
