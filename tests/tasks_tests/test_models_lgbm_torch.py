"""The lightgbm and torch_mlp adapters on real fold frames, without Ray or MLflow."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, r2_score, roc_auc_score

import foldwise.tasks.models as models
from foldwise.tasks.data import DataConfig, PreparedData, prepare_data
from foldwise.tasks.features import fit_vocabulary, frame
from foldwise.tasks.models import FitContext, ModelConfig, create_model

torch = pytest.importorskip("torch")

FAST_MLP = {"hidden": [32], "epochs": 30, "patience": 5, "lr": 3e-3, "batch_size": 64}


def _data(source: str, **kw: object) -> PreparedData:
    return prepare_data(DataConfig(train=source, **kw))


_CACHE: dict[str, PreparedData] = {}


def sk(name: str) -> PreparedData:
    if name not in _CACHE:
        _CACHE[name] = _data(f"sklearn:{name}")
    return _CACHE[name]


def split(data: PreparedData, seed: int = 0, valid: float = 0.25):
    """One train/valid split by row index, frames built as a fold task builds them."""
    rng = np.random.default_rng(seed)
    rows = rng.permutation(len(data.y))
    n_valid = int(len(rows) * valid)
    valid_rows, train_rows = np.sort(rows[:n_valid]), np.sort(rows[n_valid:])
    vocab = fit_vocabulary(data, train_rows)
    return (frame(data, data.X[train_rows], vocab), data.y[train_rows],
            frame(data, data.X[valid_rows], vocab), data.y[valid_rows])


def fit_predict(data: PreparedData, type_: str, params: dict | None = None, seed: int = 0):
    X_tr, y_tr, X_va, y_va = split(data)
    ctx = FitContext(task=data.task, n_classes=data.n_classes, categorical=data.categorical, seed=seed, n_threads=1)
    model = create_model(ModelConfig(name=type_, type=type_, params=params or {}), ctx)
    model.fit(X_tr, y_tr)
    return model, model.predict(X_va), y_va


PARAMS = {"lightgbm": {"n_estimators": 100}, "torch_mlp": FAST_MLP}


@pytest.mark.parametrize("type_", ["lightgbm", "torch_mlp"])
def test_binary(type_: str) -> None:
    _, pred, y = fit_predict(sk("breast_cancer"), type_, PARAMS[type_])
    assert pred.shape == (len(y),) and pred.dtype == np.float64
    assert ((pred >= 0) & (pred <= 1)).all()
    assert roc_auc_score(y, pred) > 0.95


@pytest.mark.parametrize("type_", ["lightgbm", "torch_mlp"])
def test_multiclass(type_: str) -> None:
    _, pred, y = fit_predict(sk("wine"), type_, PARAMS[type_])
    assert pred.shape == (len(y), 3)
    np.testing.assert_allclose(pred.sum(axis=1), 1.0, atol=1e-6)
    assert accuracy_score(y, pred.argmax(axis=1)) > 0.85


@pytest.mark.parametrize("type_", ["lightgbm", "torch_mlp"])
def test_regression(type_: str) -> None:
    _, pred, y = fit_predict(sk("diabetes"), type_, PARAMS[type_])
    assert pred.shape == (len(y),)
    assert r2_score(y, pred) > 0.3


@pytest.mark.parametrize("type_", ["lightgbm", "torch_mlp"])
def test_same_seed_same_predictions(type_: str) -> None:
    a = fit_predict(sk("breast_cancer"), type_, PARAMS[type_], seed=7)[1]
    b = fit_predict(sk("breast_cancer"), type_, PARAMS[type_], seed=7)[1]
    np.testing.assert_array_equal(a, b)


def test_multiclass_missing_class_gets_zero_column() -> None:
    data = sk("wine")
    X_tr, y_tr, X_va, _ = split(data)
    keep = y_tr != 1
    ctx = FitContext(task="multiclass", n_classes=3, categorical=(), seed=0)
    model = create_model(ModelConfig(name="m", type="lightgbm", params={"n_estimators": 20}), ctx)
    model.fit(X_tr[keep].reset_index(drop=True), y_tr[keep])
    pred = model.predict(X_va)
    assert pred.shape == (len(X_va), 3)
    assert (pred[:, 1] == 0).all()
    np.testing.assert_allclose(pred.sum(axis=1), 1.0, atol=1e-6)


def test_lightgbm_early_stopping(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stops before n_estimators, and stops on rows drawn from the training rows only."""
    seen: list[tuple[int, np.ndarray, np.ndarray]] = []
    real = models.inner_split

    def spy(y: np.ndarray, task: str, seed: int, fraction: float = 0.1):
        fit_idx, stop_idx = real(y, task, seed, fraction)
        seen.append((len(y), fit_idx, stop_idx))
        return fit_idx, stop_idx

    import foldwise.tasks.models.lightgbm_model as lgbm_module

    monkeypatch.setattr(lgbm_module, "inner_split", spy)
    data = sk("breast_cancer")
    X_tr, y_tr, _, _ = split(data)
    model, pred, y = fit_predict(data, "lightgbm", {"n_estimators": 2000, "learning_rate": 0.3,
                                                    "early_stopping_rounds": 10})
    assert model.best_iteration is not None and 0 < model.best_iteration < 2000
    assert model.estimator.best_iteration_ == model.best_iteration
    assert roc_auc_score(y, pred) > 0.95
    (n, fit_idx, stop_idx), = seen
    assert n == len(y_tr)  # split of the training rows, not of train + held-out
    assert stop_idx.min() >= 0 and stop_idx.max() < n
    assert not np.intersect1d(fit_idx, stop_idx).size
    assert len(fit_idx) + len(stop_idx) == n


