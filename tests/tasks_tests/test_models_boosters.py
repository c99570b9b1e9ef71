"""The xgboost and catboost adapters on real fold frames, without Ray or MLflow.

Their fold scores must equal a plain script's (same folds, same params) exactly; categoricals
are used natively, NaN is allowed, early stopping sees the training rows only.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_breast_cancer, load_diabetes, load_wine
from sklearn.metrics import accuracy_score, r2_score, roc_auc_score
from sklearn.model_selection import KFold, StratifiedKFold

from foldwise.tasks.data import DataConfig, PreparedData, prepare_data
from foldwise.tasks.folds import assign_folds
from foldwise.tasks.models import FitContext, ModelConfig, create_model
from foldwise.tasks.models.boosters import GpuFallbackWarning
from foldwise.tasks.train import train_fold

xgb = pytest.importorskip("xgboost")
cb = pytest.importorskip("catboost")

PARAMS = {"xgboost": {"n_estimators": 40, "max_depth": 3, "learning_rate": 0.2, "subsample": 0.8},
          "catboost": {"iterations": 40, "depth": 4, "learning_rate": 0.2}}
_CACHE: dict[str, PreparedData] = {}


def sk(name: str) -> PreparedData:
    if name not in _CACHE:
        _CACHE[name] = prepare_data(DataConfig(train=f"sklearn:{name}"))
    return _CACHE[name]


def plain_model(type_: str, task: str, seed: int):  # noqa: ANN201 - the library's own estimator
    """What a user writes by hand: the library's sklearn class with the same params, seed and threads."""
    p = PARAMS[type_]
    if type_ == "xgboost":
        cls = xgb.XGBRegressor if task == "regression" else xgb.XGBClassifier
        return cls(**p, random_state=seed, n_jobs=1, enable_categorical=True, tree_method="hist", verbosity=0)
    cls = cb.CatBoostRegressor if task == "regression" else cb.CatBoostClassifier
    return cls(**p, random_seed=seed, thread_count=1, logging_level="Silent", allow_writing_files=False)


@pytest.mark.parametrize("type_", ["xgboost", "catboost"])
@pytest.mark.parametrize("dataset", ["breast_cancer", "diabetes"])
def test_fold_scores_equal_a_plain_script(type_: str, dataset: str) -> None:
    data = sk(dataset)
    seed, n_folds = 42, 3
    task = data.task
    metric = "neg_root_mean_squared_error" if task == "regression" else "roc_auc"
    plan = assign_folds(data.y, None, "kfold" if task == "regression" else "stratified", n_folds, seed)
    config = ModelConfig(name=type_, type=type_, params=PARAMS[type_])
    ours = [train_fold(data, plan, config, k, metric, seed).score for k in range(n_folds)]

    X, y = (load_diabetes if task == "regression" else load_breast_cancer)(return_X_y=True, as_frame=True)
    splitter = (KFold if task == "regression" else StratifiedKFold)(n_folds, shuffle=True, random_state=seed)
    theirs = []
    for train, valid in splitter.split(X, y):
        model = plain_model(type_, task, seed).fit(X.iloc[train], y.iloc[train])
        if task == "regression":
            theirs.append(-float(np.sqrt(np.mean((y.iloc[valid].to_numpy() - model.predict(X.iloc[valid])) ** 2))))
        else:
            theirs.append(roc_auc_score(y.iloc[valid], model.predict_proba(X.iloc[valid])[:, 1]))
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-9)


def fit_predict(data: PreparedData, type_: str, params: dict, seed: int = 0, **ctx_kw: object):  # noqa: ANN201
    plan = assign_folds(data.y, None, "kfold", 4, seed)
    from foldwise.tasks.features import fit_vocabulary, frame

    train, valid = plan.train_rows(0), plan.valid_rows(0)
    vocab = fit_vocabulary(data, train)
    ctx = FitContext(task=data.task, n_classes=data.n_classes, categorical=data.categorical, seed=seed, **ctx_kw)
    model = create_model(ModelConfig(name=type_, type=type_, params=params), ctx)
    model.fit(frame(data, data.X[train], vocab), data.y[train])
    return model, model.predict(frame(data, data.X[valid], vocab)), data.y[valid], len(train)


def _categorical_data(tmp_path: Path) -> PreparedData:
    """A string column (with missing values) alone decides the target; the numeric column is noise with NaN."""
    rng = np.random.default_rng(0)
    n = 800
    colour = rng.choice([f"c{i:02d}" for i in range(12)], size=n).astype(object)
    positive = {f"c{i:02d}" for i in (0, 3, 4, 7, 9, 10)}
    target = np.array([int(c in positive) for c in colour])
    colour[rng.random(n) < 0.05] = None
    noise = rng.normal(size=n)
    noise[rng.random(n) < 0.1] = np.nan
    path = tmp_path / "cats.csv"
    pd.DataFrame({"colour": colour, "noise": noise, "target": target}).to_csv(path, index=False)
    data = prepare_data(DataConfig(train=str(path)))
    assert data.categorical == ("colour",)
    return data


