"""`--executor auto` (the default): small work runs in the CLI's own process, without Ray's
start-up, and is the same DAG as on Ray: same OOF, same cache keys, same MLflow records."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from foldwise.workflows.commands.run import run_cv
from foldwise.workflows.engine.cache import Cache
from foldwise.workflows.engine.lazy import SMALL_WORK_CELLS, Work, small_work


def test_the_small_work_rule(monkeypatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    big = Work(rows=100_000, features=40, fits=10)
    assert big.cells > SMALL_WORK_CELLS and not small_work(big, None)
    tiny = Work(rows=569, features=30, fits=10)
    assert not small_work(tiny, "127.0.0.1:6379"), "a named cluster is always used"
    assert not small_work(Work(rows=569, features=30, fits=10, gpus=True), None), "GPU folds go to Ray"
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")  # inside a Ray Job
    assert not small_work(tiny, None)


def two_model_project(root: Path, name: str) -> Path:
    """A 300-row binary table (+ a 50-row test file) and a logreg + LightGBM weights spec `<name>.yaml` in `root`."""
    rng = np.random.default_rng(3)
    frame = pd.DataFrame(rng.normal(size=(300, 4)), columns=list("abcd"))
    frame["y"] = (frame.a - frame.b + rng.normal(size=300) > 0).astype(int)
    frame.to_csv(root / "d.csv", index=False)
    frame.drop(columns="y").iloc[:50].to_csv(root / "t.csv", index=False)
    spec = {"name": name, "data": {"train": "d.csv", "test": "t.csv", "target": "y"}, "cv": {"folds": 3, "seed": 5},
            "models": [{"name": "lr", "type": "sklearn", "estimator": "sklearn.linear_model.LogisticRegression",
                        "preprocess": ["standard_scaler"]},
                       {"name": "gbm", "type": "lightgbm", "params": {"n_estimators": 20, "num_leaves": 7}}],
            "ensemble": {"method": "weights"}}
    (root / f"{name}.yaml").write_text(yaml.safe_dump(spec))
    return root


@pytest.fixture()
def project(tmp_path: Path) -> Path:
    return two_model_project(tmp_path, "auto")


def _cli(project: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "FOLDWISE_CACHE")}
    return subprocess.run([sys.executable, "-m", "foldwise.workflows.cli", *args, "--no-progress"], cwd=project,
                          env=env, capture_output=True, text=True, timeout=300)


def _records(uri: str, run_id: str) -> dict[str, tuple]:
    """Per run of the command (parent and each model's), the names of what it logged."""
    client = MlflowClient(uri)
    parent = client.get_run(run_id)
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{run_id}'")
    runs = {"parent": parent} | {r.data.tags.get("foldwise.model", r.info.run_name): r for r in children}
    return {name: (sorted(r.data.params), sorted(r.data.metrics), r.info.status) for name, r in runs.items()}


def test_small_work_runs_in_process_and_is_the_same_dag_as_on_ray(project: Path, ray_cluster) -> None:
    cli_cache, ray_cache = project / "cache-cli", project / "cache-ray"
    r = _cli(project, "run", "auto.yaml", "--cache", str(cli_cache), "--out", "out-cli",
             "--tracking-uri", "sqlite:///cli.db")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "small work (300 rows x 4 features, 6 fits): running in this process" in r.stderr
    local = json.loads((project / "out-cli" / "summary.json").read_text())
    assert local["executor"] == "local" and local["startup_seconds"] == 0.0

    on_ray = run_cv(project / "auto.yaml", executor="ray", cache_root=str(ray_cache), out=project / "out-ray",
                    tracking_uri=f"sqlite:///{project / 'ray.db'}").summary
    assert on_ray["executor"] == "ray"
    keys = {(e.kind, e.key) for e in Cache(str(cli_cache)).entries()}
    assert keys and keys == {(e.kind, e.key) for e in Cache(str(ray_cache)).entries()}, "same nodes, same keys"
    for name in ("oof", "test_predictions"):
        pd.testing.assert_frame_equal(pd.read_parquet(project / local["outputs"][name]),
                                      pd.read_parquet(on_ray["outputs"][name]),
                                      check_exact=False, rtol=0, atol=1e-12)
    for m in ("lr", "gbm"):
        assert local["models"][m]["fold_scores"] == pytest.approx(on_ray["models"][m]["fold_scores"], abs=1e-12)
    assert _records(f"sqlite:///{project / 'cli.db'}", local["run_id"]) == \
        _records(f"sqlite:///{project / 'ray.db'}", on_ray["run_id"])

    again = _cli(project, "run", "auto.yaml", "--cache", str(ray_cache), "--out", "out-again",
                 "--tracking-uri", "sqlite:///cli.db")  # the Ray run's cache serves the in-process path
    assert again.returncode == 0, again.stderr[-2000:]
    cached = json.loads((project / "out-again" / "summary.json").read_text())
    assert cached["executor"] == "none" and all(all(m["cached"]) for m in cached["models"].values())


def test_check_of_small_data_runs_in_process(project: Path) -> None:
    r = _cli(project, "check", "auto.yaml", "--tracking-uri", "sqlite:///check.db", "--out", "out-check")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "small work (350 rows x 4 features, 3 fits): running in this process" in r.stderr
    assert (project / "out-check" / "summary.json").exists()
