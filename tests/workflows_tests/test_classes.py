"""What a new user tripped on (issue 23): which class is positive, silencing a warning by its code,
the best iteration of early stopping, a label-valued submission, and a quiet first run.

Every run here uses `--executor local` (no Ray) on a small yes/no CSV sorted by its target,
so its id column tracks the target while already kept out of the features.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml

from foldwise.workflows.cli.main import main
from foldwise.workflows.cli.run import print_leaderboard
from foldwise.workflows.commands.run import run_cv

N = 400
LOGREG = {"name": "logreg", "type": "sklearn", "estimator": "sklearn.linear_model.LogisticRegression"}
LGBM = {"name": "lgbm", "type": "lightgbm", "params": {"n_estimators": 300, "learning_rate": 0.1, "num_leaves": 7,
                                                       "min_child_samples": 5, "early_stopping_rounds": 10}}


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("classes")
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=N + 60), rng.normal(size=N + 60)
    label = np.where(a + 0.5 * b + rng.normal(scale=0.8, size=N + 60) > 0, "yes", "no")
    frame = pd.DataFrame({"a": a, "b": b, "c": rng.normal(size=N + 60), "label": label})
    train = frame.head(N).sort_values("label", kind="stable").reset_index(drop=True)  # a file sorted by the target
    train.insert(0, "id", np.arange(N))
    train.to_csv(d / "train.csv", index=False)
    frame.tail(60).drop(columns="label").assign(id=np.arange(N, N + 60)).to_csv(d / "test.csv", index=False)
    return d


def spec_file(folder: Path, name: str, models: list[dict]) -> Path:
    spec = {"name": f"classes-{name}", "data": {"train": "train.csv", "test": "test.csv", "target": "label", "id": "id"},
            "cv": {"folds": 3, "seed": 0}, "models": models}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture(scope="module")
def first_run(folder: Path):
    """A user's first run, as a process of its own: a fresh sqlite store, stderr as they see it."""
    db = folder / "fresh.db"
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    done = subprocess.run([sys.executable, "-m", "foldwise", "run", str(spec_file(folder, "base", [LOGREG, LGBM])),
                           "--tracking-uri", f"sqlite:///{db}", "--out", str(folder / "out-base"), "--executor", "local",
                           "--no-progress"], capture_output=True, text=True, env=env, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    summary = json.loads(Path(done.stdout.strip().splitlines()[-1]).read_text())
    return summary, done.stderr, f"sqlite:///{db}"


def test_a_first_run_against_a_fresh_store_prints_no_mlflow_info_lines(first_run) -> None:
    _, err, _ = first_run
    assert "Creating initial MLflow database tables" not in err
    assert not [line for line in err.splitlines() if " INFO " in line], err


def test_summary_mlflow_and_files_say_which_class_is_positive(first_run) -> None:
    from mlflow.tracking import MlflowClient

    summary, _, uri = first_run
    assert summary["classes"] == ["no", "yes"] and summary["positive_class"] == "yes"
    assert summary["submission"] == {"kind": "proba", "columns": ["label"], "holds": "P(label == 'yes')"}
    tags = MlflowClient(uri).get_run(summary["run_id"]).data.tags
    assert tags["foldwise.positive_class"] == "yes" and json.loads(tags["foldwise.classes"]) == ["no", "yes"]
    for key in ("oof", "test_predictions"):
        meta = pq.read_schema(summary["outputs"][key]).metadata
        assert json.loads(meta[b"foldwise.classes"]) == ["no", "yes"] and meta[b"foldwise.positive_class"] == b'"yes"'


def test_the_id_warning_has_its_code_and_no_advice_to_exclude_an_excluded_column(first_run) -> None:
    summary, err, _ = first_run
    lines = [line for line in err.splitlines() if line.startswith("foldwise: warning: ")]
    assert any("the id column 'id' tracks the target" in line and line.endswith("[id_tracks_target]") for line in lines)
    assert not any("keep it out of the features" in line for line in lines), lines
    assert not any("row order" in w and w.endswith("[row_order_tracks_target]") for w in summary["warnings"])


def test_best_iteration_per_fold_in_summary_and_mlflow(first_run) -> None:
    from mlflow.tracking import MlflowClient

    summary, _, uri = first_run
    best = summary["models"]["lgbm"]["best_iteration"]
    assert len(best) == 3 and all(isinstance(b, int) and 1 <= b <= 300 for b in best)
    assert "best_iteration" not in summary["models"]["logreg"]  # reports none
    client = MlflowClient(uri)
    child = next(r for r in client.search_runs([client.get_run(summary["run_id"]).info.experiment_id],
                                               f"tags.mlflow.parentRunId = '{summary['run_id']}'")
                 if r.data.tags.get("foldwise.model") == "lgbm")
    history = client.get_metric_history(child.info.run_id, "best_iteration")
    assert sorted((m.step, int(m.value)) for m in history) == list(enumerate(best))


def test_positive_class_no_flips_the_probabilities_not_the_score(first_run, folder: Path, tmp_path: Path,
                                                                 capsys) -> None:
    base, _, uri = first_run
    flipped = run_cv(spec_file(folder, "flip", [LOGREG]), overrides=["data.positive_class=no", "submission.column=class"], out=tmp_path,
                     tracking_uri=uri, executor="local")
    s = flipped.summary
    assert s["classes"] == ["yes", "no"] and s["positive_class"] == "no"
    assert s["models"]["logreg"]["cv_score"] == pytest.approx(base["models"]["logreg"]["cv_score"], abs=1e-4)
    p_yes = pd.read_parquet(base["outputs"]["test_predictions"])["logreg"].to_numpy()
    submission = pd.read_csv(s["outputs"]["submission"])
    assert submission.columns.tolist() == ["id", "no"] and s["submission"]["holds"] == "P(label == 'no')"
    p_no = submission["no"].to_numpy()
    print_leaderboard(s)  # what `foldwise run` prints under its table
    assert "submission.csv no: P(label == 'no')" in capsys.readouterr().out
    np.testing.assert_allclose(p_no, 1 - p_yes, atol=1e-4)


def test_a_positive_class_not_in_the_target_exits_2_naming_the_classes(folder: Path, tmp_path: Path, capsys) -> None:
    db = tmp_path / "mlflow.db"
    code = main(["run", str(spec_file(folder, "bad", [LOGREG])), "--tracking-uri", f"sqlite:///{db}",
                 "--set", "data.positive_class=maybe", "--executor", "local", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err
    assert "data.positive_class: 'maybe' is not a class of 'label' (classes: 'no', 'yes')" in err
    assert not db.exists()


def test_a_label_submission_with_a_silenced_warning(first_run, folder: Path, tmp_path: Path, capsys) -> None:
    _, _, uri = first_run
    r = run_cv(spec_file(folder, "label", [LOGREG]), out=tmp_path, tracking_uri=uri, executor="local",
               overrides=["submission.kind=label", "metric=accuracy", "checks.ignore=[id_tracks_target]"])
    assert "id_tracks_target" not in capsys.readouterr().err
    assert not any(w.endswith("[id_tracks_target]") for w in r.summary["warnings"])
    sub = pd.read_csv(r.summary["outputs"]["submission"])
    assert list(sub.columns) == ["id", "label"] and set(sub["label"]) <= {"yes", "no"} and len(set(sub["label"])) == 2
    proba = pd.read_parquet(r.summary["outputs"]["test_predictions"])["ensemble"].to_numpy()
    assert (sub["label"].to_numpy() == np.where(proba > 0.5, "yes", "no")).all()
    assert r.summary["submission"]["kind"] == "label"


def test_a_label_submission_is_refused_for_regression(capsys) -> None:
    from foldwise.workflows.errors import InputError
    from foldwise.workflows.pipeline.inputs import validate_inputs
    from foldwise.workflows.pipeline.spec import load_spec

    spec = load_spec({"name": "r", "data": {"train": "sklearn:diabetes"}, "submission": {"kind": "label"},
                      "models": [{"name": "ridge", "type": "sklearn", "estimator": "sklearn.linear_model.Ridge"}]})
    with pytest.raises(InputError, match="submission.kind: label is for classification tasks"):
        validate_inputs(spec)
