"""One real end-to-end run of the README's main job (Ray + MLflow sqlite) feeds these assertions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_validate
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from foldwise.tasks.folds import assign_folds

SUMMARY_KEYS = {"command", "experiment", "run_id", "metric", "greater_is_better", "folds", "models", "ensemble",
                "wall_seconds", "startup_seconds", "outputs"}


def test_summary_has_the_contract_keys(breast_cancer_run) -> None:
    s = json.loads((breast_cancer_run.out_dir / "summary.json").read_text())
    assert SUMMARY_KEYS <= set(s)
    assert s["command"] == "run" and s["experiment"] == "breast-cancer" and s["greater_is_better"] is True
    assert set(s["folds"]) == {"scheme", "n", "seed", "hash", "repeats"} and s["folds"]["n"] == 5 and s["folds"]["repeats"] == 1
    assert set(s["models"]) == {"logreg", "lgbm"}
    for m in s["models"].values():
        assert len(m["fold_scores"]) == len(m["fit_seconds"]) == len(m["cached"]) == 5
        assert m["cv_score"] == pytest.approx(np.mean(m["fold_scores"]))
    assert set(s["ensemble"]) >= {"method", "weights", "cv_score"}
    assert set(s["outputs"]) == {"oof", "test_predictions", "submission", "leaderboard", "feature_importance"}
    assert s["outputs"]["submission"] is None  # no test set in this example
    assert 0 <= s["startup_seconds"] < s["wall_seconds"]


def test_fold_scores_equal_sklearn_cross_validate(breast_cancer_run) -> None:
    """The oracle: a deterministic sklearn pipeline scores exactly as cross_validate does."""
    X, y = load_breast_cancer(return_X_y=True)
    ref = cross_validate(make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000, random_state=42)),
                         X, y, cv=StratifiedKFold(5, shuffle=True, random_state=42), scoring="roc_auc")
    ours = breast_cancer_run.summary["models"]["logreg"]["fold_scores"]
    np.testing.assert_allclose(ours, ref["test_score"], rtol=0, atol=1e-9)


def test_oof_covers_every_row_exactly_once(breast_cancer_run) -> None:
    oof = pd.read_parquet(breast_cancer_run.summary["outputs"]["oof"])
    assert len(oof) == 569 and oof["row"].is_unique
    assert set(oof["fold"]) == set(range(5))
    counts = np.bincount(np.concatenate([r.valid_rows for r in breast_cancer_run.fold_results if r.model == "lgbm"]))
    assert (counts == 1).all() and len(counts) == 569
    for col in ("logreg", "lgbm", "ensemble"):
        assert oof[col].between(0, 1).all() and oof[col].notna().all()


def test_folds_hash_is_the_sklearn_assignment(breast_cancer_run) -> None:
    y = load_breast_cancer().target
    assert breast_cancer_run.summary["folds"]["hash"] == assign_folds(y, None, "stratified", 5, 42).hash


def test_weights_are_a_convex_blend(breast_cancer_run) -> None:
    ens = breast_cancer_run.summary["ensemble"]
    assert ens["method"] == "weights"
    assert all(w >= 0 for w in ens["weights"].values()) and sum(ens["weights"].values()) == pytest.approx(1.0)
    assert ens["cv_score"] > 0.98


def test_mlflow_holds_the_run_and_every_fold(breast_cancer_run, session_dir: Path) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{session_dir / 'mlflow.db'}")
    s = breast_cancer_run.summary
    parent = client.get_run(s["run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["foldwise.command"] == "run"
    assert parent.data.params["cv.folds"] == "5" and parent.data.params["models.0.params.C"] == "1.0"
    assert parent.data.metrics["cv_score"] == pytest.approx(s["ensemble"]["cv_score"])
    artifacts = {a.path for a in client.list_artifacts(s["run_id"])}
    assert {"oof.parquet", "leaderboard.md", "summary.json", "spec.yaml"} <= artifacts
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{s['run_id']}'")
    assert {c.data.tags["foldwise.model"] for c in children} == {"logreg", "lgbm"}
    for child in children:
        name = child.data.tags["foldwise.model"]
        assert child.info.status == "FINISHED"
        history = client.get_metric_history(child.info.run_id, "fold_score")
        assert sorted(m.step for m in history) == list(range(5))
        assert [m.value for m in sorted(history, key=lambda m: m.step)] == pytest.approx(s["models"][name]["fold_scores"])
        assert child.data.metrics["cv_score"] == pytest.approx(s["models"][name]["cv_score"])
        assert child.data.tags["folds_hash"] == s["folds"]["hash"]
        assert child.data.tags["data_fingerprint"]
        assert "mlflow.source.git.commit" in child.data.tags
        assert child.data.params["model.type"] in ("sklearn", "lightgbm")


def test_leaderboard_lists_models_and_ensemble(breast_cancer_run) -> None:
    text = Path(breast_cancer_run.summary["outputs"]["leaderboard"]).read_text()
    for name in ("logreg", "lgbm", "ensemble (weights)"):
        assert name in text


def test_run_records_what_a_write_up_needs(breast_cancer_run, session_dir: Path) -> None:
    """Per-slice scores (recomputed here from the OOF), per-fold peak memory, importances."""
    from mlflow.tracking import MlflowClient
    from sklearn.metrics import roc_auc_score

    s, oof = breast_cancer_run.summary, breast_cancer_run.oof
    X = load_breast_cancer(as_frame=True).data
    large = (X["mean radius"] > 15).to_numpy()
    sl = s["slices"]["large"]
    assert sl["query"] == "`mean radius` > 15" and sl["rows"] == int(large.sum()) > 50
    for col in ("logreg", "lgbm", "ensemble"):
        assert sl["scores"][col] == pytest.approx(roc_auc_score(oof["target"][large].astype(int), oof[col][large]), abs=1e-12)
    client = MlflowClient(f"sqlite:///{session_dir / 'mlflow.db'}")
    assert client.get_run(s["run_id"]).data.metrics["slice.large.ensemble"] == pytest.approx(sl["scores"]["ensemble"])
    for m in s["models"].values():
        assert len(m["peak_memory_bytes"]) == 5 and all(b >= 0 for b in m["peak_memory_bytes"])
    imp = json.loads(Path(s["outputs"]["feature_importance"]).read_text())
    assert set(imp) == {"logreg", "lgbm"} and set(imp["lgbm"]) == set(X.columns)
    top = max(imp["lgbm"], key=imp["lgbm"].get)
    assert top.startswith("worst"), top  # gain concentrates on the 'worst *' family on this data


def test_artifacts_live_beside_the_sqlite_store(breast_cancer_run, session_dir: Path) -> None:
    """Not in ./mlruns of whatever folder the command ran in: the store and its files stay together."""
    from mlflow.tracking import MlflowClient

    run = MlflowClient(f"sqlite:///{session_dir / 'mlflow.db'}").get_run(breast_cancer_run.run_id)
    folder = Path(run.info.artifact_uri.removeprefix("file://"))
    assert folder.is_relative_to(session_dir / "mlruns" / "breast-cancer")
    assert (folder / "summary.json").is_file() and (folder / "oof.parquet").is_file()
