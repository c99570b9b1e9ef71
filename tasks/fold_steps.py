"""Fold steps: transformers fitted inside each fold on its training rows only, then applied to the
held-out rows and the test rows (so an encoder that learns from the target cannot leak).

Built in: `target_encoding` (scikit-learn's TargetEncoder: cross-fitted inside the training rows
by its own `fit_transform`, so even the rows it is fitted on get out-of-fold encodings),
`count_encoding`, `frequency_encoding` and `pca`; or any sklearn-style transformer by import
path (`{transformer: pkg.mod:Class, params: {...}, columns: [...]}`). A spec names them in a
model's `preprocess:` (or the top-level `preprocess:` for every model). `fit_fold_steps`
returns the fitted chain, which the fold result keeps, so new rows get the same columns.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from foldwise.tasks.source import import_fresh

FOLD_STEP_KINDS: tuple[str, ...] = ("target_encoding", "count_encoding", "frequency_encoding", "pca")
_KEYS = ("step", "transformer", "name", "columns", "params", "keep")


class FoldStepError(ValueError):
    """A fold step the spec names that cannot be built as written: one line, exit 2."""


@dataclass(frozen=True)
class FoldStepConfig:
    """One fold step as the fold task takes it."""

    kind: str  # one of FOLD_STEP_KINDS, or "transformer"
    name: str  # its output columns' prefix (pca, custom transformers)
    transformer: str | None = None  # import path for kind "transformer"
    columns: tuple[str, ...] | None = None  # None: categorical columns (encoders), numeric (pca, transformers)
    params: dict[str, Any] = field(default_factory=dict)
    keep: bool | None = None  # keep the input columns beside the new ones (None: the kind's default)


def parse_fold_step(entry: Any, index: int = 0) -> FoldStepConfig:
    """A `preprocess:` entry that is not a numeric step -> its config; FoldStepError naming what is valid."""
    if isinstance(entry, str):
        if entry not in FOLD_STEP_KINDS:
            raise FoldStepError(f"unknown preprocess step {entry!r} (fold steps: {', '.join(FOLD_STEP_KINDS)}, "
                                "or {transformer: pkg.module:Class})")
        return FoldStepConfig(kind=entry, name=entry)
    if not isinstance(entry, dict):
        raise FoldStepError(f"preprocess entry {index} must be a step name or a mapping (got {entry!r})")
    unknown = [k for k in entry if k not in _KEYS]
    if unknown:
        raise FoldStepError(f"preprocess entry {index}: unknown key(s) {', '.join(map(str, unknown))} (valid: {', '.join(_KEYS)})")
    kind, path = entry.get("step"), entry.get("transformer")
    if (kind is None) == (path is None):
        raise FoldStepError(f"preprocess entry {index}: give either step ({', '.join(FOLD_STEP_KINDS)}) or transformer")
    if kind is not None and kind not in FOLD_STEP_KINDS:
        raise FoldStepError(f"preprocess entry {index}: unknown step {kind!r} (valid: {', '.join(FOLD_STEP_KINDS)})")
    params = entry.get("params") or {}
    if not isinstance(params, dict):
        raise FoldStepError(f"preprocess entry {index}: params must be a mapping")
    columns = entry.get("columns")
    if columns is not None and (not isinstance(columns, list) or not all(isinstance(c, str) for c in columns)):
        raise FoldStepError(f"preprocess entry {index}: columns must be a list of column names")
    config = FoldStepConfig(kind=kind or "transformer", name=str(entry.get("name") or kind or path.rpartition(":")[2]
                            .rpartition(".")[2].lower()), transformer=path,
                            columns=tuple(columns) if columns is not None else None, params=dict(params),
                            keep=entry.get("keep"))
    try:
        _make(config, "binary", 0)  # builds it (the class exists, it takes these params); fits nothing
    except FoldStepError:
        raise
    except (TypeError, ValueError, ImportError, AttributeError) as e:
        raise FoldStepError(f"preprocess entry {index} ({config.name}): {type(e).__name__}: {e}") from None
    return config


def split_preprocess(entries: Sequence[Any]) -> tuple[tuple[str, ...], tuple[FoldStepConfig, ...]]:
    """A `preprocess:` list -> (numeric step names for the model's own pipeline, fold steps)."""
    from foldwise.tasks.models import PREPROCESS_STEPS

    numeric = tuple(e for e in entries if isinstance(e, str) and e in PREPROCESS_STEPS)
    steps = tuple(parse_fold_step(e, i) for i, e in enumerate(entries) if not (isinstance(e, str) and e in PREPROCESS_STEPS))
    return numeric, steps


def _class(path: str) -> type:
    module_name, sep, attr = path.partition(":")
    if not sep:
        module_name, _, attr = path.rpartition(".")
    if not module_name:
        raise FoldStepError(f"transformer {path!r} is not an import path like sklearn.decomposition.PCA")
    try:
        module = import_fresh(module_name) if not module_name.startswith("sklearn") else importlib.import_module(module_name)
    except ImportError as e:
        raise FoldStepError(f"transformer {path!r}: module {module_name!r} cannot be imported ({e})") from None
    if not hasattr(module, attr):
        raise FoldStepError(f"transformer {path!r}: module {module_name!r} has no {attr!r}")
    return getattr(module, attr)


def _make(config: FoldStepConfig, task: str, seed: int) -> Any:
    """The unfitted transformer of a step (None for the count/frequency encoders, which need no object)."""
    if config.kind == "target_encoding":
        from sklearn.model_selection import KFold, StratifiedKFold
        from sklearn.preprocessing import TargetEncoder

        target_type = {"binary": "binary", "multiclass": "multiclass"}.get(task, "continuous")
        # its cross fitting inside the training rows: shuffled with the spec seed (a splitter, as sklearn >= 1.9 wants)
        splitter = (KFold if task == "regression" else StratifiedKFold)(5, shuffle=True, random_state=seed)
        return TargetEncoder(**({"target_type": target_type, "cv": splitter} | config.params))
    if config.kind == "pca":
        from sklearn.decomposition import PCA

        return PCA(**({"n_components": 5, "random_state": seed} | config.params))
    if config.kind == "transformer":
        return _class(config.transformer)(**config.params)
    unknown = set(config.params) - {"normalize"}
    if unknown:
        raise FoldStepError(f"{config.kind} takes no params {sorted(unknown)}")
    return None


@dataclass
class FittedFoldStep:
    """One step fitted on a fold's training rows: `transform` gives any rows the same columns."""

    config: FoldStepConfig
    columns: tuple[str, ...]  # the input columns it read
    model: Any = None  # the fitted transformer (TargetEncoder, PCA, ...)
    counts: dict[str, pd.Series] | None = None  # count/frequency encoders: level -> count on the training rows
    n_train: int = 0
    fill: np.ndarray | None = None  # pca: training medians, means and scales
    center: np.ndarray | None = None
    scale: np.ndarray | None = None

    def _new(self, X: pd.DataFrame, fitting_y: np.ndarray | None) -> pd.DataFrame:
        kind = self.config.kind
        if kind in ("count_encoding", "frequency_encoding"):
            suffix = "count" if kind == "count_encoding" else "freq"
            out = {}
            for c in self.columns:
                values = X[c].astype(object).where(X[c].notna(), "__missing__")
                n = values.map(self.counts[c]).fillna(0).to_numpy(dtype=np.float64)
                out[f"{c}_{suffix}"] = n / self.n_train if kind == "frequency_encoding" else n
            return pd.DataFrame(out, index=X.index)
        if kind == "target_encoding":
            values = X[list(self.columns)].astype(object).where(X[list(self.columns)].notna(), np.nan)
            if fitting_y is not None:  # cross-fitted on the training rows: no row sees its own target
                arr = self.model.fit_transform(values, fitting_y)
            else:
                arr = self.model.transform(values)
            return pd.DataFrame(arr, columns=[str(c) for c in self.model.get_feature_names_out()], index=X.index)
        if kind == "pca":
            Z = X[list(self.columns)].to_numpy(dtype=np.float64)
            Z = (np.where(np.isnan(Z), self.fill, Z) - self.center) / self.scale
            arr = self.model.fit_transform(Z) if fitting_y is not None else self.model.transform(Z)
            return pd.DataFrame(arr, columns=[f"{self.config.name}_{i}" for i in range(arr.shape[1])], index=X.index)
        part = X[list(self.columns)]
        if fitting_y is not None:
            fit_transform = getattr(self.model, "fit_transform", None)
            arr = fit_transform(part, fitting_y) if fit_transform else self.model.fit(part, fitting_y).transform(part)
        else:
            arr = self.model.transform(part)
        if isinstance(arr, pd.DataFrame):
            return arr.set_axis(X.index).rename(columns=str)
        arr = np.asarray(arr.toarray() if hasattr(arr, "toarray") else arr, dtype=np.float64)
        arr = arr.reshape(len(X), -1)
        names = None
        if hasattr(self.model, "get_feature_names_out"):
            try:
                names = [str(c) for c in self.model.get_feature_names_out(list(self.columns))]
            except Exception:  # noqa: BLE001 - transformers that cannot name their outputs
                names = None
        if names is None or len(names) != arr.shape[1]:
            names = list(self.columns) if arr.shape[1] == len(self.columns) else [f"{self.config.name}_{i}" for i in range(arr.shape[1])]
        return pd.DataFrame(arr, columns=names, index=X.index)

    def _merge(self, X: pd.DataFrame, new: pd.DataFrame) -> pd.DataFrame:
        keep = self.config.keep if self.config.keep is not None else self.config.kind != "target_encoding"
        replaced = [c for c in new.columns if c in X.columns]
        base = X.drop(columns=[c for c in self.columns if not keep or c in replaced] + replaced, errors="ignore")
        return pd.concat([base, new], axis=1)

    def transform(self, X: pd.DataFrame) -> pd.DataFrame:
        return self._merge(X, self._new(X, None))


@dataclass
class FittedFoldSteps:
    """The fold's chain of fitted steps: what its model was trained on, for any new rows too."""

    steps: list[FittedFoldStep]

    def transform(self, X: pd.DataFrame) -> pd.DataFrame:
        for s in self.steps:
            X = s.transform(X)
        return X


def default_columns(config: FoldStepConfig, X: pd.DataFrame) -> tuple[str, ...]:
    cats = [c for c in X.columns if isinstance(X[c].dtype, pd.CategoricalDtype) or X[c].dtype == object]
    if config.columns is not None:
        return tuple(c for c in config.columns if c in X.columns)  # an ablation may have dropped some
    if config.kind in ("target_encoding", "count_encoding", "frequency_encoding"):
        return tuple(cats)
    return tuple(c for c in X.columns if c not in cats)


def fit_fold_steps(configs: Sequence[FoldStepConfig], X: pd.DataFrame, y: np.ndarray, task: str, seed: int
                   ) -> tuple[FittedFoldSteps, pd.DataFrame]:
    """Fit each step on the training rows `X`, `y` (in order, each on the previous one's output);
    returns the fitted chain and the transformed training rows."""
    fitted = []
    for config in configs:
        columns = default_columns(config, X)
        if not columns:
            continue  # nothing of that kind in this frame (e.g. no categorical column left)
        step = FittedFoldStep(config=config, columns=columns, model=_make(config, task, seed), n_train=len(X))
        if config.kind in ("count_encoding", "frequency_encoding"):
            step.counts = {c: X[c].astype(object).where(X[c].notna(), "__missing__").value_counts() for c in columns}
        if config.kind == "pca":
            Z = X[list(columns)].to_numpy(dtype=np.float64)
            step.fill = np.nan_to_num(np.nanmedian(Z, axis=0)) if len(Z) else np.zeros(Z.shape[1])
            Z = np.where(np.isnan(Z), step.fill, Z)
            step.center, scale = Z.mean(axis=0), Z.std(axis=0)
            step.scale = np.where(scale > 0, scale, 1.0)
            if "n_components" not in config.params:
                step.model.set_params(n_components=min(5, len(columns), len(X)))
        X = step._merge(X, step._new(X, y))
        fitted.append(step)
    return FittedFoldSteps(fitted), X


def fitted_fold_steps(blob: bytes | None) -> FittedFoldSteps | None:
    """A fold result's pickled fold steps (`FoldResult.fold_steps`), None when it had none. Whatever
    re-predicts with a fold's fitted model (permutation importance, new test data) puts its rows
    through these first: the model was trained on their output columns."""
    import pickle

    return pickle.loads(blob) if blob is not None else None
