"""A fold model's predictions on the test set: a DAG node of its own, apart from `train_fold`.

The fold's key names the training data, the fold plan and the model only, so adding or
changing `data.test` refits nothing: only this node (keyed by the fold's key and the test data)
runs again, re-predicting with the fold's pickled adapter.
"""

from __future__ import annotations

import pickle
import time
from dataclasses import dataclass

import numpy as np

from foldwise.tasks.data import PreparedData, drop_columns
from foldwise.tasks.features import fit_vocabulary, frame
from foldwise.tasks.fold_steps import fitted_fold_steps
from foldwise.tasks.folds import FoldPlan
from foldwise.tasks.train import FoldResult


@dataclass(frozen=True)
class TestPrediction:
    """One fold model's predictions for every test row: (n,) or (n, K), like its OOF."""

    __test__ = False  # not a pytest class

    model: str
    fold: int
    values: np.ndarray
    seconds: float


def predict_test(data: PreparedData, plan: FoldPlan, result: FoldResult, drop: tuple[str, ...] = ()) -> TestPrediction:
    """The fold's fitted adapter on `data.X_test`, framed exactly as its training rows were
    (category levels seen in the fold's training rows; others missing)."""
    if result.fitted is None:
        raise ValueError(f"model {result.model!r} fold {result.fold}: its fitted adapter cannot be pickled, so "
                         "it cannot predict the test set apart from its fit; make the adapter picklable")
    if data.X_test is None:
        raise ValueError("predict_test needs data with a test set")
    if drop:
        data = drop_columns(data, drop)
    start = time.perf_counter()
    vocab = fit_vocabulary(data, plan.train_rows(result.fold))
    model = pickle.loads(result.fitted)
    X = frame(data, data.X_test, vocab)
    steps = fitted_fold_steps(result.fold_steps)  # the fold's fold steps, fitted on its training rows
    if steps is not None:
        X = steps.transform(X)
    if data.test_images is not None and getattr(model, "takes_images", False):
        X[data.image_column] = data.test_images
    values = np.asarray(model.predict(X))
    return TestPrediction(model=result.model, fold=result.fold, values=values, seconds=time.perf_counter() - start)
