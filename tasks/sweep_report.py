"""What a finished sweep shows: its trials as an Optuna study, the plots people look at, a table.

The study is rebuilt from the driver's own trial records (not from the searcher inside
Tune), so the plots and importances describe exactly what MLflow holds: completed trials
with their full cross-validated score, pruned trials with the running score at which
they stopped, failed trials as failed. Interrupted attempts (a killed driver) are left
out: their trial ran again after the resume.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

FINAL_STATES = ("completed", "pruned", "failed", "stopped")  # a trial that ended; counted once
STATES = (*FINAL_STATES, "interrupted", "running")


@dataclass(frozen=True)
class TrialOutcome:
    """One trial as the sweep recorded it (one MLflow child run)."""

    number: int  # 0, 1, ... in the order the trials started
    trial_id: str  # Ray Tune's id
    run_id: str | None
    params: dict[str, Any]
    state: str  # one of STATES
    fold_scores: dict[int, float] = field(default_factory=dict)  # fold index -> score
    seconds: float = 0.0  # from start to end as the driver saw it
    error: str | None = None
    compute_seconds: float = 0.0  # inside the fold tasks (features, fit, predict, score), summed
    ended_at: float | None = None  # unix seconds

    @property
    def folds_done(self) -> int:
        return len(self.fold_scores)

    @property
    def running_score(self) -> float | None:
        return float(np.mean(list(self.fold_scores.values()))) if self.fold_scores else None

    @property
    def cv_score(self) -> float | None:
        """The mean over every fold; only a completed trial has one (a pruned trial's mean is partial)."""
        return self.running_score if self.state == "completed" else None


def counts(outcomes: list[TrialOutcome]) -> dict[str, int]:
    """trials{total, completed, pruned, failed, stopped, interrupted}; total counts trials that ended."""
    by_state = {s: sum(o.state == s for o in outcomes) for s in STATES}
    return {"total": sum(by_state[s] for s in FINAL_STATES), **{s: by_state[s] for s in STATES if s != "running"}}


def best_of(outcomes: list[TrialOutcome]) -> TrialOutcome | None:
    """The completed trial with the greatest cv_score (the earliest on ties)."""
    done = [o for o in outcomes if o.state == "completed"]
    return max(done, key=lambda o: (o.cv_score, -o.number)) if done else None


def study_of(outcomes: list[TrialOutcome], distributions: dict[str, Any]) -> Any:
    """An in-memory Optuna study (maximize) holding the ended trials, in start order."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", study_name="foldwise-sweep")
    State = optuna.trial.TrialState
    for o in sorted(outcomes, key=lambda o: o.number):
        if o.state not in FINAL_STATES:
            continue
        params = {k: v for k, v in o.params.items() if k in distributions}
        dists = {k: distributions[k] for k in params}
        steps = sorted(o.fold_scores)
        intermediate = {i + 1: float(np.mean([o.fold_scores[s] for s in steps[: i + 1]])) for i in range(len(steps))}
        if o.state == "completed":
            trial = optuna.trial.create_trial(params=params, distributions=dists, value=o.cv_score,
                                              intermediate_values=intermediate, state=State.COMPLETE)
        elif o.state == "failed":
            trial = optuna.trial.create_trial(params=params, distributions=dists, state=State.FAIL)
        else:
            trial = optuna.trial.create_trial(params=params, distributions=dists, intermediate_values=intermediate,
                                              state=State.PRUNED)
        trial.set_user_attr("trial_id", o.trial_id)
        study.add_trial(trial)
    return study


def importances(study: Any, seed: int) -> dict[str, float]:
    """Optuna's fANOVA importances over the completed trials ({} when fewer than two completed)."""
    import optuna

    completed = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(completed) < 2:
        return {}
    if len(completed[0].params) == 1:
        return {name: 1.0 for name in completed[0].params}
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=seed)
    return {k: float(v) for k, v in optuna.importance.get_param_importances(study, evaluator=evaluator).items()}


def write_plots(study: Any, out_dir: Path, seed: int, metric: str) -> tuple[dict[str, str], dict[str, str]]:
    """optimisation history, parameter importances, parallel coordinates as PNGs.

    Returns (written {name: path}, skipped {name: why}); a plot that cannot be drawn
    (e.g. importances with fewer than two completed trials) is skipped with its reason.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization import matplotlib as ovm

    out_dir.mkdir(parents=True, exist_ok=True)
    completed = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    written: dict[str, str] = {}
    skipped: dict[str, str] = {}

    def importance_plot() -> Any:
        if len(completed) < 2:
            raise ValueError("needs at least two completed trials")
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=seed)
        return ovm.plot_param_importances(study, evaluator=evaluator)

    plots = {
        "optimization_history": lambda: ovm.plot_optimization_history(study, target_name=metric),
        "param_importances": importance_plot,
        "parallel_coordinate": lambda: ovm.plot_parallel_coordinate(study, target_name=metric),
    }
    for name, draw in plots.items():
        if not completed:
            skipped[name] = "no completed trial"
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
                ax = draw()
        except (ValueError, RuntimeError) as e:
            skipped[name] = str(e).splitlines()[0] if str(e) else type(e).__name__
            continue
        fig = (ax.flat[0] if isinstance(ax, np.ndarray) else ax).figure
        fig.set_size_inches(9, 5)
        fig.tight_layout()
        path = out_dir / f"{name}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written[name] = str(path)
    return written, skipped


def trials_frame(outcomes: list[TrialOutcome], n_folds: int) -> pd.DataFrame:
    """One row per trial attempt: number, state, scores, seconds, params (for trials.csv)."""
    rows = []
    for o in sorted(outcomes, key=lambda o: (o.number, o.state == "interrupted")):
        row: dict[str, Any] = {"trial": o.number, "trial_id": o.trial_id, "run_id": o.run_id, "state": o.state,
                               "cv_score": o.cv_score, "running_score": o.running_score,
                               "folds_done": f"{o.folds_done}/{n_folds}", "seconds": round(o.seconds, 3),
                               "compute_seconds": round(o.compute_seconds, 3)}
        row.update({f"param.{k}": v for k, v in o.params.items()})
        row["error"] = o.error
        rows.append(row)
    return pd.DataFrame(rows)
