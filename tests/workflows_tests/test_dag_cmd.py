"""`foldwise dag`: every node of the run's graph with its inputs, key and cache state; the picture on the run."""

from __future__ import annotations

import json
from pathlib import Path

from foldwise.workflows.cli.main import main

EXAMPLE = Path(__file__).resolve().parents[2] / "workflows" / "examples" / "breast_cancer_steps.yaml"


def _dag(tmp_path: Path, name: str, cache: Path, capsys) -> dict:
    code = main(["dag", str(EXAMPLE), "--out", str(tmp_path / name), "--cache", str(cache),
                 "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"])
    printed = capsys.readouterr().out
    assert code == 0 and printed.strip().splitlines()[-1] == str(tmp_path / name / "summary.json")
    return json.loads((tmp_path / name / "summary.json").read_text()) | {"printed": printed}


def test_dag_lists_every_node_then_shows_a_run_cached(ray_cluster, tmp_path: Path, capsys) -> None:
    import mlflow

    from foldwise.workflows.commands.run import run_cv

    cache = tmp_path / "cache"
    before = _dag(tmp_path, "dag1", cache, capsys)
    ids = [n["id"] for n in before["nodes"]]
    folds = [f"fold:{m}:{k}" for m in ("logreg", "lgbm") for k in range(5)]
    assert ids == ["raw", "step:shape", "step:worst_over_mean", "step:texture", "checks", "data", "plan", *folds,
                   "ensemble"]
    by_id = {n["id"]: n for n in before["nodes"]}
    assert by_id["step:texture"]["inputs"] == ["step:shape"] and by_id["step:shape"]["inputs"] == ["raw"]
    assert by_id["ensemble"]["inputs"] == folds and by_id["fold:lgbm:3"]["inputs"] == ["data", "plan"]
    assert all(n["state"] == "to run" for n in before["nodes"] if n["id"] != "raw")
    assert all(len(n["key"]) == 32 for n in before["nodes"])
    assert before["counts"] == {"nodes": 18, "cached": 0, "to_run": 17}
    assert "step texture" in before["printed"] and "to run" in before["printed"]
    mermaid = Path(before["pictures"]["mermaid"]).read_text()
    assert mermaid.startswith("flowchart LR") and "n_step_shape --> n_step_texture" in mermaid
    assert "n_step_shape -> n_step_texture;" in Path(before["pictures"]["dot"]).read_text()

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run = run_cv(EXAMPLE, out=tmp_path / "run", tracking_uri=uri, cache_root=str(cache))
    assert run.summary["dag"]["nodes"] == 18 and run.summary["dag"]["to_run"] == 17
    assert set(run.summary["steps"]) == {"shape", "worst_over_mean", "texture"}
    assert run.summary["steps"]["texture"]["columns"] == ["roundness_x_texture"]
    logged = [a.path for a in mlflow.MlflowClient(uri).list_artifacts(run.run_id)]
    assert "dag.mmd" in logged and "dag.dot" in logged, "the picture is on the parent MLflow run"

    after = _dag(tmp_path, "dag2", cache, capsys)
    assert after["counts"] == {"nodes": 18, "cached": 17, "to_run": 0}
    assert [n["key"] for n in after["nodes"]] == [n["key"] for n in before["nodes"]], "the keys `foldwise run` used"