@pytest.mark.parametrize("type_", ["xgboost", "catboost"])
def test_categoricals_native_and_nan_allowed(type_: str, tmp_path: Path) -> None:
    data = _categorical_data(tmp_path)
    params = {"n_estimators": 30, "max_depth": 3} if type_ == "xgboost" else {"iterations": 60, "depth": 3}
    model, pred, y, _ = fit_predict(data, type_, params)
    assert roc_auc_score(y, pred) > 0.9
    if type_ == "xgboost":  # the booster knows the column as categorical and splits on it
        booster = model.estimator.get_booster()
        assert booster.feature_types[booster.feature_names.index("colour")] == "c"
        assert "colour" in booster.get_score(importance_type="gain")
    else:
        assert model.estimator.get_cat_feature_indices() == [0]


@pytest.mark.parametrize("type_", ["xgboost", "catboost"])
def test_multiclass_and_regression(type_: str) -> None:
    params = PARAMS[type_]
    _, pred, y, _ = fit_predict(sk("wine"), type_, params)
    assert pred.shape == (len(y), 3)
    np.testing.assert_allclose(pred.sum(axis=1), 1.0, atol=1e-6)
    assert accuracy_score(y, pred.argmax(axis=1)) > 0.85
    _, pred, y, _ = fit_predict(sk("diabetes"), type_, params)
    assert r2_score(y, pred) > 0.1  # diabetes is hard; a model that learned nothing scores <= 0


@pytest.mark.parametrize("type_", ["xgboost", "catboost"])
def test_multiclass_fold_missing_a_class_gets_a_zero_column(type_: str) -> None:
    X, y = load_wine(return_X_y=True, as_frame=True)
    keep = y.to_numpy() != 1
    ctx = FitContext(task="multiclass", n_classes=3, categorical=(), seed=0)
    model = create_model(ModelConfig(name="m", type=type_, params=PARAMS[type_]), ctx)
    model.fit(X[keep].reset_index(drop=True), y.to_numpy()[keep])
    pred = model.predict(X)
    assert pred.shape == (len(X), 3) and (pred[:, 1] == 0).all()
    np.testing.assert_allclose(pred.sum(axis=1), 1.0, atol=1e-6)


@pytest.mark.parametrize("type_", ["xgboost", "catboost"])
def test_early_stopping_on_training_rows(type_: str) -> None:
    big = {"n_estimators": 2000, "learning_rate": 0.3, "early_stopping_rounds": 10}
    model, pred, y, n_train = fit_predict(sk("breast_cancer"), type_, big)
    assert model.best_iteration is not None and 0 < model.best_iteration < 1999
    assert model.stop_rows.max() < n_train and len(model.stop_rows) == int(np.ceil(0.1 * n_train))
    assert roc_auc_score(y, pred) > 0.95


def test_threads_seed_and_user_params() -> None:
    ctx = FitContext(task="binary", n_classes=2, categorical=(), seed=3, n_threads=4)
    m = create_model(ModelConfig(name="m", type="xgboost"), ctx)
    assert m.params["n_jobs"] == 4 and m.params["random_state"] == 3 and m.params["enable_categorical"]
    m = create_model(ModelConfig(name="m", type="xgboost", params={"nthread": 2, "seed": 1}), ctx)
    assert "n_jobs" not in m.params and "random_state" not in m.params
    m = create_model(ModelConfig(name="m", type="catboost"), ctx)
    assert m.params["thread_count"] == 4 and m.params["random_seed"] == 3 and m.params["allow_writing_files"] is False
    m = create_model(ModelConfig(name="m", type="catboost", params={"random_state": 5}), ctx)
    assert "random_seed" not in m.params


def test_check_params_name_the_valid_ones() -> None:
    from foldwise.tasks.models import catboost_model, xgboost_model

    assert xgboost_model.check_params({"n_estimators": 5, "eta": 0.1, "max_depth": 3, "early_stopping_rounds": 5}) is None
    assert catboost_model.check_params({"iterations": 5, "depth": 3, "l2_leaf_reg": 1.0}) is None
    problem = xgboost_model.check_params({"max_dept": 3})
    assert "did you mean max_depth" in problem and "valid: " in problem and "reg_lambda" in problem
    problem = catboost_model.check_params({"itrations": 3})
    assert "did you mean iterations" in problem and "l2_leaf_reg" in problem


@pytest.mark.parametrize("type_", ["xgboost", "catboost", "lightgbm"])
def test_gpu_fold_falls_back_to_cpu_with_a_warning(type_: str) -> None:
    """On a machine whose GPU the library cannot use, a fold holding a GPU trains on the CPU and says so."""
    from foldwise.tasks.models.boosters import gpu_usable

    module = __import__(f"foldwise.tasks.models.{type_}_model", fromlist=["_probe_cuda", "_probe_gpu"])
    usable = gpu_usable(type_, getattr(module, "_probe_gpu" if type_ == "catboost" else "_probe_cuda")) is None
    if usable:
        pytest.skip(f"{type_} can use a GPU here")
    ctx = FitContext(task="binary", n_classes=2, categorical=(), seed=0, gpus=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        m = create_model(ModelConfig(name="m", type=type_), ctx)
    assert any(issubclass(w.category, GpuFallbackWarning) and type_ in str(w.message) for w in caught)
    assert "cuda" not in str(m.params.get("device", m.params.get("device_type", ""))).lower()
    assert m.params.get("task_type") != "GPU"
