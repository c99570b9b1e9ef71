"""Any scikit-learn estimator by import path, with the spec's preprocessing fitted in the fold."""

from __future__ import annotations

import importlib
import inspect

import numpy as np
import pandas as pd

from foldwise.tasks.features import column_kinds, preprocessor
from foldwise.tasks.models import FitContext, ModelConfig, did_you_mean
from foldwise.tasks.source import import_fresh, installed_version


def estimator_class(path: str) -> type:
    """The estimator class; from a user's own (uninstalled) module as its source is now."""
    module_name, _, attr = path.replace(":", ".").rpartition(".")
    if installed_version(module_name.split(".")[0]) is None:
        return getattr(import_fresh(module_name), attr)
    return getattr(importlib.import_module(module_name), attr)


def check_params(path: str, params: dict) -> str | None:
    """The first param the estimator does not accept, as a message; None if all are fine."""
    accepted = estimator_class(path)().get_params()
    for name in params:
        if name not in accepted:
            return (f"estimator {path} has no parameter {name!r}{did_you_mean(name, accepted)} "
                    f"(valid: {', '.join(sorted(accepted))})")
    return None


class SklearnModel:
    def __init__(self, config: ModelConfig, ctx: FitContext) -> None:
        self.config, self.ctx = config, ctx
        cls = estimator_class(config.estimator or "")
        params = dict(config.params)
        accepted = inspect.signature(cls).parameters
        # The seed comes from the spec unless the user set one. Threads are left to the
        # slot: Ray sets OMP_NUM_THREADS to the task's cpus.
        if "random_state" in accepted and "random_state" not in params:
            params["random_state"] = ctx.seed
        self.estimator = cls(**params)
        self.pipeline = None

    def fit(self, X: pd.DataFrame, y: np.ndarray) -> None:
        from sklearn.pipeline import Pipeline

        numeric, categorical = column_kinds(X)
        has_nan = bool(X[numeric].isna().to_numpy().any()) if numeric else False
        prep = preprocessor(self.config.preprocess, numeric, categorical, has_nan)
        self.pipeline = Pipeline([("prep", prep), ("model", self.estimator)])
        self.pipeline.fit(X, y)

    def feature_importance(self) -> dict[str, float] | None:
        """|coef_| or feature_importances_ per original column (one-hot columns summed), when the estimator has them.

        A coefficient's size depends on the preprocessing's scale: read shares, not values."""
        model = self.pipeline.named_steps["model"]
        if hasattr(model, "feature_importances_"):
            values = np.asarray(model.feature_importances_, dtype=float)
        elif hasattr(model, "coef_"):
            coef = np.abs(np.asarray(model.coef_, dtype=float))
            values = coef.reshape(-1, coef.shape[-1]).mean(axis=0)
        else:
            return None
        prep = self.pipeline.named_steps["prep"]
        owners: list[str] = []
        for name, transformer, columns in prep.transformers_:
            if name == "num":
                owners += list(columns)
            elif name == "cat":
                levels = transformer.named_steps["onehot"].categories_
                owners += [c for c, cats in zip(columns, levels, strict=True) for _ in cats]
        if len(owners) != len(values):
            return None
        out: dict[str, float] = {}
        for col, v in zip(owners, values, strict=True):
            out[str(col)] = out.get(str(col), 0.0) + float(v)
        return out

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        if self.ctx.task == "regression":
            return np.asarray(self.pipeline.predict(X), dtype=np.float64)
        proba = self.pipeline.predict_proba(X)
        return _align_proba(proba, self.pipeline.classes_, self.ctx)


def _align_proba(proba: np.ndarray, seen: np.ndarray, ctx: FitContext) -> np.ndarray:
    """Columns for every class, even those absent from this fold's training rows."""
    full = np.zeros((len(proba), ctx.n_classes))
    full[:, np.asarray(seen, dtype=int)] = proba
    return full[:, 1] if ctx.task == "binary" else full