def test_torch_early_stopping_uses_training_rows() -> None:
    data = sk("breast_cancer")
    X_tr, y_tr, _, _ = split(data)
    model, _, _ = fit_predict(data, "torch_mlp", {**FAST_MLP, "epochs": 200, "patience": 3, "lr": 1e-2})
    assert 0 < model.best_iteration < 200
    assert model.stop_rows.max() < len(y_tr)


def _categorical_data(tmp_path: Path) -> PreparedData:
    """A string column alone decides the target; the numeric column is noise."""
    rng = np.random.default_rng(0)
    n = 600
    colour = rng.choice([f"c{i:02d}" for i in range(12)], size=n)
    positive = {f"c{i:02d}" for i in (0, 3, 4, 7, 9, 10)}
    target = np.array([int(c in positive) for c in colour])
    flip = rng.random(n) < 0.05
    target[flip] = 1 - target[flip]
    noise = rng.normal(size=n)
    noise[rng.random(n) < 0.1] = np.nan
    path = tmp_path / "cats.csv"
    pd.DataFrame({"colour": colour, "noise": noise, "target": target}).to_csv(path, index=False)
    data = _data(str(path))
    assert data.categorical == ("colour",)
    return data


@pytest.mark.parametrize("type_", ["lightgbm", "torch_mlp"])
def test_categorical_column_is_learned(type_: str, tmp_path: Path) -> None:
    data = _categorical_data(tmp_path)
    X_tr, _, _, _ = split(data)
    assert isinstance(X_tr["colour"].dtype, pd.CategoricalDtype)
    params = {"n_estimators": 50, "min_data_per_group": 5, "cat_smooth": 1} if type_ == "lightgbm" else FAST_MLP
    model, pred, y = fit_predict(data, type_, params)
    assert roc_auc_score(y, pred) > 0.9
    if type_ == "lightgbm":
        # Used natively: the booster recorded the column's categories and splits on sets of them.
        booster = model.estimator.booster_
        assert booster.dump_model()["feature_names"][0] == "colour"
        splits = booster.trees_to_dataframe()
        assert (splits["decision_type"] == "==").any()
        assert booster.pandas_categorical == [list(X_tr["colour"].cat.categories)]


def test_lightgbm_check_params() -> None:
    from foldwise.tasks.models.lightgbm_model import check_params

    assert check_params({"n_estimators": 10, "num_leaves": 15, "min_data_in_leaf": 5, "feature_fraction": 0.8,
                         "early_stopping_rounds": 20, "lambda_l2": 1.0}) is None
    problem = check_params({"n_estimators": 10, "num_leavez": 3})
    assert problem is not None and "num_leavez" in problem


def test_lightgbm_user_params_win() -> None:
    ctx = FitContext(task="binary", n_classes=2, categorical=(), seed=3, n_threads=4)
    m = create_model(ModelConfig(name="m", type="lightgbm", params={"num_threads": 2, "seed": 1}), ctx)
    assert "n_jobs" not in m.params and "random_state" not in m.params
    m = create_model(ModelConfig(name="m", type="lightgbm"), ctx)
    assert m.params["n_jobs"] == 4 and m.params["random_state"] == 3 and m.params["verbose"] == -1


def test_torch_gpu_request_falls_back_to_cpu(capsys: pytest.CaptureFixture[str]) -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    ctx = FitContext(task="binary", n_classes=2, categorical=(), seed=0, gpus=1)
    model = create_model(ModelConfig(name="m", type="torch_mlp", params=FAST_MLP), ctx)
    assert model.device.type == "cpu"
    assert "falling back to CPU" in capsys.readouterr().err
