"""`foldwise sweep`: Optuna's TPE through Ray Tune, pruned on fold-wise scores, resumable, every trial in MLflow.

The composition, top to bottom in `run_sweep`:
  validate (spec, space vs the model's params) -> Ray up, data prepared once and the fold
  plan computed once through the executor (the same plan as `foldwise run`) -> MLflow parent
  -> Ray Tune `Tuner` (OptunaSearch with a seeded TPE and the constant liar, ASHA or median
  pruning on folds done, actors reused) whose trials read the data by reference and run
  `tasks.train.train_fold` per fold -> the trials' child runs written by the driver from a
  Tune callback -> plots, an optional refit through `run_cv`, summary.json.

Ray Tune owns its actors, placement groups and event loop, so trials cannot go through
`executor.submit`: this module is the one other place that calls Ray (Tune, and the fold
tasks a trial starts inside its own placement group with `search.parallel_folds`).

Resuming after the driver died (`--resume`): Tune restores its trials and the searcher's
state from the sweep's storage folder; the MLflow records are reconciled with that state
first. A trial MLflow already holds as ended keeps its run (when Tune's saved state had it
still running, the trial replays its recorded fold scores instead of training again, so
searcher and scheduler see it and no second run is made); a trial cut short is marked
KILLED (state `interrupted`) and runs again as a new attempt, so the sweep ends with the
requested number of ended trials.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from ray.tune import Callback, PlacementGroupFactory
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, MedianStoppingRule, TrialScheduler
from ray.tune.search.optuna import OptunaSearch

from foldwise.tasks.data import PreparedData, prepare_data
from foldwise.tasks.folds import FoldPlan
from foldwise.tasks.models import ModelConfig
from foldwise.tasks.report import write_json
from foldwise.tasks.sweep_report import (
    FINAL_STATES,
    TrialOutcome,
    best_of,
    counts,
    importances,
    study_of,
    trials_frame,
    write_plots,
)
from foldwise.tasks.trial import FoldScore, score_fold
from foldwise.workflows.engine.cache import Cache
from foldwise.workflows.engine.executor import RayExecutor, make_executor
from foldwise.workflows.errors import InputError, RunFailed, TaskFailed
from foldwise.workflows.pipeline.dag import fold_plan, node_keys
from foldwise.workflows.pipeline.inputs import Inputs, model_param_problem, usable_tracking_uri, validate_inputs
from foldwise.workflows.pipeline.plan import model_config
from foldwise.workflows.pipeline.provenance import code_version, git_commit
from foldwise.workflows.pipeline.search_space import ParamDist, parse_space, to_optuna
from foldwise.workflows.pipeline.spec import WorkflowSpec, load_spec, to_yaml
from foldwise.workflows.tracking import tracker as tk

SCORE = "score"  # what a trial reports after each fold: the running mean of its fold scores
FOLDS_DONE = "folds_done"  # the pruners' clock
DEFAULT_STORAGE = ".foldwise/sweeps"
STATE_FILE = "sweep.json"
ASHA_REDUCTION = 2  # keep the better half at each rung (folds 1, 2, 4, ...), like Optuna's median pruner
MEDIAN_MIN_TRIALS = 3


# --------------------------------------------------------------------------- the plan (validated before anything starts)


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


# --------------------------------------------------------------------------- the sweep's folder (Tune state + our pointer)


@dataclass(frozen=True)
class SweepState:
    """`<storage>/<spec name>/<parent run id>/sweep.json`: how `--resume` finds the sweep."""

    parent_run_id: str
    spec_name: str
    experiment: str
    tracking_uri: str
    spec_hash: str
    trials: int
    timeout: float | None
    out_dir: str
    tune_path: str
    status: str  # running | interrupted | failed | finished
    started: str
    resumes: int = 0

    @property
    def folder(self) -> Path:
        return Path(self.tune_path).parent

    def save(self, **changes: Any) -> SweepState:
        new = replace(self, **changes)
        path = new.folder / STATE_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(new), indent=2))
        os.replace(tmp, path)
        return new


def resolve_storage(storage: str | None) -> Path:
    """--storage, then $FOLDWISE_SWEEPS, then .foldwise/sweeps in the working directory."""
    return Path(storage or os.environ.get("FOLDWISE_SWEEPS") or DEFAULT_STORAGE).resolve()


def find_sweep(storage: Path, spec: WorkflowSpec, which: str) -> SweepState:
    """The sweep to resume: the latest unfinished one of this spec, or the one whose parent run id is given."""
    root = storage / spec.name
    states = []
    for path in sorted(root.glob(f"*/{STATE_FILE}")) if root.exists() else []:
        try:
            states.append(SweepState(**json.loads(path.read_text())))
        except (ValueError, TypeError):
            continue
    if which != "latest":
        found = [s for s in states if s.parent_run_id == which]
        if not found:
            raise InputError(f"--resume {which}: no sweep with that run id under {root}")
        state = found[0]
    else:
        open_ = sorted((s for s in states if s.status != "finished"), key=lambda s: s.started)
        if not open_:
            raise InputError(f"--resume: no unfinished sweep of spec {spec.name!r} under {root}")
        state = open_[-1]
    if state.status == "finished":
        raise InputError(f"--resume: sweep {state.parent_run_id} already finished; start a new sweep")
    return state


# --------------------------------------------------------------------------- what a trial runs (on a Tune actor)


@dataclass(frozen=True)
class Replay:
    """A trial that ended before the driver died, after Tune's last saved state: report it, do not train."""

    fold_scores: tuple[tuple[int, float], ...]
    failed: str | None = None


