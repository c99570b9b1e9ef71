"""A trained run is a model: `foldwise predict`, the logged MLflow pyfunc and the registry, round trip
on each task type (the run's own test file must come back as its test_predictions.parquet)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from foldwise.workflows.commands.predict import run_predict
from foldwise.workflows.commands.run import run_cv
from foldwise.workflows.examples.demo_data import churn_frames
from tests.conftest import REPO, store_state

TOL = 1e-12


def class_columns(frame: pd.DataFrame, name: str, classes: list) -> np.ndarray:
    return frame[[f"{name}__{c}" for c in classes]].to_numpy()


@pytest.fixture(autouse=True)
def _restore_mlflow_uri(monkeypatch):
    """mlflow.set_tracking_uri also sets $MLFLOW_TRACKING_URI for subprocesses: undo both after each
    test, or every later `foldwise` subprocess of the session would log into this test's store."""
    import mlflow

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    yield
    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):  # set_registry_uri(None) leaves its variable
        os.environ.pop(name, None)


@pytest.fixture(scope="module")
def churn(ray_cluster, tmp_path_factory):
    """Binary, string classes, categoricals with missing values, a two-layer stack that also sees the
    features (passthrough), registered."""
    d = tmp_path_factory.mktemp("churn")
    train, test = churn_frames(1200, 300, seed=1)
    train.to_csv(d / "train.csv", index=False)
    test.to_csv(d / "test.csv", index=False)
    spec = {"name": "predict-churn", "data": {"train": "train.csv", "test": "test.csv", "target": "churned",
                                              "id": "customer_id"},
            "cv": {"folds": 3, "seed": 7}, "ensemble": {"method": "stack", "layers": 2, "passthrough": True},
            "models": [{"name": "logreg", "type": "sklearn", "estimator": "sklearn.linear_model.LogisticRegression",
                        "params": {"C": 0.3, "max_iter": 2000}, "preprocess": ["standard_scaler"]},
                       {"name": "lgbm", "type": "lightgbm", "params": {"n_estimators": 40, "num_leaves": 7}}]}
    (d / "spec.yaml").write_text(yaml.safe_dump(spec))
    uri = f"sqlite:///{d / 'mlflow.db'}"
    result = run_cv(d / "spec.yaml", out=d / "out", tracking_uri=uri, register="churn-model")
    return result, d, uri


def test_the_run_logs_and_registers_its_model(churn) -> None:
    result, _, uri = churn
    s = result.summary
    assert s["model"]["uri"] == f"runs:/{s['run_id']}/model"
    assert s["model"]["outputs"] == ["logreg", "lgbm", "ensemble"]
    assert s["model"]["registered"] == {"name": "churn-model", "version": 1, "uri": "models:/churn-model/1"}
    from mlflow.tracking import MlflowClient

    version = MlflowClient(tracking_uri=uri, registry_uri=uri).get_model_version("churn-model", "1")
    assert float(version.tags["cv_score"]) == pytest.approx(s["ensemble"]["cv_score"]) and version.run_id == s["run_id"]


