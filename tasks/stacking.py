"""Stacking in layers, cross-fitted on the fold plan: layer 1 learns from the base models' OOF
predictions, layer k from layer k-1's OOF, each plus the original features with `passthrough`.

Every layer is cross-fitted with the base models' folds: fold k's layer prediction comes from a
meta-model fitted on the other held-out folds' rows only (the time scheme: on *earlier* folds
only, so no layer learns from the future it is scored on; its first held-out fold has nothing
earlier and gets the plain mean of the layer's inputs). Above the first layer the fitting is
nested: the layer-(L-1) inputs a layer-L meta-model learns from for fold k were themselves made
without fold k's labels (otherwise layer L can read fold k's labels back out of the layers
below, which random labels show as a score above chance). The layer's final meta-model, fitted on
every held-out row, predicts the test set from the layer below's test predictions. With
passthrough, the features enter after a median imputer and a standard scaler fitted on the
meta-model's own fit rows (categoricals as their codes).
"""

from __future__ import annotations

import inspect

import numpy as np

from foldwise.tasks.folds import FoldPlan

CLIP = 1e-6


def fit_rows_for(plan: FoldPlan, k: int) -> np.ndarray:
    """Held-out rows fold k's weights / meta-model may learn from: every other fold's, or, for the
    time scheme, only earlier folds' (a blender must not learn from the future it is scored on).
    Empty for the time scheme's first held-out fold: the caller falls back to a plain mean there."""
    if plan.scheme == "time":
        return np.flatnonzero((plan.fold_of_row >= 0) & (plan.fold_of_row < k))
    rows = np.flatnonzero((plan.fold_of_row >= 0) & (plan.fold_of_row != k))
    if len(rows) == 0:
        raise ValueError("cross-fitting an ensemble needs at least two held-out folds")
    return rows


def stack_layers(preds: dict[str, np.ndarray], tests: dict[str, np.ndarray] | None, y: np.ndarray, plan: FoldPlan,
                 task: str, seed: int, meta: str | None, meta_params: dict | None, layers: int = 1,
                 passthrough: bool = False, X: np.ndarray | None = None, X_test: np.ndarray | None = None
                 ) -> tuple[np.ndarray, np.ndarray | None, dict[str, float]]:
    """(ensemble OOF, test predictions, weights) of `layers` stacked meta-models; see the module
    docstring. Weights: the first layer's reliance on each base model (its |coefficients|)."""
    ens_oof, ens_test, weights, _ = stack_layers_and_models(preds, tests, y, plan, task, seed, meta, meta_params,
                                                            layers, passthrough, X, X_test)
    return ens_oof, ens_test, weights


def stack_layers_and_models(preds: dict[str, np.ndarray], tests: dict[str, np.ndarray] | None, y: np.ndarray,
                            plan: FoldPlan, task: str, seed: int, meta: str | None, meta_params: dict | None,
                            layers: int = 1, passthrough: bool = False, X: np.ndarray | None = None,
                            X_test: np.ndarray | None = None
                            ) -> tuple[np.ndarray, np.ndarray | None, dict[str, float], list]:
    """`stack_layers` plus each layer's final meta-model, bottom first: what predicts new rows
    (`predict_layers`; the run's logged model keeps them)."""
    if layers < 1:
        raise ValueError(f"layers must be at least 1 (got {layers})")
    if passthrough and X is None:
        raise ValueError("passthrough needs the original features X")
    if passthrough and tests is not None and X_test is None:
        raise ValueError("passthrough needs the test features X_test to predict the test set")
    names = list(preds)
    n_classes = preds[names[0]].shape[1] if task == "multiclass" else 2
    base = [preds[m] for m in names]
    memo: dict[tuple[int, frozenset[int]], np.ndarray] = {}

    def inputs(below: list[np.ndarray], rows: np.ndarray, features: np.ndarray | None) -> np.ndarray:
        cols = [_meta_features(p[rows], task) for p in below]
        return np.column_stack(cols + ([features[rows]] if passthrough else []))

    def layer_oof(layer: int, excluded: frozenset[int]) -> np.ndarray:
        """Layer `layer`'s prediction for every held-out fold j not in `excluded`, made by a meta-model
        that saw no label of `excluded` nor of fold j, on inputs that saw none either (nested
        cross-fitting: a layer above must not learn, through the layers below, the labels it is scored on)."""
        if layer == 0:
            return base[0] if len(base) == 1 else np.stack(base, axis=0)
        key = (layer, excluded)
        if key in memo:
            return memo[key]
        out = np.full(base[0].shape, np.nan)
        for j in range(plan.n_folds):
            if j in excluded:
                continue
            valid = plan.valid_rows(j)
            shut = excluded | {j}
            fit_rows = fit_rows_for(plan, j)
            fit_rows = fit_rows[~np.isin(plan.fold_of_row[fit_rows], list(shut))]
            below_here = _layer_list(layer_oof(layer - 1, excluded), len(base) if layer == 1 else 1)
            if len(fit_rows) == 0:  # time scheme, first held-out fold: nothing earlier to learn from
                out[valid] = np.mean([p[valid] for p in below_here], axis=0)
                continue
            below_fit = _layer_list(layer_oof(layer - 1, shut), len(base) if layer == 1 else 1)
            model = _fit_meta(inputs(below_fit, fit_rows, X), y[fit_rows], task, seed, meta, meta_params, passthrough)
            out[valid] = _meta_predict(model, inputs(below_here, valid, X), task, n_classes)
        memo[key] = out
        return out

    top = frozenset()
    ens_oof = layer_oof(layers, top)
    held = plan.held_out
    weights: dict[str, float] = {}
    finals = []
    below, below_test = base, None if tests is None else [tests[m] for m in names]
    for layer in range(1, layers + 1):  # the final meta-models, on every held-out row, for the test set
        final = _fit_meta(inputs(below, held, X), y[held], task, seed, meta, meta_params, passthrough)
        finals.append(final)
        if layer == 1:
            estimator = final.steps[-1][1] if hasattr(final, "steps") else final
            weights = _meta_weights(estimator, names, [1 if p.ndim == 1 else p.shape[1] for p in base])
        if below_test is not None:
            all_test = np.arange(len(below_test[0]))
            below_test = [_meta_predict(final, inputs(below_test, all_test, X_test), task, n_classes)]
        if layer < layers:
            below = [layer_oof(layer, top)]
    return ens_oof, None if below_test is None else below_test[0], weights, finals