@dataclass(frozen=True)
class TrialInputs:
    """What every trial reads: references to the prepared data and fold plan (in the object store once)."""

    data: Any  # ObjectRef[PreparedData]
    plan: Any  # ObjectRef[FoldPlan]
    model: ModelConfig
    metric: str
    seed: int
    n_folds: int
    parallel_folds: bool
    bundles: int  # fold bundles in the trial's placement group (parallel_folds)
    report_at: frozenset[int] = frozenset()  # folds done at which to report (where the pruner looks, and the end)
    replays: dict[str, Replay] = field(default_factory=dict)


def _add(f: FoldScore, done: dict[int, FoldScore], report_at: frozenset[int]) -> None:
    """Keep a fold; report the running mean when the pruner looks at this many folds (and at the end).

    Every report carries all folds so far, so fewer reports lose nothing; each report is a
    round trip to Tune's driver, so a trial makes only the ones a pruner can use.
    """
    from ray import tune

    done[f.fold] = f
    if len(done) not in report_at:
        return
    folds = sorted(done)
    tune.report({SCORE: float(np.mean([done[k].score for k in folds])), FOLDS_DONE: len(done),
                 "fold_scores": [[k, done[k].score] for k in folds],
                 "fit_seconds": [[k, done[k].fit_seconds] for k in folds],
                 "fold_seconds": [[k, done[k].seconds] for k in folds]})


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
    import ray
    from ray import tune

    replay = inputs.replays.get(tune.get_context().get_trial_id())
    if replay is not None:
        if replay.failed is not None:
            raise RuntimeError(f"(replayed) {replay.failed}")
        done: dict[int, FoldScore] = {}
        every = frozenset(range(1, len(replay.fold_scores) + 1))
        for k, s in replay.fold_scores:
            _add(FoldScore(fold=k, score=s, fit_seconds=0.0, seconds=0.0), done, every)
        return
    model = replace(inputs.model, params={**inputs.model.params, **config})
    done = {}
    if not inputs.parallel_folds:
        data, plan = ray.get([inputs.data, inputs.plan])
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
        pending.append(remote.options(**options).remote(inputs.data, inputs.plan, model, k, inputs.metric, inputs.seed))
    try:
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            _add(ray.get(ready[0]), done, inputs.report_at)
    finally:  # pruned (Tune ends the trial at a report) or failed: drop the folds still running
        for ref in pending:
            ray.cancel(ref)


# --------------------------------------------------------------------------- Tune pieces (module level: Tune pickles them)


