"""One fold of one model: fit on the other folds, predict the held-out fold and the test set."""

from __future__ import annotations

import pickle
import time
from dataclasses import dataclass

import numpy as np

from tasks.data import PreparedData
from tasks.features import fit_vocabulary, frame
from tasks.folds import FoldPlan
from tasks.metrics import score
from tasks.models import FitContext, ModelConfig, TrainingLog, create_model


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
    training: TrainingLog | None = None  # per-epoch history + checkpoint, from adapters that train in epochs
    started: float = 0.0  # unix seconds when the fold task began / ended (a timeline of the run)
    ended: float = 0.0


def train_fold(data: PreparedData, plan: FoldPlan, config: ModelConfig, fold: int, metric: str, seed: int) -> FoldResult:
    """Everything the model learns (encoders, scalers, early stopping) comes from the training rows."""
    started = time.time()
    train_rows, valid_rows = plan.train_rows(fold), plan.valid_rows(fold)
    vocab = fit_vocabulary(data, train_rows)
    ctx = FitContext(task=data.task, n_classes=data.n_classes, categorical=data.categorical, seed=seed,
                     n_threads=max(1, int(config.cpus)), gpus=config.gpus, image_column=data.image_column)
    model = create_model(config, ctx)
    images = data.images is not None and getattr(model, "takes_images", False)

    def rows_of(X: np.ndarray | None, paths: np.ndarray | None, rows: np.ndarray | None):  # noqa: ANN202
        """The fold frame; the image paths as one more column for adapters that take images."""
        X_rows = X if rows is None else X[rows]
        out = frame(data, X_rows, vocab)
        if images:
            out[data.image_column] = paths if rows is None else paths[rows]
        return out

    start = time.perf_counter()
    model.fit(rows_of(data.X, data.images, train_rows), data.y[train_rows])
    fit_seconds = time.perf_counter() - start
    start = time.perf_counter()
    oof = np.asarray(model.predict(rows_of(data.X, data.images, valid_rows)))
    predict_seconds = time.perf_counter() - start
    test = np.asarray(model.predict(rows_of(data.X_test, data.test_images, None))) if data.X_test is not None else None
    training = model.training_log() if hasattr(model, "training_log") else None
    try:
        model_bytes = len(pickle.dumps(model, protocol=pickle.HIGHEST_PROTOCOL))
    except Exception:  # noqa: BLE001 - some user adapters hold unpicklable handles; size unknown
        model_bytes = -1
    return FoldResult(
        model=config.name, fold=fold, valid_rows=valid_rows, oof=oof, test=test,
        score=score(metric, data.task, data.y[valid_rows], oof),
        fit_seconds=fit_seconds, predict_seconds=predict_seconds, model_bytes=model_bytes,
        training=training, started=started, ended=time.time(),
    )
