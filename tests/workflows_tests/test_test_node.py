"""Test prediction is its own node: adding or changing `data.test` refits nothing (fits are counted)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression

from foldwise.workflows.commands.run import run_cv


def spec(ws: Path, log: Path, test: str | None) -> dict:
    model = {"type": "tests.workflows_tests.adapters:SlowLogistic", "params": {"log": str(log)}}
    return {"name": "test-node", "data": {"train": str(ws / "train.csv"), "test": test, "target": "y", "id": "id"},
            "cv": {"folds": 3, "seed": 1}, "ensemble": {"method": "weights"},
            "models": [model | {"name": "a", "params": model["params"] | {"C": 1.0}},
                       model | {"name": "b", "params": model["params"] | {"C": 0.01}}]}


@pytest.fixture()
def ws(tmp_path: Path, ray_cluster) -> Path:
    rng = np.random.default_rng(3)
    frame = pd.DataFrame(rng.normal(size=(500, 4)), columns=list("pqrs"))
    frame["y"] = (frame.p - frame.q + rng.normal(size=500) > 0).astype(int)
    frame.insert(0, "id", np.arange(500))
    frame.iloc[:400].to_csv(tmp_path / "train.csv", index=False)
    frame.iloc[400:450].drop(columns="y").to_csv(tmp_path / "test1.csv", index=False)
    frame.iloc[450:].drop(columns="y").assign(id=lambda f: f.id + 1000).to_csv(tmp_path / "test2.csv", index=False)
    return tmp_path


def go(s: dict, ws: Path) -> dict:
    return run_cv(s, out=ws / f"out{time.monotonic_ns()}", tracking_uri=f"sqlite:///{ws / 'm.db'}",
                  cache_root=str(ws / "cache")).summary


def fits(log: Path) -> int:
    return len(log.read_text().splitlines())


def test_a_new_test_set_refits_nothing(ws: Path) -> None:
    log = ws / "fits.log"
    first = go(spec(ws, log, None), ws)
    assert fits(log) == 6 and first["rows"]["test"] == 0 and first["outputs"]["test_predictions"] is None

    added = go(spec(ws, log, str(ws / "test1.csv")), ws)
    assert fits(log) == 6, "adding data.test refits nothing"
    assert all(added["models"]["a"]["cached"] + added["models"]["b"]["cached"])
    assert added["models"]["a"]["fold_scores"] == first["models"]["a"]["fold_scores"]

    changed = go(spec(ws, log, str(ws / "test2.csv")), ws)
    assert fits(log) == 6, "changing data.test refits nothing"
    assert all(changed["models"]["b"]["cached"]) and not changed["ensemble"]["cached"]
    assert changed["ensemble"]["weights"] == first["ensemble"]["weights"]

    # the new test set's predictions are the fold models' on its rows, not the first test set's
    preds = pd.read_parquet(changed["outputs"]["test_predictions"])
    train, test = pd.read_csv(ws / "train.csv"), pd.read_csv(ws / "test2.csv")
    assert preds.id.tolist() == test.id.tolist()
    from foldwise.tasks.folds import assign_folds

    plan = assign_folds(train.y.to_numpy(), None, "stratified", 3, 1)
    X, Xt = train[list("pqrs")].to_numpy(), test[list("pqrs")].to_numpy()
    expected = np.mean([LogisticRegression(C=0.01, max_iter=2000).fit(X[plan.train_rows(k)], train.y[plan.train_rows(k)])
                        .predict_proba(Xt)[:, 1] for k in range(3)], axis=0)
    np.testing.assert_allclose(preds["b"].to_numpy(), expected, atol=1e-10)

    again = go(spec(ws, log, str(ws / "test2.csv")), ws)
    assert fits(log) == 6 and again["ensemble"]["cached"] and again["startup_seconds"] == 0.0, \
        "test predictions are cached too: nothing runs"