class FoldSearch(OptunaSearch):
    """OptunaSearch that tells Optuna a pruned trial is PRUNED (Tune would report it as complete)."""

    def __init__(self, *args: Any, n_folds: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._n_folds = n_folds

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        """Optuna's intermediate value at step = folds done (trials report only where a pruner looks)."""
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        with warnings.catch_warnings():  # a trial run again after a resume reports its folds again: fine
            warnings.filterwarnings("ignore", message=".*is already reported")
            self._ot_trials[trial_id].report(float(result[self.metric]), int(result[FOLDS_DONE]))

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        cut_short = bool(result) and not error and int(result.get(FOLDS_DONE, self._n_folds)) < self._n_folds
        if cut_short and trial_id in self._ot_trials and trial_id not in self._completed_trials:
            ot_trial = self._ot_trials[trial_id]
            try:
                ot_trial.report(float(result[self.metric]), int(result[FOLDS_DONE]))
            except Exception:  # noqa: BLE001 - Optuna refuses a step reported twice; the first value stands
                pass
            self._ot_study.tell(ot_trial, state=optuna.trial.TrialState.PRUNED)
            self._completed_trials.add(trial_id)
            return
        super().on_trial_complete(trial_id, result=result, error=error)


class FoldMedianRule(MedianStoppingRule):
    """The median rule, never pausing a trial while too few have reported (a paused function trial restarts)."""

    def _on_insufficient_samples(self, tune_controller: Any, trial: Any, time: float) -> str:
        return TrialScheduler.CONTINUE


def make_searcher(plan: SweepPlan, n_folds: int) -> FoldSearch:
    """Optuna's TPE, seeded with the spec seed, constant liar on (trials run in parallel)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.TPESampler(seed=plan.seed, constant_liar=True)
    space = {d.name: to_optuna(d) for d in plan.space}
    return FoldSearch(space=space, metric=SCORE, mode="max", sampler=sampler, n_folds=n_folds)


def make_scheduler(pruner: str, n_folds: int) -> TrialScheduler:
    """ASHA (rungs at 1, 2, 4... folds; the better half goes on), the median rule, or none."""
    if pruner == "asha" and n_folds > 1:
        return ASHAScheduler(time_attr=FOLDS_DONE, max_t=n_folds, grace_period=1, reduction_factor=ASHA_REDUCTION)
    if pruner == "median" and n_folds > 1:
        return FoldMedianRule(time_attr=FOLDS_DONE, grace_period=1, min_samples_required=MEDIAN_MIN_TRIALS)
    return FIFOScheduler()


@dataclass(frozen=True)
class Slots:
    """How trials share the cluster."""

    concurrency: int
    bundles: int  # per trial with parallel folds (1 otherwise)
    resources: Any  # a Tune resource request


def plan_slots(plan: SweepPlan, n_folds: int, cluster: dict[str, float]) -> Slots:
    """Sequential folds: a trial takes one model slot and as many trials run as there are slots.

    Parallel folds: a trial's placement group holds one bundle per fold (up to its share of
    the cluster), reserved before the trial starts, so trials filling the cluster never wait
    on their own fold tasks.
    """
    m = plan.model
    slots = int(cluster.get("CPU", 1) // m.cpus)
    if m.gpus:
        slots = min(slots, int(cluster.get("GPU", 0) // m.gpus))
    slots = max(1, slots)
    bundle = {"CPU": m.cpus, **({"GPU": m.gpus} if m.gpus else {})}
    if not plan.parallel_folds:
        k = plan.concurrency or slots
        return Slots(concurrency=k, bundles=1, resources=PlacementGroupFactory([bundle]))
    k = plan.concurrency or max(1, slots // n_folds)
    bundles = max(1, min(n_folds, slots // k))
    return Slots(concurrency=k, bundles=bundles, resources=PlacementGroupFactory([{}] + [bundle] * bundles))


@contextmanager
def tune_environment() -> Iterator[None]:
    """Tune quiet and lean for the sweep: no per-trial logger files, no console tables, state saved each second."""
    wanted = {"TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1", "RAY_AIR_NEW_OUTPUT": "0",
              "TUNE_PRINT_ALL_TRIAL_ERRORS": "0", "TUNE_GLOBAL_CHECKPOINT_S": "1",
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


# --------------------------------------------------------------------------- the driver's record of trials


@dataclass
class TrialRecord:
    """The driver's mutable view of one trial attempt (one MLflow child run)."""

    number: int
    trial_id: str
    params: dict[str, Any]
    attempt: int = 1
    run_id: str | None = None
    state: str = "running"
    fold_scores: dict[int, float] = field(default_factory=dict)
    fit_seconds: dict[int, float] = field(default_factory=dict)
    fold_seconds: dict[int, float] = field(default_factory=dict)
    error: str | None = None
    started: float = field(default_factory=time.time)
    ended: float | None = None
    cut_by_pruner: bool = False
    replaying: bool = False

    def outcome(self) -> TrialOutcome:
        return TrialOutcome(number=self.number, trial_id=self.trial_id, run_id=self.run_id, params=dict(self.params),
                            state=self.state, fold_scores=dict(self.fold_scores),
                            seconds=(self.ended or time.time()) - self.started, error=self.error,
                            compute_seconds=sum(self.fold_seconds.values()), ended_at=self.ended)


class MlflowWriter:
    """MLflow writes on one background thread, in order, so Tune's event loop never waits on the store."""

    def __init__(self, tracker: tk.Tracker) -> None:
        self.tracker = tracker
        self._queue: queue.Queue = queue.Queue()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="foldwise-mlflow", daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        self._queue.put((fn, args))

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                fn, args = item
                try:
                    fn(*args)
                except BaseException as e:  # noqa: BLE001 - kept and raised on the driver at flush
                    if self._error is None:
                        self._error = e
            finally:
                self._queue.task_done()

    def flush(self) -> None:
        """Wait until every write so far is done; raise the first write error, if any."""
        self._queue.join()
        if self._error is not None:
            error, self._error = self._error, None
            raise RuntimeError(f"writing to MLflow failed: {type(error).__name__}: {error}") from error

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=60)


