"""One parameter from an Optuna distribution through a trial's public `suggest_*` (define-by-run).

Shared by the sweep's model trials (workflows/engine/tune_search.py) and the ensemble search
(tasks/ensemble_search.py), so that both read a space the same way.
"""

from __future__ import annotations

from typing import Any


def suggest(trial: Any, name: str, dist: Any) -> Any:
    import optuna

    if isinstance(dist, optuna.distributions.CategoricalDistribution):
        return trial.suggest_categorical(name, list(dist.choices))
    if isinstance(dist, optuna.distributions.IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)
    return trial.suggest_float(name, dist.low, dist.high, step=dist.step, log=dist.log)
