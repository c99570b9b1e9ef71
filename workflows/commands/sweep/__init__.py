"""`foldwise sweep`: Optuna's TPE through Ray Tune, pruned on fold-wise scores, resumable, every trial in MLflow.

The composition, top to bottom in `run_sweep` (command.py):
  validate (plan.py: spec, space vs the model's params) -> Ray up, data prepared once and the
  fold plan computed once through the executor (the same plan as `foldwise run`) -> MLflow
  parent -> Ray Tune `Tuner` (engine.tune: OptunaSearch with a seeded TPE and the constant
  liar, the spec's own params enqueued as trial 0 (the baseline trial, never pruned), ASHA or
  median pruning on folds done, actors reused) whose trials read the data by
  reference and score the folds -> the trials' child runs written by the driver from a Tune
  callback (tracking.sweep_book) -> plots, an optional refit through the `foldwise run`
  graph (pipeline.cross_validation), summary.json (finish.py).

Resuming after the driver died (`--resume`): the sweep's folder (state.py) points at Tune's
saved state; Tune restores its trials and the searcher's state from it, and the MLflow
records are reconciled with that state first (tracking.sweep_book.reconcile).
"""

from foldwise.workflows.commands.sweep.command import run_sweep
from foldwise.workflows.commands.sweep.finish import SweepResult

__all__ = ["SweepResult", "run_sweep"]
