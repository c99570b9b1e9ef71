"""LightGBM through its scikit-learn API, with categoricals used natively.

Fold frames hold categoricals as pandas `category` dtype whose categories are the fold's
training levels, so LightGBM's `categorical_feature="auto"` picks them up and the held-out
rows map onto the same codes. Early stopping, when asked for, stops on rows split off the
*training* rows (`inner_split`), never on the held-out fold.
"""

from __future__ import annotations

import inspect
import re
from typing import Any

import numpy as np
import pandas as pd

try:
    import lightgbm as lgb
except ImportError as e:  # pragma: no cover - lightgbm is a core dependency
    raise ImportError("model type lightgbm needs lightgbm: pip install lightgbm") from e

from foldwise.tasks.models import FitContext, ModelConfig, did_you_mean, inner_split
from foldwise.tasks.models.boosters import on_gpu, tiny_frame
from foldwise.tasks.models.sklearn_model import _align_proba

# Used only when lightgbm's private alias table is unavailable.
_FALLBACK_CORE_PARAMS = frozenset({
    "early_stopping_rounds", "num_leaves", "min_data_in_leaf", "feature_fraction", "bagging_fraction",
    "bagging_freq", "lambda_l1", "lambda_l2", "max_bin", "min_child_samples",
})
# JSON-special characters LightGBM refuses in feature names.
_BAD_NAME_CHARS = re.compile(r'[\[\]{}",:]')


def _core_aliases() -> dict[str, list[str]] | None:
    """lightgbm's core parameter names -> all their aliases (private API; None if gone)."""
    try:
        from lightgbm.basic import _ConfigAliases

        return {k: list(v) for k, v in _ConfigAliases._get_all_param_aliases().items()}
    except Exception:  # noqa: BLE001 - any change in the private API means "not available"
        return None


def _aliases_of(name: str, fallback: tuple[str, ...]) -> set[str]:
    table = _core_aliases()
    return set(table.get(name, [name])) | set(fallback) if table else set(fallback)


def accepted_params() -> set[str]:
    """Every key LightGBM's sklearn wrapper takes: its own params plus core params and aliases."""
    accepted = set(lgb.LGBMModel().get_params()) | {"early_stopping_rounds"}
    table = _core_aliases()
    if table is None:
        return accepted | _FALLBACK_CORE_PARAMS
    for aliases in table.values():
        accepted.update(aliases)
    return accepted


def check_params(params: dict) -> str | None:
    """The first param LightGBM does not accept, as a message; None if all are fine."""
    accepted = accepted_params()
    for name in params:
        if name not in accepted:
            return (f"lightgbm has no parameter {name!r}{did_you_mean(name, accepted)} "
                    "(see https://lightgbm.readthedocs.io/en/stable/Parameters.html)")
    return None


def _probe_cuda() -> None:
    X, y = tiny_frame()
    lgb.LGBMClassifier(n_estimators=1, device_type="cuda", verbose=-1, n_jobs=1).fit(X, y)


class LightGBMModel:
    def __init__(self, config: ModelConfig, ctx: FitContext) -> None:
        self.config, self.ctx = config, ctx
        params: dict[str, Any] = dict(config.params)
        self.early_stopping_rounds: int | None = params.pop("early_stopping_rounds", None)
        # The spec's seed, the slot's threads and quiet logs, unless the user set them
        # (under any of LightGBM's aliases, which would otherwise clash with ours).
        if not params.keys() & _aliases_of("seed", ("seed", "random_state", "random_seed")):
            params["random_state"] = ctx.seed
        if not params.keys() & _aliases_of("num_threads", ("num_threads", "n_jobs", "nthread")):
            params["n_jobs"] = max(1, int(ctx.n_threads))
        if not params.keys() & _aliases_of("verbosity", ("verbosity", "verbose")):
            params["verbose"] = -1
        # A fold that holds a GPU uses LightGBM's CUDA build where this install is one (the PyPI
        # wheel is not): else the CPU, with a warning. A device the user set in params wins.
        if (ctx.gpus > 0 and not params.keys() & _aliases_of("device_type", ("device_type", "device"))
                and on_gpu("lightgbm", _probe_cuda)):
            params["device_type"] = "cuda"
        self.params = params
        self.estimator: lgb.LGBMModel | None = None
        self.best_iteration: int | None = None
        self._names: list[str] | None = None
        self._columns: list[str] = []  # the frame's own names, which _names may have sanitised

    def _frame(self, X: pd.DataFrame) -> pd.DataFrame:
        """X with column names LightGBM accepts (it refuses JSON-special characters)."""
        if self._names is None:
            self._columns = list(X.columns)
            names = [_BAD_NAME_CHARS.sub("_", str(c)) for c in X.columns]
            self._names = names if len(set(names)) == len(names) else [f"f{i}" for i in range(X.shape[1])]
        if list(X.columns) == self._names:
            return X
        return X.set_axis(self._names, axis=1)

    def _make(self, y: np.ndarray) -> lgb.LGBMModel:
        params = dict(self.params)
        if self.ctx.task == "regression":
            params.setdefault("objective", "regression")
            return lgb.LGBMRegressor(**params)
        # A multiclass fold whose training rows hold only two classes is a binary problem.
        seen = len(np.unique(y))
        params.setdefault("objective", "multiclass" if self.ctx.task == "multiclass" and seen > 2 else "binary")
        return lgb.LGBMClassifier(**params)

    def fit(self, X: pd.DataFrame, y: np.ndarray) -> None:
        X = self._frame(X)
        y = np.asarray(y)
        self.estimator = self._make(y)
        if self.early_stopping_rounds is None:
            self.estimator.fit(X, y)
            return
        fit_idx, stop_idx = inner_split(y, self.ctx.task, self.ctx.seed)
        if self.ctx.task != "regression":
            # A class with one training row may land only in the stop part; the
            # classifier's label encoder (fitted on the fit part) would reject it.
            stop_idx = stop_idx[np.isin(y[stop_idx], y[fit_idx])]
        self.stop_rows = stop_idx  # positions within the training rows, for inspection
        stop_X, stop_y = X.iloc[stop_idx], y[stop_idx]
        # lightgbm 4.7 deprecates eval_set for eval_X/eval_y; older 4.x only has eval_set.
        if "eval_X" in inspect.signature(self.estimator.fit).parameters:
            evals: dict[str, Any] = {"eval_X": (stop_X,), "eval_y": (stop_y,)}
        else:
            evals = {"eval_set": [(stop_X, stop_y)]}
        self.estimator.fit(X.iloc[fit_idx], y[fit_idx], **evals,
                           callbacks=[lgb.early_stopping(int(self.early_stopping_rounds), verbose=False)])
        self.best_iteration = int(self.estimator.best_iteration_)

    def feature_importance(self) -> dict[str, float]:
        """Total split gain per original column name (for write-ups' importance shifts)."""
        gains = self.estimator.booster_.feature_importance(importance_type="gain")
        return {str(c): float(g) for c, g in zip(self._columns, gains, strict=True)}

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        X = self._frame(X)
        if self.ctx.task == "regression":
            return np.asarray(self.estimator.predict(X), dtype=np.float64)
        proba = np.asarray(self.estimator.predict_proba(X), dtype=np.float64)
        return _align_proba(proba, self.estimator.classes_, self.ctx)
