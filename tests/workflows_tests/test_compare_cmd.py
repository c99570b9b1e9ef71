"""`foldwise compare` on real runs (Ray session cluster + sqlite MLflow): three small runs of one
spec — a baseline, one param changed, and another fold seed — compared from the command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from foldwise.workflows.cli.main import main

SPEC = {
    "name": "compare-test",
    "data": {"train": "sklearn:breast_cancer"},
    "task": "binary",
    "metric": "roc_auc",
    "cv": {"scheme": "stratified", "folds": 5, "seed": 42},
    "models": [{"name": "logreg", "type": "sklearn", "estimator": "sklearn.linear_model.LogisticRegression",
                "params": {"C": 1.0, "max_iter": 2000}, "preprocess": ["standard_scaler"]}],
    "slices": {"large": "`mean radius` > 15"},
}


@pytest.fixture(scope="module")
def three_runs(ray_cluster, session_dir) -> dict[str, str]:
    from foldwise.workflows.commands.run import run_cv
    from foldwise.workflows.pipeline.spec import load_spec

    uri = f"sqlite:///{session_dir / 'compare.db'}"
    ids = {"uri": uri}
    for key, overrides in (("a", []), ("b", ["models.0.params.C=0.05"]), ("seed", ["cv.seed=7"])):
        ids[key] = run_cv(load_spec(SPEC, overrides), out=session_dir / f"compare-{key}", tracking_uri=uri).run_id
    return ids


def _compare(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["compare", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_same_folds_one_param_changed(three_runs, tmp_path, capsys) -> None:
    from mlflow import MlflowClient

    code, out, _ = _compare(capsys, three_runs["a"], three_runs["b"], "--tracking-uri", three_runs["uri"],
                            "--out", str(tmp_path / "ab"), "--bootstrap", "50")
    assert code == 0
    summary_path = Path(out.strip().splitlines()[-1])
    assert summary_path == tmp_path / "ab" / "summary.json"
    s = json.loads(summary_path.read_text())
    assert s["command"] == "compare" and (s["run_a"], s["run_b"]) == (three_runs["a"], three_runs["b"])
    assert s["same_folds"] is True and len(s["fold_deltas"]) == 5 and 0 <= s["p_value"] <= 1
    assert s["p_values"]["wilcoxon"] is not None
    assert s["changes"]["models.0.params.C"] == {"a": "1.0", "b": "0.05"}
    assert "large" in s["slices"] and s["slices"]["large"]["source"] == "spec"
    assert s["slices"]["large"]["verdict"] in ("better", "worse", "within noise")
    for key in ("writeup", "html", "fold_deltas", "slice_grid"):
        assert Path(s["outputs"][key]).stat().st_size > 500
    # the write-up is B's run description, and its files are B's artifacts
    client = MlflowClient(three_runs["uri"])
    run_b = client.get_run(three_runs["b"])
    note = run_b.data.tags["mlflow.note.content"]
    assert note.startswith("# Compare:") and "## Conclusion" in note and "paired t-test" in note
    arts = {a.path for a in client.list_artifacts(three_runs["b"], f"compare/{three_runs['a']}")}
    assert f"compare/{three_runs['a']}/writeup.md" in arts and f"compare/{three_runs['a']}/writeup.html" in arts
    assert "mlflow.note.content" not in client.get_run(three_runs["a"]).data.tags


def test_different_seeds_refuse_paired_statistics(three_runs, tmp_path, capsys) -> None:
    code, out, _ = _compare(capsys, three_runs["a"], three_runs["seed"], "--tracking-uri", three_runs["uri"],
                            "--out", str(tmp_path / "seed"), "--no-log")
    assert code == 0
    s = json.loads(Path(out.strip().splitlines()[-1]).read_text())
    assert s["same_folds"] is False and s["fold_deltas"] == [] and s["p_value"] is None
    assert s["changes"]["cv.seed"] == {"a": "42", "b": "7"}
    md = Path(s["outputs"]["writeup"]).read_text()
    assert "FOLDS DIFFER" in md and "paired t-test" not in md


def test_model_child_run_by_parent_slash_model(three_runs, tmp_path, capsys) -> None:
    from mlflow import MlflowClient

    name_a = MlflowClient(three_runs["uri"]).get_run(three_runs["a"]).info.run_name
    code, out, _ = _compare(capsys, f"{three_runs['a']}/logreg", f"{three_runs['b']}/logreg", "--tracking-uri",
                            three_runs["uri"], "--out", str(tmp_path / "child"), "--no-log", "--bootstrap", "20")
    assert code == 0, name_a
    s = json.loads(Path(out.strip().splitlines()[-1]).read_text())
    assert s["same_folds"] is True and len(s["fold_deltas"]) == 5
    assert s["run_a_name"] == "logreg" and s["changes"]["model.params.C"] == {"a": "1.0", "b": "0.05"}


def test_unknown_run_is_exit_2_one_line_nothing_written(three_runs, tmp_path, capsys) -> None:
    out_dir = tmp_path / "nothing"
    code, out, err = _compare(capsys, three_runs["a"], "no-such-run", "--tracking-uri", three_runs["uri"],
                              "--out", str(out_dir))
    assert code == 2 and err.count("\n") == 1 and "no-such-run" in err and out == ""
    assert not out_dir.exists()
    code, _, err = _compare(capsys, "x", "y", "--tracking-uri", f"sqlite:///{tmp_path / 'missing.db'}")
    assert code == 2 and "does not exist" in err and not (tmp_path / "missing.db").exists()


def test_ui_command_binds_loopback_and_refuses_missing_store(tmp_path, capsys) -> None:
    from foldwise.workflows.cli.ui import server_command

    cmd = server_command("sqlite:///x.db", 5055)
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1" and cmd[cmd.index("--port") + 1] == "5055"
    assert main(["ui", "--tracking-uri", f"sqlite:///{tmp_path / 'none.db'}"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_integer_target_from_csv_keeps_the_slice_grid(tmp_path, capsys) -> None:
    """A CSV's integer target (326) against the OOF file's float (326.0): the same data, so slices are scored
    (it used to say 'the training data no longer matches the run's OOF rows' with identical fingerprints)."""
    import numpy as np
    import pandas as pd

    from foldwise.workflows.commands.run import run_cv
    from foldwise.workflows.pipeline.spec import load_spec

    rng = np.random.default_rng(0)
    n = 200
    carat = rng.uniform(0.2, 2.0, n)
    table = pd.DataFrame({"carat": carat, "depth": rng.normal(61, 1, n),
                          "price": (300 + 4000 * carat + rng.normal(0, 200, n)).round().astype(int)})
    table.to_csv(tmp_path / "diamonds.csv", index=False)
    spec = {"name": "compare-int-target", "data": {"train": str(tmp_path / "diamonds.csv"), "target": "price"},
            "task": "regression", "metric": "neg_root_mean_squared_error", "cv": {"scheme": "kfold", "folds": 3, "seed": 1},
            "models": [{"name": "ridge", "type": "sklearn", "estimator": "sklearn.linear_model.Ridge",
                        "params": {"alpha": 1.0}}],
            "slices": {"big": "carat > 1"}}
    uri = f"sqlite:///{tmp_path / 'int.db'}"
    ids = [run_cv(load_spec(spec, [f"models.0.params.alpha={alpha}"]), out=tmp_path / f"run-{alpha}", tracking_uri=uri,
                  executor="local", no_cache=True).run_id for alpha in (1.0, 50.0)]
    code, out, _ = _compare(capsys, *ids, "--tracking-uri", uri, "--out", str(tmp_path / "cmp"), "--no-log",
                            "--bootstrap", "20")
    assert code == 0
    s = json.loads(Path(out.strip().splitlines()[-1]).read_text())
    assert "big" in s["slices"] and "slice_grid" in s["outputs"]
    assert "no longer matches" not in Path(s["outputs"]["writeup"]).read_text()