class SweepBook:
    """Every trial attempt of the sweep, their MLflow runs, counts and the best so far."""

    def __init__(self, writer: MlflowWriter, parent_id: str, n_folds: int, base_tags: dict[str, str],
                 progress: SweepProgress, deadline: float | None) -> None:
        self.writer, self.parent_id, self.n_folds = writer, parent_id, n_folds
        self.base_tags, self.progress, self.deadline = base_tags, progress, deadline
        self.records: list[TrialRecord] = []  # every attempt, ended ones included
        self.live: dict[str, TrialRecord] = {}  # trial id -> the attempt running now
        self.next_number = 0
        self.interrupted = False

    # ---- state from an earlier run of this sweep (resume)
    def adopt(self, record: TrialRecord) -> None:
        self.records.append(record)
        self.next_number = max(self.next_number, record.number + 1)

    def number_of(self, trial_id: str, created: int | None) -> int:
        """The trial's number: the order in which the searcher suggested it (Optuna's trial number)."""
        for r in self.records:
            if r.trial_id == trial_id:
                return r.number
        n = created if created is not None else self.next_number
        self.next_number = max(self.next_number, n + 1)
        return n

    # ---- Tune events
    def start(self, trial_id: str, params: dict[str, Any], replay: bool, created: int | None = None) -> None:
        if replay:
            self.live[trial_id] = TrialRecord(number=-1, trial_id=trial_id, params=params, replaying=True)
            self.progress.update(self)
            return
        attempt = 1 + sum(r.trial_id == trial_id for r in self.records)
        rec = TrialRecord(number=self.number_of(trial_id, created), trial_id=trial_id, params=params, attempt=attempt)
        self.records.append(rec)
        self.live[trial_id] = rec
        self.writer.submit(self._open_run, rec)
        self.progress.update(self)

    def result(self, trial_id: str, result: dict[str, Any]) -> None:
        rec = self.live.get(trial_id)
        if rec is None or rec.replaying:
            return
        rec.fold_scores.update({int(k): float(v) for k, v in result["fold_scores"]})
        rec.fit_seconds.update({int(k): float(v) for k, v in result.get("fit_seconds", [])})
        rec.fold_seconds.update({int(k): float(v) for k, v in result.get("fold_seconds", [])})
        if result.get("done") and len(rec.fold_scores) < self.n_folds:
            rec.cut_by_pruner = True  # Tune marks a result done when the scheduler stops the trial
        self.progress.update(self)

    def complete(self, trial_id: str) -> None:
        rec = self.live.pop(trial_id, None)
        if rec is None or rec.replaying:
            self.progress.update(self)
            return
        if len(rec.fold_scores) == self.n_folds:
            state = "completed"
        elif rec.cut_by_pruner:
            state = "pruned"
        else:
            state = "stopped"  # ended by the time budget
        self._end(rec, state)

    def error(self, trial_id: str, message: str) -> None:
        rec = self.live.pop(trial_id, None)
        if rec is None or rec.replaying:
            self.progress.update(self)
            return
        rec.error = message
        self._end(rec, "failed")

    def experiment_end(self, unfinished: bool) -> None:
        """Tune returned. With trials left to run, the time budget or Ctrl-C ended it; live trials were cut."""
        timed_out = self.deadline is not None and time.time() >= self.deadline
        self.interrupted = unfinished and not timed_out
        for trial_id in list(self.live):
            rec = self.live.pop(trial_id)
            if not rec.replaying:
                self._end(rec, "stopped" if timed_out else "interrupted")

    def _end(self, rec: TrialRecord, state: str) -> None:
        rec.state, rec.ended = state, time.time()
        self.writer.submit(self._close_run, rec)
        self.progress.update(self)

    # ---- MLflow (on the writer thread)
    def _open_run(self, rec: TrialRecord) -> None:
        tracker = self.writer.tracker
        tags = {**self.base_tags, tk.TAG_TRIAL: str(rec.number), tk.TAG_TRIAL_ID: rec.trial_id,
                tk.TAG_TRIAL_STATE: "running", tk.TAG_ATTEMPT: str(rec.attempt)}
        name = f"trial-{rec.number:03d}" + (f"-attempt{rec.attempt}" if rec.attempt > 1 else "")
        rec.run_id = tracker.start_run(name, tags, parent_id=self.parent_id)
        tracker.log(rec.run_id, params=rec.params)

    def _close_run(self, rec: TrialRecord) -> None:
        if rec.run_id is None:
            return
        write_ending(self.writer.tracker, rec)

    # ---- views
    def outcomes(self) -> list[TrialOutcome]:
        return [r.outcome() for r in self.records]

    def ended(self) -> list[TrialRecord]:
        return [r for r in self.records if r.state in FINAL_STATES]


