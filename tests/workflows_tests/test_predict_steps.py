"""A run with frame steps as a model: the pyfunc and `foldwise predict` replay the run's steps on
new rows as the run did on its test file (the bundled steps example; a user's own module in the
project folder, shipped with the model; a `together` step that counts over train and test rows)."""

from __future__ import annotations

import json
import os
import shutil
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
from tests.conftest import EXAMPLES
from tests.workflows_tests.test_predict import TOL, split_dataset

pytestmark = pytest.mark.usefixtures("_clean_mlflow_env")


@pytest.fixture
def _clean_mlflow_env(monkeypatch):
    import mlflow

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    yield
    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        os.environ.pop(name, None)


def pyfunc_in_fresh_process(model_uri: str, uri: str, data: Path, cwd: Path) -> subprocess.CompletedProcess:
    """Load the logged model and predict `data` in a new interpreter started in `cwd` (no project on sys.path)."""
    script = textwrap.dedent(f"""
        import json, mlflow, pandas as pd
        mlflow.set_tracking_uri({uri!r})
        model = mlflow.pyfunc.load_model({model_uri!r})
        print(json.dumps(model.predict(pd.read_csv({str(data)!r})).to_dict("list")))
    """)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, "-c", script], cwd=cwd, capture_output=True, text=True, timeout=300, env=env)


def test_steps_example_round_trip_pyfunc_and_predict(ray_cluster, tmp_path: Path) -> None:
    """workflows/examples/breast_cancer_steps.yaml (three `together` steps, PCA as a fold step), with a
    test file: both the pyfunc (fresh process) and `foldwise predict` in chunks on Ray give the run's
    test_predictions.parquet."""
    split_dataset("breast_cancer", tmp_path)
    spec = yaml.safe_load((EXAMPLES / "breast_cancer_steps.yaml").read_text())
    spec["data"] = {"train": "train.csv", "test": "test.csv", "target": "target", "id": "id"}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = run_cv(tmp_path / "spec.yaml", out=tmp_path / "out", tracking_uri=uri, executor="local")
    expected = pd.read_parquet(result.summary["outputs"]["test_predictions"])
    assert len(expected) == 114

    proc = pyfunc_in_fresh_process(result.summary["model"]["uri"], uri, tmp_path / "test.csv", tmp_path.parent)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(got["1"], expected["ensemble"], rtol=0, atol=TOL)

    out = run_predict(str(tmp_path / "out"), str(tmp_path / "test.csv"), out=tmp_path / "p", chunk_rows=40)
    assert out.summary["chunks"] == 3 and out.summary["executor"] == "ray"
    assert out.predictions["id"].tolist() == expected["id"].tolist()
    np.testing.assert_allclose(out.predictions["1"], expected["ensemble"], rtol=0, atol=TOL)


COUNTS = """import pandas as pd


def level_share(df: pd.DataFrame) -> pd.DataFrame:
    \"\"\"Each row's level of `city` as a share of all rows the step sees (train and test stacked).\"\"\"
    share = df["city"].map(df["city"].value_counts(normalize=True))
    return df.assign(city_share=share.astype(float))


def doubled(df: pd.DataFrame) -> pd.DataFrame:
    return df.assign(a2=df["a"] * 2.0)
"""


