"""XGBoost through its scikit-learn API, with the same contract as `lightgbm`.

Categoricals stay pandas `category` columns (the fold's training levels) and XGBoost splits on
them natively (`enable_categorical=True`, hist trees); NaN is XGBoost's missing value. Early
stopping, when `early_stopping_rounds` is set, stops on the inner 10% split of the *training*
rows (`inner_split`), never on the held-out fold. Threads come from the fold's cpus; a fold
that holds a GPU trains with `device: cuda` when this build and driver can, else on the CPU
with a warning.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pandas as pd

try:
    import xgboost as xgb
except ImportError as e:
    raise ImportError("model type xgboost needs xgboost: pip install 'foldwise[boosters]'") from e

from foldwise.tasks.models import FitContext, ModelConfig, inner_split
from foldwise.tasks.models.boosters import (
    check_names,
    encode_seen,
    on_gpu,
    safe_names,
    tiny_frame,
)
from foldwise.tasks.models.sklearn_model import _align_proba

# XGBoost refuses '[', ']' and '<' in feature names; ',' breaks its feature_names too.
_BAD_NAME_CHARS = re.compile(r"[\[\]<,]")
# Booster-level names the sklearn wrapper passes through (the learning-task and tree-booster
# parameters of XGBoost's docs that are not already constructor arguments).
_BOOSTER_PARAMS = frozenset({
    "eta", "lambda", "alpha", "min_split_loss", "seed", "nthread", "max_cat_to_onehot", "num_class",
    "refresh_leaf", "process_type", "updater", "lambda_bias", "sketch_eps", "disable_default_eval_metric",
    "seed_per_iteration", "huber_slope", "quantile_alpha", "tweedie_variance_power", "aft_loss_distribution",
    "aft_loss_distribution_scale", "max_cached_hist_node", "nthreads",
})
DOCS = "https://xgboost.readthedocs.io/en/stable/parameter.html"


def accepted_params() -> set[str]:
    return (set(xgb.XGBModel().get_params()) | _BOOSTER_PARAMS) - {"callbacks", "kwargs"}


def check_params(params: dict) -> str | None:
    """The first param XGBoost does not accept, as a message naming the valid ones; None if all are fine."""
    return check_names("xgboost", params, accepted_params(), DOCS)


def _probe_cuda() -> None:
    """Raises unless a tiny fit really ran on CUDA (XGBoost itself falls back to the CPU quietly)."""
    import json

    X, y = tiny_frame()
    booster = xgb.XGBClassifier(n_estimators=1, device="cuda", n_jobs=1).fit(X, y).get_booster()
    device = json.loads(booster.save_config())["learner"]["generic_param"]["device"]
    if not device.startswith("cuda"):
        raise RuntimeError("no visible GPU" if xgb.build_info().get("USE_CUDA") else "this xgboost build has no CUDA")


class XGBoostModel:
    def __init__(self, config: ModelConfig, ctx: FitContext) -> None:
        self.config, self.ctx = config, ctx
        params: dict[str, Any] = dict(config.params)
        self.early_stopping_rounds: int | None = params.pop("early_stopping_rounds", None)
        if not params.keys() & {"random_state", "seed"}:
            params["random_state"] = ctx.seed
        if not params.keys() & {"n_jobs", "nthread", "nthreads"}:
            params["n_jobs"] = max(1, int(ctx.n_threads))
        params.setdefault("enable_categorical", True)
        params.setdefault("tree_method", "hist")
        params.setdefault("verbosity", 0)
        if "device" not in params and ctx.gpus > 0 and on_gpu("xgboost", _probe_cuda):
            params["device"] = "cuda"
        self.params = params
        self.device = str(params.get("device", "cpu"))
        self.estimator: xgb.XGBModel | None = None
        self.best_iteration: int | None = None
        self._names: list[str] | None = None
        self._columns: list[str] = []
        self._seen = np.empty(0)

    def _frame(self, X: pd.DataFrame) -> pd.DataFrame:
        if self._names is None:
            self._columns = list(X.columns)
            self._names = safe_names(self._columns, _BAD_NAME_CHARS)
        return X if list(X.columns) == self._names else X.set_axis(self._names, axis=1)

    def fit(self, X: pd.DataFrame, y: np.ndarray) -> None:
        X = self._frame(X)
        y_fit, self._seen = encode_seen(np.asarray(y), self.ctx.task)
        params = dict(self.params)
        regression = self.ctx.task == "regression"
        cls = xgb.XGBRegressor if regression else xgb.XGBClassifier
        if self.early_stopping_rounds is None:
            self.estimator = cls(**params)
            self.estimator.fit(X, y_fit)
            return
        fit_idx, stop_idx = inner_split(np.asarray(y), self.ctx.task, self.ctx.seed)
        if not regression:  # the fit part must hold every class the codes name: re-encode on it
            y_arr = np.asarray(y)
            stop_idx = stop_idx[np.isin(y_arr[stop_idx], y_arr[fit_idx])]
            y_fit, self._seen = encode_seen(y_arr[fit_idx], self.ctx.task)
            y_stop = np.searchsorted(self._seen, y_arr[stop_idx])
        else:
            y_fit, y_stop = y_fit[fit_idx], y_fit[stop_idx]
        self.stop_rows = stop_idx
        self.estimator = cls(**params, early_stopping_rounds=int(self.early_stopping_rounds))
        self.estimator.fit(X.iloc[fit_idx], y_fit, eval_set=[(X.iloc[stop_idx], y_stop)], verbose=False)
        self.best_iteration = int(self.estimator.best_iteration)

    def feature_importance(self) -> dict[str, float]:
        """Total split gain per original column name (columns never split on get 0)."""
        gains = self.estimator.get_booster().get_score(importance_type="total_gain")
        return {str(c): float(gains.get(n, 0.0)) for c, n in zip(self._columns, self._names, strict=True)}

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        X = self._frame(X)
        if self.ctx.task == "regression":
            return np.asarray(self.estimator.predict(X), dtype=np.float64)
        proba = np.asarray(self.estimator.predict_proba(X), dtype=np.float64)
        return _align_proba(proba, self._seen[np.asarray(self.estimator.classes_, dtype=int)], self.ctx)
