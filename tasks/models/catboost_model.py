"""CatBoost with the same contract as `lightgbm`.

Categorical columns go to CatBoost as `cat_features` (as text, with missing as its own level:
CatBoost refuses NaN in a categorical column); NaN in numeric columns is CatBoost's missing
value. Early stopping, when `early_stopping_rounds` is set, stops on the inner 10% split of the
*training* rows, never on the held-out fold. Threads come from the fold's cpus; a fold that
holds a GPU trains with `task_type: GPU` when CatBoost sees a device, else on the CPU with a
warning. CatBoost writes no files (`allow_writing_files: false`) unless the user asks.
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
import pandas as pd

try:
    import catboost as cb
except ImportError as e:
    raise ImportError("model type catboost needs catboost: pip install 'foldwise[boosters]'") from e

from foldwise.tasks.features import column_kinds
from foldwise.tasks.models import FitContext, ModelConfig, inner_split
from foldwise.tasks.models.boosters import check_names, encode_seen, on_gpu
from foldwise.tasks.models.sklearn_model import _align_proba

DOCS = "https://catboost.ai/docs/en/references/training-parameters/"
MISSING_LEVEL = "__missing__"


def accepted_params() -> set[str]:
    names = set(inspect.signature(cb.CatBoostClassifier.__init__).parameters)
    names |= set(inspect.signature(cb.CatBoostRegressor.__init__).parameters)
    return names - {"self", "cat_features", "kwargs"}


def check_params(params: dict) -> str | None:
    """The first param CatBoost does not accept, as a message naming the valid ones; None if all are fine."""
    return check_names("catboost", params, accepted_params(), DOCS)


def _probe_gpu() -> None:
    """Raises unless CatBoost sees a CUDA device (a broken driver raises too: read as no GPU)."""
    from catboost.utils import get_gpu_device_count

    if get_gpu_device_count() == 0:
        raise RuntimeError("CatBoost sees no CUDA device")


class CatBoostModel:
    def __init__(self, config: ModelConfig, ctx: FitContext) -> None:
        self.config, self.ctx = config, ctx
        params: dict[str, Any] = dict(config.params)
        self.early_stopping_rounds: int | None = params.pop("early_stopping_rounds", None)
        if not params.keys() & {"random_seed", "random_state"}:
            params["random_seed"] = ctx.seed
        if "thread_count" not in params:
            params["thread_count"] = max(1, int(ctx.n_threads))
        if not params.keys() & {"verbose", "silent", "logging_level", "verbose_eval"}:
            params["logging_level"] = "Silent"
        params.setdefault("allow_writing_files", False)
        if "task_type" not in params and ctx.gpus > 0 and on_gpu("catboost", _probe_gpu):
            params["task_type"] = "GPU"
        self.params = params
        self.device = "cuda" if params.get("task_type") == "GPU" else "cpu"
        self.estimator: cb.CatBoost | None = None
        self.best_iteration: int | None = None
        self._columns: list[str] = []
        self._cats: list[str] = []
        self._seen = np.empty(0)

    def _frame(self, X: pd.DataFrame) -> pd.DataFrame:
        """Categoricals as text with missing as a level; numeric columns as they are."""
        if not self._cats:
            return X
        X = X.copy()
        for c in self._cats:
            X[c] = X[c].astype(object).where(X[c].notna(), MISSING_LEVEL).astype(str)
        return X

    def fit(self, X: pd.DataFrame, y: np.ndarray) -> None:
        self._columns = [str(c) for c in X.columns]
        self._cats = column_kinds(X)[1]
        X = self._frame(X)
        y_arr = np.asarray(y)
        regression = self.ctx.task == "regression"
        cls = cb.CatBoostRegressor if regression else cb.CatBoostClassifier
        self.estimator = cls(**self.params, cat_features=self._cats or None)
        if self.early_stopping_rounds is None:
            y_fit, self._seen = encode_seen(y_arr, self.ctx.task)
            self.estimator.fit(X, y_fit)
            return
        fit_idx, stop_idx = inner_split(y_arr, self.ctx.task, self.ctx.seed)
        if not regression:
            stop_idx = stop_idx[np.isin(y_arr[stop_idx], y_arr[fit_idx])]
        y_fit, self._seen = encode_seen(y_arr[fit_idx], self.ctx.task)
        y_stop = y_arr[stop_idx] if regression else np.searchsorted(self._seen, y_arr[stop_idx])
        self.stop_rows = stop_idx
        self.estimator.fit(X.iloc[fit_idx], y_fit, eval_set=(X.iloc[stop_idx], y_stop),
                           early_stopping_rounds=int(self.early_stopping_rounds), use_best_model=True)
        self.best_iteration = int(self.estimator.get_best_iteration())

    def feature_importance(self) -> dict[str, float]:
        values = self.estimator.get_feature_importance()
        return {c: float(v) for c, v in zip(self._columns, values, strict=True)}

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        X = self._frame(X)
        if self.ctx.task == "regression":
            return np.asarray(self.estimator.predict(X), dtype=np.float64)
        proba = np.asarray(self.estimator.predict_proba(X), dtype=np.float64)
        classes = np.asarray(self.estimator.classes_, dtype=int)
        return _align_proba(proba, self._seen[classes], self.ctx)