@pytest.fixture
def project(tmp_path: Path, monkeypatch):
    """A user's project folder: a plain step module beside the spec (not installed), data whose
    `city` levels are spread differently in train and test, so a share over the stacked rows differs
    from a share over the test rows alone."""
    name = f"userfeats_{tmp_path.name.replace('-', '_')}"
    root = tmp_path / "project"
    root.mkdir()
    (root / f"{name}.py").write_text(COUNTS)
    rng = np.random.default_rng(3)
    n = 500
    city = np.where(np.arange(n) < 400, rng.choice(["x", "y", "z"], n, p=[0.6, 0.3, 0.1]),
                    rng.choice(["x", "y", "z"], n, p=[0.1, 0.3, 0.6]))
    df = pd.DataFrame({"id": np.arange(n), "a": rng.normal(size=n), "city": city})
    df["target"] = ((df["a"] + (df["city"] == "z") + 0.5 * rng.normal(size=n)) > 0.5).astype(int)
    df.iloc[:400].to_csv(root / "train.csv", index=False)
    df.iloc[400:].drop(columns="target").to_csv(root / "test.csv", index=False)
    spec = {"name": "predict-user-steps", "data": {"train": "train.csv", "test": "test.csv", "target": "target",
                                                   "id": "id"},
            "cv": {"folds": 3, "seed": 0},
            "steps": [{"name": "share", "fn": f"{name}:level_share"},
                      {"name": "twice", "fn": f"{name}:doubled", "mode": "apart"}],
            "models": [{"name": "logreg", "type": "sklearn", "estimator": "sklearn.linear_model.LogisticRegression",
                        "preprocess": ["standard_scaler"]},
                       {"name": "lgbm", "type": "lightgbm", "params": {"n_estimators": 20, "num_leaves": 5}}],
            "ensemble": {"method": "weights"}}
    (root / "spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.chdir(root)
    yield root, name
    for m in [m for m in sys.modules if m.startswith(name)]:
        del sys.modules[m]


def test_a_user_step_module_travels_with_the_model_and_together_steps_see_the_training_rows(project, tmp_path) -> None:
    from foldwise.tasks.steps import apply_frame_steps
    from foldwise.workflows.tracking.logged_model import find_model

    root, name = project
    uri = f"sqlite:///{root / 'm.db'}"
    result = run_cv(root / "spec.yaml", executor="local", out=root / "out", tracking_uri=uri,
                    cache_root=str(root / "c"))
    expected = pd.read_parquet(result.summary["outputs"]["test_predictions"])["ensemble"].to_numpy()

    # the model holds the training rows for the `together` step, and the steps' code under code/
    predictor, _ = find_model(uri, result.run_id)
    assert predictor.step_rows is not None and len(predictor.step_rows) == 400
    assert "target" not in predictor.step_rows.columns
    import mlflow

    local = Path(mlflow.artifacts.download_artifacts(run_id=result.run_id, artifact_path="model", tracking_uri=uri,
                                                     dst_path=str(tmp_path / "model")))
    assert (local / "code" / f"{name}.py").read_text() == COUNTS

    # a fresh process elsewhere (the project not on sys.path) loads it and gives the run's predictions
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = pyfunc_in_fresh_process(f"runs:/{result.run_id}/model", uri, root / "test.csv", elsewhere)
    assert proc.returncode == 0, proc.stderr[-3000:]
    np.testing.assert_allclose(json.loads(proc.stdout.strip().splitlines()[-1])["1"], expected, rtol=0, atol=TOL)

    # ... which the share over the test rows alone would not give: the check can fail
    test = pd.read_csv(root / "test.csv")
    alone, _ = apply_frame_steps(predictor.steps, test, None, "id", "target")
    stacked = predictor.stepped(test)
    assert not np.allclose(alone["city_share"], stacked["city_share"])

    out = run_predict(str(root / "out"), str(root / "test.csv"), out=tmp_path / "p", executor="local", chunk_rows=30)
    assert out.summary["chunks"] == 4
    np.testing.assert_allclose(out.predictions["1"], expected, rtol=0, atol=TOL)

    # without its code (a model logged where the module was installed, loaded where it is not): one
    # error naming the step and the module, at load
    shutil.rmtree(local / "code")
    conf = yaml.safe_load((local / "MLmodel").read_text())
    conf["flavors"]["python_function"].pop("code", None)
    (local / "MLmodel").write_text(yaml.safe_dump(conf))
    proc = pyfunc_in_fresh_process(str(local), uri, root / "test.csv", elsewhere)
    assert proc.returncode != 0
    assert f"step 'share' of this run needs {name}:level_share (module '{name}'), which this process cannot import" \
        in proc.stderr, proc.stderr[-3000:]


def test_predict_with_steps_refuses_a_file_missing_a_column_the_steps_took(project, tmp_path, capsys) -> None:
    from foldwise.workflows.cli.main import main

    root, _ = project
    uri = f"sqlite:///{root / 'm.db'}"
    run_cv(root / "spec.yaml", executor="local", out=root / "out", tracking_uri=uri, cache_root=str(root / "c"))
    pd.read_csv(root / "test.csv").drop(columns="city").to_csv(tmp_path / "bad.csv", index=False)
    code = main(["predict", str(root / "out"), str(tmp_path / "bad.csv"), "--out", str(tmp_path / "p"),
                 "--tracking-uri", uri, "--executor", "local"])
    err = capsys.readouterr().err
    assert code == 2 and "missing column(s) 'city'; the run's frame steps (share, twice) took every column" in err, err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "p").exists()