def test_pyfunc_in_a_fresh_process_returns_the_runs_test_predictions(churn) -> None:
    result, d, uri = churn
    script = textwrap.dedent(f"""
        import json, mlflow, pandas as pd
        mlflow.set_tracking_uri({uri!r}); mlflow.set_registry_uri({uri!r})
        test = pd.read_csv("test.csv")
        out = {{}}
        for ref in ("runs:/{result.run_id}/model", "models:/churn-model/1"):
            m = mlflow.pyfunc.load_model(ref)
            out[ref] = {{"ensemble": m.predict(test).to_dict("list"),
                        "lgbm": m.predict(test, params={{"model": "lgbm"}})["yes"].tolist()}}
        print(json.dumps(out))
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=d, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    expected = pd.read_parquet(result.summary["outputs"]["test_predictions"])
    assert len(got) == 2
    for ref, preds in got.items():
        assert list(preds["ensemble"]) == ["no", "yes"], ref
        np.testing.assert_allclose(preds["ensemble"]["yes"], expected["ensemble"], rtol=0, atol=TOL)
        np.testing.assert_allclose(preds["ensemble"]["no"], 1 - expected["ensemble"], rtol=0, atol=TOL)
        np.testing.assert_allclose(preds["lgbm"], expected["lgbm"], rtol=0, atol=TOL)


def test_predict_cli_writes_the_kaggle_shape_and_a_child_run(churn, tmp_path: Path) -> None:
    result, d, uri = churn
    proc = subprocess.run([sys.executable, "-m", "foldwise", "predict", str(d / "out"), str(d / "test.csv"),
                           "--out", str(tmp_path / "p"), "--executor", "local", "--no-progress"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == str(tmp_path / "p" / "summary.json")
    preds = pd.read_csv(tmp_path / "p" / "predictions.csv")
    expected = pd.read_parquet(result.summary["outputs"]["test_predictions"])
    assert list(preds.columns) == ["customer_id", "no", "yes"]
    assert preds.customer_id.tolist() == expected.customer_id.tolist()
    np.testing.assert_allclose(preds["yes"], expected["ensemble"], rtol=0, atol=TOL)
    s = json.loads((tmp_path / "p" / "summary.json").read_text())
    assert s["rows"] == 300 and s["source_run_id"] == result.run_id and s["warnings"] == []
    from foldwise.workflows.tracking.tracker import RunReader

    run = RunReader(uri).get(s["run_id"])
    assert run.tags["foldwise.command"] == "predict" and run.tags["mlflow.parentRunId"] == result.run_id
    assert run.tags["data_fingerprint"] == s["data_fingerprint"] and run.metrics["rows"] == 300
    assert run.status == "FINISHED"


def test_chunks_on_ray_equal_one_pass_and_one_model_answers(churn, tmp_path: Path) -> None:
    result, d, uri = churn
    expected = pd.read_parquet(result.summary["outputs"]["test_predictions"])
    out = run_predict("models:/churn-model/1", str(d / "test.csv"), out=tmp_path / "a", model="logreg",
                      tracking_uri=uri, chunk_rows=97)
    assert out.summary["chunks"] == 4 and out.summary["tasks"] == 12 and out.summary["executor"] == "ray"
    np.testing.assert_allclose(out.predictions["yes"], expected["logreg"], rtol=0, atol=TOL)
    # the passthrough stack is blended chunk by chunk (it needs each chunk's features)
    ens = run_predict(str(d / "out"), str(d / "test.csv"), out=tmp_path / "b", chunk_rows=97)
    np.testing.assert_allclose(ens.predictions["yes"], expected["ensemble"], rtol=0, atol=TOL)


def test_fold_tasks_predict_in_blocks_and_unpickle_each_fold_model_once(churn, tmp_path: Path, monkeypatch) -> None:
    """In process (`--executor local`), so the block size can be made tiny: 64-row blocks inside each
    fold task give the run's predictions, and chunk after chunk reuses each fold's unpickled model."""
    import foldwise.tasks.predictor as predictor

    result, d, uri = churn
    expected = pd.read_parquet(result.summary["outputs"]["test_predictions"])
    monkeypatch.setattr(predictor, "BLOCK_BYTES", 1)  # the floor: 64 rows a block
    monkeypatch.setattr(predictor, "_ADAPTERS", {})
    out = run_predict(result.run_id, str(d / "test.csv"), out=tmp_path / "a", model="lgbm", tracking_uri=uri,
                      executor="local", chunk_rows=150)
    np.testing.assert_allclose(out.predictions["yes"], expected["lgbm"], rtol=0, atol=TOL)
    assert out.summary["chunks"] == 2 and out.summary["chunk_rows"] == 150
    kept = {k: id(v[0]) for k, v in predictor._ADAPTERS.items()}
    assert len(kept) == 3, "one unpickled model per fold, not per fold x chunk"
    run_predict(result.run_id, str(d / "test.csv"), out=tmp_path / "b", model="lgbm", tracking_uri=uri,
                executor="local", chunk_rows=150)
    assert {k: id(v[0]) for k, v in predictor._ADAPTERS.items()} == kept


def test_parquet_is_read_a_row_group_at_a_time_in_chunks_within_each(churn, tmp_path: Path) -> None:
    result, d, uri = churn
    expected = pd.read_parquet(result.summary["outputs"]["test_predictions"])
    pd.read_csv(d / "test.csv").to_parquet(tmp_path / "t.parquet", row_group_size=70)  # groups 70 x 4 + 30
    out = run_predict(result.run_id, str(tmp_path / "t.parquet"), out=tmp_path / "o", tracking_uri=uri,
                      executor="local", chunk_rows=50)
    assert out.summary["chunks"] == 9, "two chunks per 70-row group, one for the last 30 rows"
    assert out.predictions["customer_id"].tolist() == expected["customer_id"].tolist()
    np.testing.assert_allclose(out.predictions["yes"], expected["ensemble"], rtol=0, atol=TOL)


def test_unknown_levels_and_drift_are_warned_not_hidden(churn, tmp_path: Path) -> None:
    result, d, uri = churn
    test = pd.read_csv(d / "test.csv")
    shifted = test.assign(monthly_charge=test.monthly_charge + 40)
    shifted.loc[:9, "plan"] = "enterprise"  # a level training never saw
    shifted.to_parquet(tmp_path / "new.parquet")
    out = run_predict(result.run_id, str(tmp_path / "new.parquet"), out=tmp_path / "o", tracking_uri=uri,
                      executor="local")
    s = out.summary
    assert s["unknown_levels"] == {"plan": 10}
    assert any("unknown level(s) in column 'plan': 10 row(s)" in w for w in s["warnings"])
    assert s["drift"][0]["feature"] == "monthly_charge" and s["drift"][0]["psi"] > 0.25
    assert any("drift: feature 'monthly_charge'" in w and "major" in w for w in s["warnings"])
    # an unknown level is missing, as in the folds: the same prediction as the level left empty
    missing = shifted.assign(plan=shifted.plan.where(shifted.plan != "enterprise"))
    missing.to_csv(tmp_path / "missing.csv", index=False)
    again = run_predict(result.run_id, str(tmp_path / "missing.csv"), out=tmp_path / "m", tracking_uri=uri,
                        executor="local")
    np.testing.assert_array_equal(again.predictions["yes"], out.predictions["yes"])


@pytest.mark.parametrize(("make", "run", "expected"), [
    (lambda t: t.drop(columns="plan"), None, "missing feature column(s) 'plan'"),
    (lambda t: t.assign(tenure_months="long"), None, "column 'tenure_months' is numeric in training but text"),
    (lambda t: t, "no-such-run", "no run with id or name 'no-such-run'"),
    (lambda t: t, "models:/nope/1", "no registered model 'nope' (registered: churn-model)"),
    (lambda t: t, "models:/churn-model/9", "registered model 'churn-model' has no version 9 (versions: 1)"),
])
def test_bad_input_exits_2_and_writes_nothing(churn, tmp_path: Path, capsys, make, run, expected) -> None:
    from foldwise.workflows.cli.main import main

    result, d, uri = churn
    make(pd.read_csv(d / "test.csv")).to_csv(tmp_path / "bad.csv", index=False)
    db = Path(uri.removeprefix("sqlite:///"))
    before = store_state(db)
    code = main(["predict", run or str(d / "out"), str(tmp_path / "bad.csv"), "--out", str(tmp_path / "p"),
                 "--tracking-uri", uri])
    err = capsys.readouterr().err
    assert code == 2 and expected in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "p").exists() and store_state(db) == before


def test_unknown_model_name_lists_the_valid_ones(churn, tmp_path: Path, capsys) -> None:
    from foldwise.workflows.cli.main import main

    _, d, uri = churn
    code = main(["predict", str(d / "out"), str(d / "test.csv"), "--model", "xgb", "--tracking-uri", uri,
                 "--out", str(tmp_path / "p")])
    assert code == 2 and "--model 'xgb' is not in this run (valid: logreg, lgbm, ensemble)" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()


# ---------------------------------------------------------------------- the other task types


def split_dataset(name: str, d: Path) -> None:
    from foldwise.tasks.data import read_table

    frame = read_table(f"sklearn:{name}").sample(frac=1.0, random_state=0).reset_index(drop=True)
    frame.insert(0, "id", np.arange(len(frame)) + 100)
    n = int(len(frame) * 0.8)
    frame.iloc[:n].to_csv(d / "train.csv", index=False)
    frame.iloc[n:].drop(columns="target").to_csv(d / "test.csv", index=False)


@pytest.mark.parametrize(("dataset", "method", "task"), [("wine", "weights", "multiclass"),
                                                         ("diabetes", "mean", "regression")])
def test_round_trip_multiclass_and_regression(ray_cluster, tmp_path: Path, dataset, method, task) -> None:
    import mlflow

    split_dataset(dataset, tmp_path)
    models = [{"name": "lin", "type": "sklearn", "preprocess": ["standard_scaler"],
               "estimator": "sklearn.linear_model.LogisticRegression" if task == "multiclass" else "sklearn.linear_model.Ridge"},
              {"name": "lgbm", "type": "lightgbm", "params": {"n_estimators": 30, "num_leaves": 7, "min_child_samples": 5},
               "seeds": [1, 2]}]  # seed averaging: each fold model is the mean of two fits
    spec = {"name": f"predict-{dataset}", "task": task, "data": {"train": "train.csv", "test": "test.csv", "id": "id"},
            "cv": {"folds": 3, "seed": 3, "repeats": 2 if task == "regression" else 1},  # repeats: 6 fold models
            "ensemble": {"method": method}, "models": models}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = run_cv(tmp_path / "spec.yaml", out=tmp_path / "out", tracking_uri=uri)
    expected = pd.read_parquet(result.summary["outputs"]["test_predictions"])
    test = pd.read_csv(tmp_path / "test.csv")
    out = run_predict(str(tmp_path / "out"), str(tmp_path / "test.csv"), out=tmp_path / "p")
    mlflow.set_tracking_uri(uri)
    pyfunc = mlflow.pyfunc.load_model(result.summary["model"]["uri"]).predict(test)
    if task == "multiclass":
        classes = result.summary["classes"]
        want = class_columns(expected, "ensemble", classes)
        assert list(out.predictions.columns) == ["id", *map(str, classes)]
        np.testing.assert_allclose(out.predictions[[str(c) for c in classes]].to_numpy(), want, rtol=0, atol=TOL)
        np.testing.assert_allclose(pyfunc.to_numpy(), want, rtol=0, atol=TOL)
    else:
        assert list(out.predictions.columns) == ["id", "target"]
        np.testing.assert_allclose(out.predictions["target"], expected["ensemble"], rtol=0, atol=TOL)
        np.testing.assert_allclose(pyfunc["target"], expected["ensemble"], rtol=0, atol=TOL)
    assert out.predictions["id"].tolist() == test["id"].tolist()


def test_round_trip_images(ray_cluster, tmp_path: Path) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("albumentations")
    import shutil

    import mlflow

    from foldwise.tasks.data import DataConfig, prepare_data

    digits = prepare_data(DataConfig(train="sklearn:digits_images", target="target", image="image"))
    (tmp_path / "pics").mkdir()
    rows = []
    for i in range(150):
        shutil.copy(digits.images[i], tmp_path / "pics" / f"{i}.png")
        rows.append({"id": i, "path": f"pics/{i}.png", "digit": int(digits.y[i])})
    frame = pd.DataFrame(rows)
    frame.iloc[:120].to_csv(tmp_path / "train.csv", index=False)
    frame.iloc[120:].drop(columns="digit").to_csv(tmp_path / "test.csv", index=False)
    spec = {"name": "predict-img", "data": {"train": "train.csv", "test": "test.csv", "target": "digit", "id": "id",
                                            "image": "path"}, "metric": "accuracy", "cv": {"folds": 2, "seed": 1},
            "models": [{"name": "cnn", "type": "torch_image", "tta": ["hflip"],
                        "params": {"channels": 1, "image_size": 8, "width": 8, "blocks": 1, "epochs": 1,
                                   "batch_size": 32, "select_epoch": "last"}}]}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = run_cv(tmp_path / "spec.yaml", out=tmp_path / "out", tracking_uri=uri)
    classes = result.summary["classes"]
    want = class_columns(pd.read_parquet(result.summary["outputs"]["test_predictions"]), "ensemble", classes)
    out = run_predict(result.run_id, str(tmp_path / "test.csv"), out=tmp_path / "p", tracking_uri=uri)
    np.testing.assert_allclose(out.predictions[[str(c) for c in classes]].to_numpy(), want, rtol=0, atol=TOL)
    test = pd.read_csv(tmp_path / "test.csv").assign(path=lambda f: [str(tmp_path / p) for p in f.path])
    mlflow.set_tracking_uri(uri)
    pyfunc = mlflow.pyfunc.load_model(result.summary["model"]["uri"]).predict(test)
    np.testing.assert_allclose(pyfunc.to_numpy(), want, rtol=0, atol=TOL)


# ---------------------------------------------------------------------- sweep --register


def sweep_spec(refit: bool) -> dict:
    return {"name": "predict-sweep", "data": {"train": "sklearn:breast_cancer"}, "task": "binary",
            "cv": {"scheme": "stratified", "folds": 2, "seed": 7},
            "models": [{"name": "lgbm", "type": "lightgbm", "params": {"n_estimators": 10}}],
            "search": {"model": "lgbm", "trials": 2, "refit": refit, "space": {"num_leaves": {"int": [4, 16]}}}}


def test_sweep_register_without_refit_exits_2(tmp_path: Path, capsys) -> None:
    from foldwise.workflows.cli.main import main

    (tmp_path / "s.yaml").write_text(yaml.safe_dump(sweep_spec(refit=False)))
    code = main(["sweep", str(tmp_path / "s.yaml"), "--register", "m", "--tracking-uri",
                 f"sqlite:///{tmp_path / 'm.db'}", "--out", str(tmp_path / "o")])
    assert code == 2 and "--register registers the refit's model: set search.refit: true" in capsys.readouterr().err
    assert not (tmp_path / "o").exists() and not (tmp_path / "m.db").exists()


def test_sweep_refit_registers_its_model(ray_cluster, tmp_path: Path) -> None:
    import mlflow

    from foldwise.workflows.commands.sweep import run_sweep

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    result = run_sweep(sweep_spec(refit=True), out=tmp_path / "o", tracking_uri=uri, storage=str(tmp_path / "st"),
                       register="bc-sweep")
    refit = result.summary["refit"]
    assert refit["model"]["registered"]["uri"] == "models:/bc-sweep/1"
    mlflow.set_tracking_uri(uri)
    from foldwise.tasks.data import read_table

    rows = read_table("sklearn:breast_cancer").drop(columns="target").head(50)
    proba = mlflow.pyfunc.load_model("models:/bc-sweep/1").predict(rows)
    assert list(proba.columns) == ["0", "1"] and np.allclose(proba.sum(axis=1), 1.0)