def write_ending(tracker: tk.Tracker, rec: TrialRecord) -> None:
    """A trial's end in one batch: stepped fold scores, cv_score (completed only), state; then its status."""
    folds = sorted(rec.fold_scores)
    metrics: dict[str, float] = {FOLDS_DONE: float(len(folds))}
    if folds:
        metrics["running_score"] = float(np.mean([rec.fold_scores[k] for k in folds]))
    if rec.state == "completed":
        metrics[tk.M_CV_SCORE] = metrics["running_score"]
    tags = {tk.TAG_TRIAL_STATE: rec.state}
    if rec.error:
        tags["foldwise.failure"] = rec.error[:5000]
    steps = {tk.M_FOLD_SCORE: {k: rec.fold_scores[k] for k in folds},
             tk.M_FIT_SECONDS: {k: rec.fit_seconds.get(k, 0.0) for k in folds}}
    tracker.log(rec.run_id, metrics=metrics, tags=tags, steps=steps)
    tracker.end(rec.run_id, {"completed": "FINISHED", "pruned": "FINISHED", "failed": "FAILED"}.get(rec.state, "KILLED"))


class SweepProgress:
    """The live line: trials ended / pruned / failed / running, the best so far (rich, on stderr)."""

    def __init__(self, enabled: bool, total: int, metric: str) -> None:
        self.enabled, self.total, self.metric = enabled, total, metric
        self._progress = None
        self._task = None

    def __enter__(self) -> SweepProgress:
        if self.enabled:
            from rich.console import Console
            from rich.progress import Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(TextColumn("[bold]trials {task.completed}/{task.total}"), TimeElapsedColumn(),
                                      TextColumn("{task.description}"), console=Console(stderr=True))
            self._progress.start()
            self._task = self._progress.add_task("", total=self.total)
        return self

    def update(self, book: SweepBook) -> None:
        if self._progress is None:
            return
        self._progress.update(self._task, completed=len(book.ended()), description=describe(book, self.metric))

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()


def describe(book: SweepBook, metric: str) -> str:
    c = counts(book.outcomes())
    best = best_of(book.outcomes())
    best_text = f"best {best.cv_score:.5f} (trial {best.number})" if best else "none completed yet"
    return (f"{c['completed']} completed, {c['pruned']} pruned, {c['failed']} failed, "
            f"{sum(not r.replaying for r in book.live.values())} running; {best_text}")


class TrialsToMlflow(Callback):
    """Tune's trial events -> the sweep's book (MLflow child runs, the live line). Runs on the driver."""

    def __init__(self, book: SweepBook | None, total: int = 0, replays: Sequence[str] = ()) -> None:
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


def creation_index(trial: Any) -> int | None:
    """0, 1, ... in the order Tune created the trials from the searcher's suggestions ("3_lr=0.1" -> 2)."""
    head = str(getattr(trial, "experiment_tag", "") or "").split("_", 1)[0]
    return int(head) - 1 if head.isdigit() and int(head) > 0 else None


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


# --------------------------------------------------------------------------- resuming: MLflow vs Tune's saved state


def typed_params(raw: dict[str, str], space: tuple[ParamDist, ...]) -> dict[str, Any]:
    """MLflow keeps params as text; give them back their types from the space."""
    out: dict[str, Any] = {}
    for d in space:
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


def reconcile(reader: tk.RunReader, tracker: tk.Tracker, state: SweepState, space: tuple[ParamDist, ...],
              n_folds: int) -> tuple[list[TrialRecord], dict[str, Replay]]:
    """Make MLflow agree with the Tune state the resume starts from (see the module docstring).

    Returns the trial records to carry on with and the trials to replay instead of training.
    """
    tune_trials = saved_trials(state.tune_path)  # {} when killed before Tune's first save: every trial reruns
    runs = [r for r in reader.children(state.parent_run_id) if tk.TAG_TRIAL_ID in r.tags]
    runs.sort(key=lambda r: (int(r.tags.get(tk.TAG_TRIAL, 0)), int(r.tags.get(tk.TAG_ATTEMPT, 1))))
    records: list[TrialRecord] = []
    replays: dict[str, Replay] = {}
    for run in runs:
        tid = run.tags[tk.TAG_TRIAL_ID]
        t = tune_trials.get(tid)
        tune_ended = t is not None and t.ended
        rec = TrialRecord(number=int(run.tags.get(tk.TAG_TRIAL, 0)), trial_id=tid,
                          params=dict(t.config) if t is not None else typed_params(run.params, space),
                          attempt=int(run.tags.get(tk.TAG_ATTEMPT, 1)), run_id=run.run_id,
                          state=run.tags.get(tk.TAG_TRIAL_STATE, "running"), error=run.tags.get("foldwise.failure"),
                          started=run.start_time_ms / 1000, ended=run.start_time_ms / 1000)
        if rec.state in FINAL_STATES:
            rec.fold_scores = reader.steps(run.run_id, tk.M_FOLD_SCORE)
            if t is None:
                # Ended after Tune's last saved state, in a trial that state does not know: the
                # resumed searcher will sample a replacement, so this record does not count.
                rec.state = "interrupted"
                tracker.log(run.run_id, tags={tk.TAG_TRIAL_STATE: "interrupted", "foldwise.note":
                                              "ended after the sweep's last saved state; replaced on resume"})
                tracker.end(run.run_id, "KILLED")
            elif not tune_ended:
                replays[tid] = Replay(tuple(sorted(rec.fold_scores.items())),
                                      failed=(rec.error or "failed") if rec.state == "failed" else None)
        elif rec.state not in ("interrupted", "stopped"):
            if tune_ended:  # ended, and saved by Tune, but the driver died before writing it
                last = t.last_result or {}
                rec.fold_scores = {int(k): float(v) for k, v in last.get("fold_scores", [])}
                if t.status == "ERROR":
                    rec.state, rec.error = "failed", t.error
                else:
                    rec.state = "completed" if len(rec.fold_scores) == n_folds else "pruned"
            else:
                rec.state = "interrupted"
            write_ending(tracker, rec)
        records.append(rec)
    return records, replays


