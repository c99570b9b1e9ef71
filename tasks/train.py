"""One fold of one model: fit on the other folds, predict the held-out fold and the test set."""

from __future__ import annotations

import pickle
import time
from dataclasses import dataclass

import numpy as np

from tasks.data import PreparedData, drop_columns
from tasks.features import fit_vocabulary, frame
from tasks.folds import FoldPlan
from tasks.metrics import score
from tasks.models import FitContext, ModelConfig, create_model


@dataclass(frozen=True)
class FoldResult:
    model: str
    fold: int
    valid_rows: np.ndarray  # row indices of the held-out fold
    oof: np.ndarray  # predictions for valid_rows: (m,) or (m, K)
    test: np.ndarray | None  # predictions for the test set from this fold's model
    score: float
    fit_seconds: float
    predict_seconds: float
    model_bytes: int  # pickled size of the fitted adapter
    # the pickled fitted adapter (None when it cannot be pickled): later nodes re-predict with
    # it (permutation importance, new test data) instead of refitting
    fitted: bytes | None = None


def train_fold(data: PreparedData, plan: FoldPlan, config: ModelConfig, fold: int, metric: str, seed: int,
               drop: tuple[str, ...] = ()) -> FoldResult:
    """Everything the model learns (encoders, scalers, early stopping) comes from the training rows.

    `drop` names feature columns the model must not see (an ablation variant); empty for `foldwise run`.
    """
    if drop:
        data = drop_columns(data, drop)
    train_rows, valid_rows = plan.train_rows(fold), plan.valid_rows(fold)
    vocab = fit_vocabulary(data, train_rows)
    ctx = FitContext(task=data.task, n_classes=data.n_classes, categorical=data.categorical, seed=seed,
                     n_threads=max(1, int(config.cpus)), gpus=config.gpus)
    model = create_model(config, ctx)
    start = time.perf_counter()
    model.fit(frame(data, data.X[train_rows], vocab), data.y[train_rows])
    fit_seconds = time.perf_counter() - start
    start = time.perf_counter()
    oof = np.asarray(model.predict(frame(data, data.X[valid_rows], vocab)))
    predict_seconds = time.perf_counter() - start
    test = np.asarray(model.predict(frame(data, data.X_test, vocab))) if data.X_test is not None else None
    try:
        fitted: bytes | None = pickle.dumps(model, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:  # noqa: BLE001 - some user adapters hold unpicklable handles; size unknown
        fitted = None
    model_bytes = len(fitted) if fitted is not None else -1
    return FoldResult(
        model=config.name, fold=fold, valid_rows=valid_rows, oof=oof, test=test,
        score=score(metric, data.task, data.y[valid_rows], oof),
        fit_seconds=fit_seconds, predict_seconds=predict_seconds, model_bytes=model_bytes, fitted=fitted,
    )