def predict_layers(finals: list, preds: list[np.ndarray], task: str, n_classes: int,
                   X: np.ndarray | None = None) -> np.ndarray:
    """The stack's final meta-models on new rows: `preds` the base models' predictions (the run's
    model order), `X` the rows' features when the stack passes them through."""
    below = preds
    for final in finals:
        cols = [_meta_features(p, task) for p in below]
        below = [_meta_predict(final, np.column_stack(cols + ([X] if X is not None else [])), task, n_classes)]
    return below[0]


def _layer_list(stacked: np.ndarray, n: int) -> list[np.ndarray]:
    """Layer 0 is the base models stacked on a first axis; a meta layer is one prediction."""
    return [stacked[i] for i in range(n)] if n > 1 else [stacked]


def _meta_features(p: np.ndarray, task: str) -> np.ndarray:
    """Logits (binary) / log-probabilities (multiclass): linear meta-models behave on these."""
    if task == "binary":
        q = np.clip(p, CLIP, 1 - CLIP)
        return np.log(q) - np.log1p(-q)
    if task == "multiclass":
        return np.log(np.clip(p, CLIP, 1.0))
    return p


def _fit_meta(X: np.ndarray, y: np.ndarray, task: str, seed: int, meta: str | None,
              meta_params: dict | None, passthrough: bool = False):  # noqa: ANN202 - any sklearn estimator
    params = dict(meta_params or {})
    if meta is None:
        if task == "regression":
            from sklearn.linear_model import Ridge as cls
            params = {"alpha": 1.0, **params}
        else:
            from sklearn.linear_model import LogisticRegression as cls
            params = {"C": 1.0, "max_iter": 1000, **params}
    else:
        from foldwise.tasks.models.sklearn_model import estimator_class

        cls = estimator_class(meta)
    if "random_state" in inspect.signature(cls).parameters and "random_state" not in params:
        params["random_state"] = seed
    model = cls(**params)
    if task != "regression" and not hasattr(model, "predict_proba"):
        raise ValueError(f"stacking meta-model {cls.__name__} has no predict_proba; a {task} task needs one")
    if passthrough:  # raw features: impute and scale them on the fit rows, inside the meta-model
        from sklearn.impute import SimpleImputer
        from sklearn.pipeline import Pipeline
        from sklearn.preprocessing import StandardScaler

        model = Pipeline([("impute", SimpleImputer(strategy="median", keep_empty_features=True)),
                          ("scale", StandardScaler()), ("meta", model)])
    model.fit(X, y)
    return model


def _meta_predict(model, X: np.ndarray, task: str, n_classes: int) -> np.ndarray:  # noqa: ANN001
    if task == "regression":
        return np.asarray(model.predict(X), dtype=np.float64)
    proba = model.predict_proba(X)
    full = np.zeros((len(X), n_classes))  # a class absent from the fit rows gets probability 0
    full[:, np.asarray(model.classes_, dtype=int)] = proba
    return full[:, 1] if task == "binary" else full


def _meta_weights(model, names: list[str], widths: list[int]) -> dict[str, float]:  # noqa: ANN001
    """Normalised |coefficients| per base model (feature_importances_ for trees; NaN if neither)."""
    if hasattr(model, "coef_"):
        imp = np.abs(np.atleast_2d(model.coef_)).sum(axis=0)
    elif hasattr(model, "feature_importances_"):
        imp = np.abs(np.asarray(model.feature_importances_))
    else:
        return {m: float("nan") for m in names}
    bounds = np.cumsum([0, *widths])
    per_model = np.array([imp[a:b].sum() for a, b in zip(bounds[:-1], bounds[1:])])
    total = per_model.sum()
    per_model = per_model / total if total > 0 else np.full(len(names), 1.0 / len(names))
    return dict(zip(names, map(float, per_model)))