# --------------------------------------------------------------------------- the command


@dataclass(frozen=True)
class SweepResult:
    """What `foldwise sweep` produces: the summary.json data and its folder."""

    summary: dict[str, Any]
    out_dir: Path
    outcomes: tuple[TrialOutcome, ...] = ()

    @property
    def run_id(self) -> str:
        return self.summary["run_id"]


def run_sweep(spec: WorkflowSpec | str | Path, *, overrides: Sequence[str] = (), trials: int | None = None,
              concurrency: int | None = None, timeout: float | None = None, resume: str | None = None,
              out: str | Path | None = None, tracking_uri: str | None = None, address: str | None = None,
              storage: str | None = None, progress: bool = False, no_cache: bool = False,
              cache_root: str | None = None) -> SweepResult:
    """The Python API of `foldwise sweep` (`resume`: None, "latest", or the sweep's parent run id).

    Raises SpecError/InputError (nothing started, nothing logged) or RunFailed.
    """
    wall_start = time.perf_counter()
    if not isinstance(spec, WorkflowSpec):
        spec = load_spec(spec, overrides)
    plan = plan_sweep(spec, trials, concurrency, timeout)
    inputs = validate_inputs(spec)
    storage_root = resolve_storage(storage)
    prior: SweepState | None = None
    if resume is not None:
        prior = find_sweep(storage_root, spec, resume)
        if prior.spec_hash != spec_hash(spec):
            raise InputError(f"--resume: the spec changed since sweep {prior.parent_run_id} started; "
                             "resume with the same spec, or start a new sweep")
        if trials is not None and trials != prior.trials:
            raise InputError(f"--resume: sweep {prior.parent_run_id} was started with --trials {prior.trials}; "
                             "a resume continues to that total")
        if timeout is not None and timeout != prior.timeout:
            raise InputError(f"--resume: sweep {prior.parent_run_id} was started with --timeout {prior.timeout}; "
                             "a resume keeps it (Tune restores its time budget)")
        uri = tk.resolve_uri(tracking_uri, spec.tracking.uri)
        if tracking_uri and uri != prior.tracking_uri:
            raise InputError(f"--resume: sweep {prior.parent_run_id} is tracked in {prior.tracking_uri}, not {uri}")
        if tk.store_missing(prior.tracking_uri):
            raise InputError(f"--resume: {tk.store_missing(prior.tracking_uri)}")
        plan = replace(plan, trials=prior.trials, timeout=prior.timeout)
        uri = prior.tracking_uri
    else:
        uri = usable_tracking_uri(tracking_uri, spec)

    ex = make_executor("ray", address)
    assert isinstance(ex, RayExecutor)
    try:
        return _sweep(spec, plan, inputs, ex, prior, out=out, uri=uri, storage_root=storage_root,
                      progress=progress, no_cache=no_cache, cache_root=cache_root, wall_start=wall_start)
    finally:
        ex.close()


def _prepare(ex: RayExecutor, cache: Cache, spec: WorkflowSpec, inputs: Inputs, model: ModelConfig,
             version: str) -> tuple[PreparedData, FoldPlan, Any, Any]:
    """The data and the fold plan, once, in the object store (from the cache when `foldwise run` made them)."""
    keys = node_keys(spec, inputs, [model], version)
    data, plan = cache.get("data", keys.data), cache.get("plan", keys.plan)
    data_ref = ex.put(data) if data is not None else ex.submit(prepare_data, inputs.data, name="prepare")
    if plan is None:
        plan = fold_plan(spec, inputs)  # on the driver, from the validated target and groups
        cache.put("plan", keys.plan, plan)
    plan_ref = ex.put(plan)
    if data is None:
        data = ex.get(data_ref)
        cache.put("data", keys.data, data)
    return data, plan, data_ref, plan_ref


