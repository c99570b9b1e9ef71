"""Model adapters behind one small Protocol.

An adapter is constructed with the model's narrow config and the fold's context, then
`fit(X, y)` and `predict(X)`. `predict` returns P(class 1) with shape (n,) for binary
tasks, class probabilities (n, K) for multiclass (columns in encoded class order) and
values (n,) for regression. Users plug their own adapter with `type: pkg.module:Class`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import pandas as pd

from foldwise.tasks.source import import_fresh

# Lazy import paths, so that loading a spec never imports torch or lightgbm needlessly.
BUILTIN_MODEL_TYPES: dict[str, str] = {
    "sklearn": "foldwise.tasks.models.sklearn_model:SklearnModel",
    "lightgbm": "foldwise.tasks.models.lightgbm_model:LightGBMModel",
    "xgboost": "foldwise.tasks.models.xgboost_model:XGBoostModel",
    "catboost": "foldwise.tasks.models.catboost_model:CatBoostModel",
    "torch_mlp": "foldwise.tasks.models.torch_mlp:TorchMLPModel",
    "torch_image": "foldwise.tasks.models.torch_image:TorchImageModel",
}

# Preprocessing steps for numeric columns, fitted inside the fold (sklearn-type models).
PREPROCESS_STEPS: tuple[str, ...] = (
    "standard_scaler",
    "minmax_scaler",
    "robust_scaler",
    "quantile_normal",
    "median_imputer",
    "mean_imputer",
)


@dataclass(frozen=True)
class ModelConfig:
    """What a fold task needs to know about one model from the spec."""

    name: str
    type: str
    params: dict[str, Any] = field(default_factory=dict)
    estimator: str | None = None
    preprocess: tuple[str, ...] = ()
    cpus: float = 1.0
    gpus: float = 0.0
    memory: int | None = None  # bytes reserved per fold (a scheduling hint; never changes a result)
    augment: dict[str, Any] | None = None  # {"train": ..., "valid": ...} as in the spec (image models)
    tta: tuple[str, ...] = ()  # test-time views averaged at predict time (image models)
    seed: int | None = None  # this fit's seed (a seed-averaging node); None: the spec's cv.seed
    seeds: tuple[int, ...] = ()  # seed averaging: one fit per seed per fold, predictions averaged (tasks.seeds)
    fold_steps: tuple[Any, ...] = ()  # tasks.fold_steps.FoldStepConfig: fitted inside each fold, before the model


@dataclass(frozen=True)
class FitContext:
    """Facts about the task and the slot a fold runs in."""

    task: str  # binary | multiclass | regression
    n_classes: int  # 0 for regression
    categorical: tuple[str, ...]  # categorical column names (pandas category dtype in X)
    seed: int
    n_threads: int = 1
    gpus: float = 0.0
    image_column: str | None = None  # the column of X holding image paths (adapters with takes_images)


@dataclass(frozen=True)
class TrainingLog:
    """What an adapter that trains in epochs reports back through the fold result (optional).

    An adapter offers it with a `training_log()` method; the driver logs `history` as
    metrics stepped by epoch on the fold's MLflow run and `checkpoint` as its artifact.
    """

    history: dict[str, list[float]]  # metric -> one value per epoch (epoch 1 first)
    best_epoch: int | None  # the epoch whose weights predict (1-based)
    selection: str  # how that epoch was chosen, in words
    device: str  # where it trained: "cuda:0" or "cpu"
    visible_devices: str | None  # CUDA_VISIBLE_DEVICES as the task saw it (set by Ray from its GPU ids)
    notes: tuple[str, ...] = ()  # e.g. the CPU fallback, a checkpoint left out for size
    checkpoint: bytes | None = None  # torch.save of the selected weights, or None
    checkpoint_name: str = "best.pt"


@runtime_checkable
class Model(Protocol):
    def fit(self, X: pd.DataFrame, y: np.ndarray) -> None: ...

    def predict(self, X: pd.DataFrame) -> np.ndarray: ...

    # Optional: `feature_importance() -> dict[column, float] | None` after fit, for write-ups.


def did_you_mean(name: str, valid: object) -> str:
    """'; did you mean X?' for the closest of `valid` names to a misspelled `name`, or ''."""
    import difflib

    close = difflib.get_close_matches(str(name), [str(v) for v in valid], n=2, cutoff=0.75)
    return f"; did you mean {' or '.join(close)}?" if close else ""


def resolve_model_class(type_name: str) -> type:
    """A builtin name or 'package.module:ClassName' -> the adapter class (a user's, as its
    source is now: see tasks.source.import_fresh)."""
    if type_name in BUILTIN_MODEL_TYPES:
        module_name, _, attr = BUILTIN_MODEL_TYPES[type_name].partition(":")
        return getattr(importlib.import_module(module_name), attr)
    module_name, _, attr = type_name.partition(":")
    return getattr(import_fresh(module_name), attr)


def create_model(config: ModelConfig, ctx: FitContext) -> Model:
    model = resolve_model_class(config.type)(config, ctx)
    if not isinstance(model, Model):
        raise TypeError(f"model adapter {config.type!r} must define fit(X, y) and predict(X)")
    return model


def inner_split(y: np.ndarray, task: str, seed: int, fraction: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Rows of the *training* folds used for early stopping: never the held-out fold."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y))
    counts = np.bincount(y.astype(int)) if task != "regression" else np.empty(0)
    n_classes = int((counts > 0).sum())
    n_stop = int(np.ceil(fraction * len(y)))
    # stratify when sklearn can: every class twice, and both sides at least one row per class
    can_stratify = task != "regression" and counts[counts > 0].min() >= 2 and min(n_stop, len(y) - n_stop) >= n_classes
    stratify = y if can_stratify else None
    fit_idx, stop_idx = train_test_split(idx, test_size=fraction, random_state=seed, stratify=stratify)
    return np.sort(fit_idx), np.sort(stop_idx)
