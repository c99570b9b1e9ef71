"""One fold of a sweep trial: `train_fold` for its score and cost only.

Kept apart from the sweep's workflow module so that a fold task (with `search.parallel_folds`)
imports only `tasks`, not Ray Tune and Optuna, in each worker process.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

from foldwise.tasks.data import PreparedData
from foldwise.tasks.folds import FoldPlan
from foldwise.tasks.models import ModelConfig
from foldwise.tasks.train import train_fold


@dataclass(frozen=True)
class FoldScore:
    """What a trial keeps of a fold: its score and its cost (not the OOF arrays)."""

    fold: int
    score: float
    fit_seconds: float
    seconds: float  # the whole fold: features, fit, predict, score
    predict_seconds: float = 0.0
    model_bytes: int = 0  # the pickled fitted model's size


def score_fold(data: PreparedData, plan: FoldPlan, config: ModelConfig, fold: int, metric: str, seed: int) -> FoldScore:
    """`train_fold` without test predictions: a trial needs only the held-out score (the refit predicts test)."""
    start = time.perf_counter()
    r = train_fold(replace(data, X_test=None, test_ids=None), plan, config, fold, metric, seed)
    return FoldScore(fold=fold, score=r.score, fit_seconds=r.fit_seconds, seconds=time.perf_counter() - start,
                     predict_seconds=r.predict_seconds, model_bytes=max(0, r.model_bytes))