def _sweep(spec: WorkflowSpec, plan: SweepPlan, inputs: Inputs, ex: RayExecutor, prior: SweepState | None, *,
           out: str | Path | None, uri: str, storage_root: Path, progress: bool, no_cache: bool,
           cache_root: str | None, wall_start: float) -> SweepResult:
    import ray
    from ray import tune

    phases: dict[str, float] = {"validate_and_start": time.perf_counter() - wall_start}
    tick = time.perf_counter()
    version = code_version([plan.model])
    cache = Cache(cache_root, enabled=not no_cache)
    try:
        data, folds, data_ref, plan_ref = _prepare(ex, cache, spec, inputs, plan.model, version)
    except TaskFailed as e:
        raise RunFailed(f"{e.task}: {e.error}", None) from None
    n_folds = folds.n_folds
    slots = plan_slots(plan, n_folds, ray.cluster_resources())
    phases["prepare"] = time.perf_counter() - tick
    tick = time.perf_counter()
    tracker = tk.Tracker(uri, spec.experiment)
    reader = tk.RunReader(uri)
    tags = {tk.TAG_COMMAND: "sweep", tk.TAG_GIT: git_commit(), tk.TAG_CODE: version} | tk.process_tags()
    facts = {tk.TAG_MODEL: plan.model.name, tk.TAG_FOLDS_HASH: folds.hash, tk.TAG_DATA: data.fingerprint}
    if prior is None:
        tracker.fail_abandoned_runs()
        parent = tracker.start_run(f"sweep-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}", {**tags, **facts})
    else:
        parent = prior.parent_run_id
    # From here on the parent run exists: whatever happens, it and its trials end (never RUNNING).
    state, writer, status, ok, killed = prior, None, "failed", False, False
    try:
        replays: dict[str, Replay] = {}
        adopted: list[TrialRecord] = []
        if prior is None:
            out_dir = Path(out) if out else Path("outputs") / spec.name / parent
            folder = storage_root / spec.name / parent
            state = SweepState(parent_run_id=parent, spec_name=spec.name, experiment=spec.experiment,
                               tracking_uri=uri, spec_hash=spec_hash(spec), trials=plan.trials, timeout=plan.timeout,
                               out_dir=str(out_dir.resolve()), tune_path=str(folder / "tune"), status="running",
                               started=datetime.now(timezone.utc).isoformat()).save()
            tracker.log(parent, params=tk.flatten(spec.model_dump(mode="json")) | {
                "task": inputs.task, "metric": inputs.metric, "cv.scheme": inputs.scheme,
                "sweep.trials": plan.trials, "sweep.concurrency": slots.concurrency,
                "sweep.parallel_fold_bundles": slots.bundles, "sweep.timeout": plan.timeout,
                "sweep.storage": state.tune_path})
        else:
            out_dir = Path(out) if out else Path(prior.out_dir)
            adopted, replays = reconcile(reader, tracker, prior, plan.space, n_folds)
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
                                       replays=replays)
            trainable = tune.with_resources(tune.with_parameters(run_trial, inputs=trial_inputs), slots.resources)
            callback = TrialsToMlflow(book, total=plan.trials, replays=list(replays))
            with tune_environment():
                if prior is not None and tune.Tuner.can_restore(state.tune_path):
                    tuner = tune.Tuner.restore(state.tune_path, trainable, resume_unfinished=True,
                                               resume_errored=False, restart_errored=False)
                    tuner._local_tuner.get_run_config().callbacks = [callback]  # the live book, not the pickled one
                else:
                    tuner = tune.Tuner(
                        trainable,
                        tune_config=tune.TuneConfig(
                            metric=SCORE, mode="max", search_alg=make_searcher(plan, n_folds),
                            scheduler=make_scheduler(plan.pruner, n_folds), num_samples=plan.trials,
                            max_concurrent_trials=slots.concurrency, reuse_actors=True, time_budget_s=plan.timeout),
                        run_config=tune.RunConfig(name=Path(state.tune_path).name,
                                                  storage_path=str(Path(state.tune_path).parent),
                                                  verbose=0, callbacks=[callback],
                                                  failure_config=tune.FailureConfig(max_failures=0)))
                tuner.fit()
            writer.flush()
            bar.update(book)
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
        result = _finish(spec, plan, inputs, folds, data, outcomes, best, tracker, parent, state, out_dir, slots,
                         n_folds, ex, tracking_uri=uri, progress=progress, no_cache=no_cache, cache_root=cache_root,
                         wall_start=wall_start, phases=phases)
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
        if writer is not None:
            try:
                writer.flush()
            except RuntimeError:
                pass
            writer.close()
        _end_open_trials(tracker, reader, parent)
        tracker.end(parent, "FINISHED" if ok else ("KILLED" if killed else "FAILED"))
        if state is not None:
            state.save(status=status)


def _end_open_trials(tracker: tk.Tracker, reader: tk.RunReader, parent: str) -> None:
    """No trial run is ever left RUNNING: whatever is still open when the driver stops was cut short."""
    for run in reader.children(parent):
        if tk.TAG_TRIAL_ID in run.tags and run.status == "RUNNING":
            tracker.log(run.run_id, tags={tk.TAG_TRIAL_STATE: "interrupted"})
            tracker.end(run.run_id, "KILLED")


