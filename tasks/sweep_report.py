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
    costs: dict[str, float] = field(default_factory=dict)  # fit_seconds, predict_seconds, model_bytes: one fold's mean

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


def objective_values(o: TrialOutcome, objectives: tuple[str, ...]) -> tuple[float, ...] | None:
    """A completed trial's values of the study's objectives (cv_score, then costs), None without all of them."""
    if o.state != "completed":
        return None
    values = [o.cv_score if name == "cv_score" else o.costs.get(name) for name in objectives]
    return None if any(v is None for v in values) else tuple(float(v) for v in values)


def pareto_front(outcomes: list[TrialOutcome], objectives: tuple[str, ...]) -> list[TrialOutcome]:
    """The completed trials no other completed trial dominates (score: greater is better; costs: less is).

    A trial dominates another when it is no worse on every objective and better on one;
    equal points are all kept. In trial order.
    """
    scored = [(o, v) for o in outcomes if (v := objective_values(o, objectives)) is not None]
    if not scored:
        return []
    signs = np.array([1.0 if name == "cv_score" else -1.0 for name in objectives])
    points = np.array([v for _, v in scored]) * signs  # all maximised
    no_worse = (points[:, None, :] >= points[None, :, :]).all(axis=2)  # [i, j]: i is no worse than j
    better = (points[:, None, :] > points[None, :, :]).any(axis=2)
    dominated = (no_worse & better).any(axis=0)
    return sorted((o for (o, _), d in zip(scored, dominated, strict=True) if not d), key=lambda o: o.number)


def best_per_model(outcomes: list[TrialOutcome], model_key: str) -> dict[str, TrialOutcome]:
    """Several models in one study: each model's best completed trial (by cv_score)."""
    out: dict[str, TrialOutcome] = {}
    for name in sorted({str(o.params.get(model_key)) for o in outcomes if model_key in o.params}):
        best = best_of([o for o in outcomes if str(o.params.get(model_key)) == name])
        if best is not None:
            out[name] = best
    return out


def plot_sample(outcomes: list[TrialOutcome], limit: int, keep_best: int) -> list[TrialOutcome]:
    """At most `limit` ended trials for the plots: the `keep_best` best completed ones, the rest evenly spaced.

    Thousands of trials make an unreadable history and parallel-coordinate plot (and a slow one);
    the table and summary keep every trial.
    """
    ended = [o for o in outcomes if o.state in FINAL_STATES]
    if len(ended) <= limit:
        return ended
    done = sorted((o for o in ended if o.state == "completed"), key=lambda o: -float(o.cv_score))
    kept = {id(o) for o in done[:keep_best]}
    rest = [o for o in sorted(ended, key=lambda o: o.number) if id(o) not in kept]
    room = limit - len(kept)
    picks = {int(round(i)) for i in np.linspace(0, len(rest) - 1, room)} if room > 0 and rest else set()
    kept |= {id(rest[i]) for i in picks}
    return [o for o in ended if id(o) in kept]


def study_of(outcomes: list[TrialOutcome], distributions: dict[str, Any],
             objectives: tuple[str, ...] = ("cv_score",)) -> Any:
    """An in-memory Optuna study holding the ended trials, in start order (several directions with costs)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    directions = ["maximize" if name == "cv_score" else "minimize" for name in objectives]
    study = optuna.create_study(directions=directions, study_name="foldwise-sweep")
    multi = len(objectives) > 1
    State = optuna.trial.TrialState
    for o in sorted(outcomes, key=lambda o: o.number):
        if o.state not in FINAL_STATES:
            continue
        params = {k: v for k, v in o.params.items() if k in distributions}
        dists = {k: distributions[k] for k in params}
        steps = sorted(o.fold_scores)
        intermediate = {i + 1: float(np.mean([o.fold_scores[s] for s in steps[: i + 1]])) for i in range(len(steps))}
        values = objective_values(o, objectives)
        if o.state == "completed" and values is not None:
            trial = optuna.trial.create_trial(params=params, distributions=dists, values=list(values),
                                              intermediate_values={} if multi else intermediate, state=State.COMPLETE)
        elif o.state == "failed":
            trial = optuna.trial.create_trial(params=params, distributions=dists, state=State.FAIL)
        else:
            trial = optuna.trial.create_trial(params=params, distributions=dists,
                                              intermediate_values={} if multi else intermediate, state=State.PRUNED)
        trial.set_user_attr("trial_id", o.trial_id)
        study.add_trial(trial)
    return study


def _score(t: Any) -> float:
    return t.values[0]  # the cv_score of a multi-objective study's trial (the score comes first)


def importances(study: Any, seed: int) -> dict[str, float]:
    """Optuna's fANOVA importances for the score over the completed trials ({} when fewer than two completed)."""
    import optuna

    completed = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(completed) < 2:
        return {}
    if len(completed[0].params) == 1:
        return {name: 1.0 for name in completed[0].params}
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=seed)
    target = _score if len(study.directions) > 1 else None
    return {k: float(v) for k, v in
            optuna.importance.get_param_importances(study, evaluator=evaluator, target=target).items()}


def write_plots(study: Any, out_dir: Path, seed: int, metric: str,
                objectives: tuple[str, ...] = ("cv_score",)) -> tuple[dict[str, str], dict[str, str]]:
    """optimisation history, parameter importances, parallel coordinates (of the score) as PNGs,
    and with costs among the objectives the Pareto front.

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
        return ovm.plot_param_importances(study, evaluator=evaluator, target=target, target_name=metric)

    multi = len(objectives) > 1
    target = _score if multi else None
    plots = {
        "optimization_history": lambda: ovm.plot_optimization_history(study, target=target, target_name=metric),
        "param_importances": importance_plot,
        "parallel_coordinate": lambda: ovm.plot_parallel_coordinate(study, target=target, target_name=metric),
    }
    if multi:
        names = [metric if name == "cv_score" else name for name in objectives]
        plots["pareto_front"] = lambda: ovm.plot_pareto_front(study, target_names=names)
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
        row.update({f"cost.{k}": v for k, v in o.costs.items()})
        row.update({f"param.{k}": v for k, v in o.params.items()})
        row["error"] = o.error
        rows.append(row)
    return pd.DataFrame(rows)
