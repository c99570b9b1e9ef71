"""A sweep's trials in MLflow: the driver's record of every trial attempt, its child run, and `--resume`'s reconcile.

Tune's events (engine.tune's callback) reach `SweepBook` on Tune's event loop; the MLflow
writes go to one background thread (`MlflowWriter`) so that loop never waits on the store.

Resuming after the driver died: the MLflow records are made to agree with Tune's last saved
state first (`reconcile`). A trial MLflow already holds as ended keeps its run (when Tune's
saved state had it still running, the trial replays its recorded fold scores instead of
training again, so searcher and scheduler see it and no second run is made); a trial cut
short is marked KILLED (state `interrupted`) and runs again as a new attempt, so the sweep
ends with the requested number of ended trials.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from foldwise.tasks.sweep_report import FINAL_STATES, TrialOutcome
from foldwise.workflows.engine.tune import FOLDS_DONE, Replay, saved_trials
from foldwise.workflows.tracking import tracker as tk

COST = "cost."  # a trial's costs, in Tune's reports and as the trial run's metrics (cost.fit_seconds, ...)


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
    costs: dict[str, float] = field(default_factory=dict)  # fit_seconds, predict_seconds, model_bytes (one fold's mean)
    written: bool = False  # its ending is in MLflow (the writer thread sets it)

    def outcome(self) -> TrialOutcome:
        return TrialOutcome(number=self.number, trial_id=self.trial_id, run_id=self.run_id, params=dict(self.params),
                            state=self.state, fold_scores=dict(self.fold_scores),
                            seconds=(self.ended or time.time()) - self.started, error=self.error,
                            compute_seconds=sum(self.fold_seconds.values()), ended_at=self.ended,
                            costs=dict(self.costs))


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


class BookWatcher(Protocol):
    """Whatever shows the book as it changes (the command's live line)."""

    def update(self, book: SweepBook, force: bool = False) -> None: ...


class SweepBook:
    """Every trial attempt of the sweep, their MLflow runs, counts and the best so far (engine.tune's TrialBook)."""

    def __init__(self, writer: MlflowWriter, parent_id: str, n_folds: int, base_tags: dict[str, str],
                 progress: BookWatcher, deadline: float | None) -> None:
        self.writer, self.parent_id, self.n_folds = writer, parent_id, n_folds
        self.base_tags, self.progress, self.deadline = base_tags, progress, deadline
        self.records: list[TrialRecord] = []  # every attempt, ended ones included
        self.live: dict[str, TrialRecord] = {}  # trial id -> the attempt running now
        self.next_number = 0
        self.interrupted = False
        # kept as trials end, so the live line and lookups cost the same at trial 2,000 as at trial 2
        self._attempts: dict[str, list[TrialRecord]] = {}
        self._states: dict[str, int] = {}
        self.best: TrialRecord | None = None  # the completed trial with the greatest score (earliest on ties)

    def _index(self, record: TrialRecord) -> None:
        self.records.append(record)
        self._attempts.setdefault(record.trial_id, []).append(record)

    def _count(self, record: TrialRecord) -> None:
        self._states[record.state] = self._states.get(record.state, 0) + 1
        if record.state == "completed" and record.fold_scores:
            score = float(np.mean(list(record.fold_scores.values())))
            best = self.best
            if best is None or (score, -record.number) > (float(np.mean(list(best.fold_scores.values()))), -best.number):
                self.best = record

    # ---- state from an earlier run of this sweep (resume)
    def adopt(self, record: TrialRecord) -> None:
        self._index(record)
        self._count(record)
        self.next_number = max(self.next_number, record.number + 1)

    def number_of(self, trial_id: str, created: int | None) -> int:
        """The trial's number: the order in which the searcher suggested it (Optuna's trial number)."""
        earlier = self._attempts.get(trial_id)
        if earlier:
            return earlier[0].number
        n = created if created is not None else self.next_number
        self.next_number = max(self.next_number, n + 1)
        return n

    # ---- Tune events
    def start(self, trial_id: str, params: dict[str, Any], replay: bool, created: int | None = None) -> None:
        if replay:
            self.live[trial_id] = TrialRecord(number=-1, trial_id=trial_id, params=params, replaying=True)
            self.progress.update(self)
            return
        attempt = 1 + len(self._attempts.get(trial_id, ()))
        rec = TrialRecord(number=self.number_of(trial_id, created), trial_id=trial_id, params=params, attempt=attempt)
        self._index(rec)
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
        rec.costs = {k.removeprefix(COST): float(v) for k, v in result.items() if k.startswith(COST)}
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
        self._count(rec)
        self.writer.submit(self._close_run, rec)
        self.progress.update(self)

    # ---- MLflow (on the writer thread)
    def _open_run(self, rec: TrialRecord) -> None:
        """The trial's run. When the trial has already ended (the writer is behind), its whole
        record goes in one batch here: three store calls per trial instead of four."""
        tracker = self.writer.tracker
        tags = {**self.base_tags, tk.TAG_TRIAL: str(rec.number), tk.TAG_TRIAL_ID: rec.trial_id,
                tk.TAG_TRIAL_STATE: "running", tk.TAG_ATTEMPT: str(rec.attempt)}
        name = f"trial-{rec.number:03d}" + (f"-attempt{rec.attempt}" if rec.attempt > 1 else "")
        rec.run_id = tracker.start_run(name, tags, parent_id=self.parent_id, start_time=rec.started)
        if rec.state in FINAL_STATES and not rec.written:
            rec.written = True
            write_ending(tracker, rec, params=rec.params)
        else:
            tracker.log(rec.run_id, params=rec.params)

    def _close_run(self, rec: TrialRecord) -> None:
        if rec.run_id is None or rec.written:
            return
        rec.written = True
        write_ending(self.writer.tracker, rec)

    # ---- views
    def outcomes(self) -> list[TrialOutcome]:
        return [r.outcome() for r in self.records]

    def ended(self) -> list[TrialRecord]:
        return [r for r in self.records if r.state in FINAL_STATES]

    def tally(self) -> dict[str, int]:
        """trials{total, completed, pruned, failed, stopped, interrupted} as `sweep_report.counts` has them, kept live."""
        by_state = {k: self._states.get(k, 0) for k in (*FINAL_STATES, "interrupted")}
        return {"total": sum(by_state[k] for k in FINAL_STATES), **by_state}

    @property
    def running(self) -> int:
        return sum(not r.replaying for r in self.live.values())


def write_ending(tracker: tk.Tracker, rec: TrialRecord, params: dict[str, Any] | None = None) -> None:
    """A trial's end in one batch: stepped fold scores, cv_score (completed only), state; then its status."""
    folds = sorted(rec.fold_scores)
    metrics: dict[str, float] = {FOLDS_DONE: float(len(folds))}
    if folds:
        metrics["running_score"] = float(np.mean([rec.fold_scores[k] for k in folds]))
    if rec.state == "completed":
        metrics[tk.M_CV_SCORE] = metrics["running_score"]
        metrics.update({f"{COST}{k}": v for k, v in rec.costs.items()})
    tags = {tk.TAG_TRIAL_STATE: rec.state}
    if rec.error:
        tags["foldwise.failure"] = rec.error[:5000]
    steps = {tk.M_FOLD_SCORE: {k: rec.fold_scores[k] for k in folds},
             tk.M_FIT_SECONDS: {k: rec.fit_seconds.get(k, 0.0) for k in folds}}
    tracker.log(rec.run_id, params=params, metrics=metrics, tags=tags, steps=steps)
    tracker.end(rec.run_id, {"completed": "FINISHED", "pruned": "FINISHED", "failed": "FAILED"}.get(rec.state, "KILLED"))


def end_open_trials(tracker: tk.Tracker, reader: tk.RunReader, parent: str) -> None:
    """No trial run is ever left RUNNING: whatever is still open when the driver stops was cut short."""
    for run in reader.children(parent, running_only=True):
        if tk.TAG_TRIAL_ID in run.tags and run.status == "RUNNING":
            tracker.log(run.run_id, tags={tk.TAG_TRIAL_STATE: "interrupted"})
            tracker.end(run.run_id, "KILLED")


# --------------------------------------------------------------------------- resuming: MLflow vs Tune's saved state


def reconcile(reader: tk.RunReader, tracker: tk.Tracker, parent_run_id: str, tune_path: str | Path,
              typed_params: Callable[[dict[str, str]], dict[str, Any]],
              n_folds: int) -> tuple[list[TrialRecord], dict[str, Replay]]:
    """Make MLflow agree with the Tune state the resume starts from (see the module docstring).

    `typed_params` gives MLflow's text params back their types (from the search space).
    Returns the trial records to carry on with and the trials to replay instead of training.
    """
    tune_trials = saved_trials(tune_path)  # {} when killed before Tune's first save: every trial reruns
    runs = [r for r in reader.children(parent_run_id) if tk.TAG_TRIAL_ID in r.tags]
    runs.sort(key=lambda r: (int(r.tags.get(tk.TAG_TRIAL, 0)), int(r.tags.get(tk.TAG_ATTEMPT, 1))))
    records: list[TrialRecord] = []
    replays: dict[str, Replay] = {}
    for run in runs:
        tid = run.tags[tk.TAG_TRIAL_ID]
        t = tune_trials.get(tid)
        tune_ended = t is not None and t.ended
        rec = TrialRecord(number=int(run.tags.get(tk.TAG_TRIAL, 0)), trial_id=tid,
                          params=dict(t.config) if t is not None else typed_params(run.params),
                          attempt=int(run.tags.get(tk.TAG_ATTEMPT, 1)), run_id=run.run_id,
                          state=run.tags.get(tk.TAG_TRIAL_STATE, "running"), error=run.tags.get("foldwise.failure"),
                          started=run.start_time_ms / 1000, ended=run.start_time_ms / 1000)
        if rec.state in FINAL_STATES:
            rec.fold_scores = reader.steps(run.run_id, tk.M_FOLD_SCORE)
            rec.costs = {k.removeprefix(COST): v for k, v in run.metrics.items() if k.startswith(COST)}
            if t is None:
                # Ended after Tune's last saved state, in a trial that state does not know: the
                # resumed searcher will sample a replacement, so this record does not count.
                rec.state = "interrupted"
                tracker.log(run.run_id, tags={tk.TAG_TRIAL_STATE: "interrupted", "foldwise.note":
                                              "ended after the sweep's last saved state; replaced on resume"})
                tracker.end(run.run_id, "KILLED")
            elif not tune_ended:
                replays[tid] = Replay(tuple(sorted(rec.fold_scores.items())),
                                      failed=(rec.error or "failed") if rec.state == "failed" else None,
                                      costs=dict(rec.costs))
        elif rec.state not in ("interrupted", "stopped"):
            if tune_ended:  # ended, and saved by Tune, but the driver died before writing it
                last = t.last_result or {}
                rec.fold_scores = {int(k): float(v) for k, v in last.get("fold_scores", [])}
                rec.costs = {k.removeprefix(COST): float(v) for k, v in last.items() if k.startswith(COST)}
                if t.status == "ERROR":
                    rec.state, rec.error = "failed", t.error
                else:
                    rec.state = "completed" if len(rec.fold_scores) == n_folds else "pruned"
            else:
                rec.state = "interrupted"
            write_ending(tracker, rec)
        records.append(rec)
    return records, replays