def _finish(spec: WorkflowSpec, plan: SweepPlan, inputs: Inputs, folds: FoldPlan, data: PreparedData,
            outcomes: list[TrialOutcome], best: TrialOutcome, tracker: tk.Tracker, parent: str, state: SweepState,
            out_dir: Path, slots: Slots, n_folds: int, ex: RayExecutor, *, tracking_uri: str, progress: bool,
            no_cache: bool, cache_root: str | None, wall_start: float, phases: dict[str, float]) -> SweepResult:
    """Plots, the trials table, the optional refit, summary.json; all logged on the parent run."""
    tick = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    distributions = {d.name: to_optuna(d) for d in plan.space}
    study = study_of(outcomes, distributions)
    plots, skipped = write_plots(study, out_dir / "plots", plan.seed, inputs.metric)
    importance = importances(study, plan.seed)
    trials_csv = out_dir / "trials.csv"
    trials_frame(outcomes, n_folds).to_csv(trials_csv, index=False)
    c = counts(outcomes)
    phases["plots"] = time.perf_counter() - tick
    refit = None
    if plan.refit:
        tick = time.perf_counter()
        refit = _refit(spec, plan, best, out_dir / "refit", tracking_uri, progress, no_cache, cache_root, parent)
        tracker.log(refit["run_id"], tags={"foldwise.refit_of": parent, "foldwise.best_trial_run": best.run_id or ""})
        phases["refit"] = time.perf_counter() - tick
    (out_dir / "spec.yaml").write_text(to_yaml(spec))
    summary = {
        "command": "sweep",
        "experiment": spec.experiment,
        "run_id": parent,
        "tracking_uri": tracking_uri,
        "metric": inputs.metric,
        "greater_is_better": True,
        "model": plan.model.name,
        "folds": {"scheme": folds.scheme, "n": folds.n_folds, "seed": folds.seed, "hash": folds.hash},
        "data_fingerprint": data.fingerprint,
        "space": dict(spec.search.space) if spec.search else {},
        "pruner": plan.pruner,
        "parallel_folds": plan.parallel_folds,
        "concurrency": slots.concurrency,
        "best": {"params": best.params, "cv_score": best.cv_score,
                 "fold_scores": [best.fold_scores[k] for k in sorted(best.fold_scores)],
                 "run_id": best.run_id, "trial": best.number},
        "trials": c,
        "trials_requested": plan.trials,
        "importances": importance,
        "refit": refit,
        "resumes": state.resumes,
        "tune_path": state.tune_path,
        "wall_seconds": time.perf_counter() - wall_start,
        "startup_seconds": ex.startup_seconds,
        "phase_seconds": phases,
        "outputs": {"trials": str(trials_csv), "plots": plots, "plots_skipped": skipped},
    }
    write_json(out_dir / "summary.json", summary)
    tracker.log(parent, metrics={tk.M_CV_SCORE: best.cv_score, "wall_seconds": summary["wall_seconds"],
                                 **{f"trials.{k}": float(v) for k, v in c.items()}},
                tags={"foldwise.best_trial_run": best.run_id or "", "foldwise.best_params": json.dumps(best.params)})
    tracker.log_artifacts(parent, out_dir if not plan.refit else _artifact_view(out_dir))
    return SweepResult(summary=summary, out_dir=out_dir, outcomes=tuple(outcomes))


def _artifact_view(out_dir: Path) -> Path:
    """The sweep's own files (the refit logs its outputs on its own run)."""
    import shutil
    import tempfile

    view = Path(tempfile.mkdtemp(prefix="foldwise-sweep-artifacts-"))
    for item in out_dir.iterdir():
        if item.name == "refit":
            continue
        (shutil.copytree if item.is_dir() else shutil.copy2)(item, view / item.name)
    return view


def _refit(spec: WorkflowSpec, plan: SweepPlan, best: TrialOutcome, out_dir: Path, tracking_uri: str,
           progress: bool, no_cache: bool, cache_root: str | None, parent: str) -> dict[str, Any]:
    """The best params through the whole `foldwise run` pipeline (OOF, test predictions, submission), as a child run."""
    from foldwise.workflows.commands.run import run_cv

    raw = spec.model_dump(mode="json")
    raw["models"][plan.model_index]["params"] = {**raw["models"][plan.model_index]["params"], **best.params}
    refit_spec = load_spec(raw)
    result = run_cv(refit_spec, out=out_dir, tracking_uri=tracking_uri, progress=progress, no_cache=no_cache,
                    cache_root=cache_root, parent_run_id=parent, run_name="refit")
    s = result.summary
    return {"run_id": s["run_id"], "params": best.params, "cv_score": s["models"][plan.model.name]["cv_score"],
            "ensemble_cv_score": s["ensemble"]["cv_score"], "out_dir": str(out_dir), "outputs": s["outputs"]}

