"""More end-to-end runs: multiclass stacking, a CSV with test set and ids, the local executor,
random labels through every ensemble method, user adapters, a failing fold, `foldwise init`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from foldwise.tasks.ensemble import blend
from foldwise.tasks.folds import assign_folds
from foldwise.workflows.cli.main import main
from foldwise.workflows.commands.run import run_cv
from foldwise.workflows.examples.demo_data import write_churn

EXAMPLES = Path(__file__).resolve().parents[2] / "workflows" / "examples"


@pytest.fixture(scope="module")
def uri(session_dir: Path) -> str:
    return f"sqlite:///{session_dir / 'mlflow-more.db'}"


def test_multiclass_stack(ray_cluster, uri: str, tmp_path: Path) -> None:
    r = run_cv(EXAMPLES / "wine.yaml", out=tmp_path, tracking_uri=uri)
    s = r.summary
    assert s["task"] == "multiclass" and s["ensemble"]["method"] == "stack"
    assert all(v < 0 for m in s["models"].values() for v in m["fold_scores"])  # neg_log_loss stays negative
    assert s["ensemble"]["cv_score"] > -0.3
    probs = r.oof[[f"ensemble__{c}" for c in (0, 1, 2)]].to_numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)


def test_csv_with_test_set_ids_categoricals_and_submission(ray_cluster, uri: str, tmp_path: Path) -> None:
    write_churn(tmp_path / "data")
    spec = (EXAMPLES / "churn_csv.yaml").read_text()
    (tmp_path / "churn.yaml").write_text(spec)
    r = run_cv(tmp_path / "churn.yaml", out=tmp_path / "out", tracking_uri=uri)
    s = r.summary
    sub = pd.read_csv(s["outputs"]["submission"])
    test = pd.read_csv(tmp_path / "data" / "churn_test.csv")
    assert list(sub.columns) == ["customer_id", "churned"]
    assert sub["customer_id"].tolist() == test["customer_id"].tolist()
    assert sub["churned"].between(0, 1).all()
    assert s["ensemble"]["cv_score"] > 0.7  # the generator plants real signal in plan, calls, tenure, NaN usage
    preds = pd.read_parquet(s["outputs"]["test_predictions"])
    assert {"customer_id", "logreg", "lgbm", "ensemble"} <= set(preds.columns) and len(preds) == len(test)
    assert r.oof["customer_id"].is_unique and set(r.oof["churned"]) == {"no", "yes"}


def test_local_executor_gives_the_same_oof_as_ray(breast_cancer_run, uri: str, tmp_path: Path) -> None:
    local = run_cv(EXAMPLES / "breast_cancer.yaml", out=tmp_path, tracking_uri=uri, executor="local", no_cache=True)
    assert not any(local.summary["models"]["lgbm"]["cached"])
    for col in ("logreg", "lgbm", "ensemble"):
        np.testing.assert_allclose(local.oof[col], breast_cancer_run.oof[col], rtol=0, atol=1e-12)
    assert local.summary["folds"]["hash"] == breast_cancer_run.summary["folds"]["hash"]


@pytest.fixture(scope="module")
def random_label_run(ray_cluster, uri: str, tmp_path_factory):
    d = tmp_path_factory.mktemp("random")
    rng = np.random.default_rng(11)
    frame = pd.DataFrame(rng.normal(size=(3000, 8)), columns=[f"x{i}" for i in range(8)])
    frame["y"] = rng.integers(0, 2, size=3000)
    frame.to_parquet(d / "random.parquet")
    spec = {"name": "random-labels", "data": {"train": str(d / "random.parquet"), "target": "y"}, "metric": "roc_auc",
            "cv": {"scheme": "stratified", "folds": 5, "seed": 0},
            "models": [{"name": "logreg", "type": "sklearn", "estimator": "sklearn.linear_model.LogisticRegression"},
                       {"name": "lgbm", "type": "lightgbm", "params": {"n_estimators": 100, "num_leaves": 63}},
                       {"name": "tree", "type": "sklearn", "estimator": "sklearn.tree.DecisionTreeClassifier",
                        "params": {"max_depth": 6}}],
            "ensemble": {"method": "stack"}}
    return run_cv(spec, out=d / "out", tracking_uri=uri)


@pytest.mark.parametrize("method", ["mean", "rank_mean", "weights", "stack"])
def test_random_labels_score_chance_through_every_ensemble(random_label_run, method: str) -> None:
    r = random_label_run
    for m in r.summary["models"].values():
        assert m["cv_score"] == pytest.approx(0.5, abs=0.05)
    y = (r.oof["y"].to_numpy()).astype(int)
    plan = assign_folds(y, None, "stratified", 5, 0)
    oof = {n: r.oof[n].to_numpy() for n in ("logreg", "lgbm", "tree")}
    ens = blend(method, oof, None, y, plan, "roc_auc", "binary", 0)
    assert ens.cv_score == pytest.approx(0.5, abs=0.05), (method, ens.fold_scores)
    if method == "stack":
        assert r.summary["ensemble"]["cv_score"] == pytest.approx(ens.cv_score)


def test_torch_mlp_runs_in_fold_tasks(ray_cluster, uri: str, tmp_path: Path) -> None:
    spec = {"name": "mlp", "data": {"train": "sklearn:breast_cancer"}, "cv": {"folds": 3},
            "models": [{"name": "mlp", "type": "torch_mlp", "params": {"hidden": [32], "epochs": 30, "patience": 5},
                        "resources": {"cpus": 1}}]}
    s = run_cv(spec, out=tmp_path, tracking_uri=uri).summary
    assert s["models"]["mlp"]["cv_score"] > 0.97


def test_user_adapter_by_import_path(ray_cluster, uri: str, tmp_path: Path) -> None:
    spec = {"name": "adapter", "data": {"train": "sklearn:breast_cancer"},
            "models": [{"name": "mean_radius", "type": "tests.workflows_tests.adapters:MeanOfColumn",
                        "params": {"column": 0}}]}
    s = run_cv(spec, out=tmp_path, tracking_uri=uri).summary
    assert 0.9 < s["models"]["mean_radius"]["cv_score"] < 0.97  # mean radius alone is a good, imperfect score
    assert s["ensemble"]["weights"] == {"mean_radius": 1.0}
    assert s["ensemble"]["cv_score"] == pytest.approx(s["models"]["mean_radius"]["cv_score"])


def slow_spec(path: Path, sleep: float, **changes: object) -> Path:
    """The breast-cancer example with one model, `slow`, whose folds each sleep `sleep` s before a
    real logistic regression; `changes` replace top-level spec keys."""
    spec = yaml.safe_load((EXAMPLES / "breast_cancer.yaml").read_text())
    spec |= {"models": [{"name": "slow", "type": "tests.workflows_tests.adapters:SlowLogistic", "params": {"sleep": sleep}}],
             **changes}
    path.write_text(yaml.safe_dump(spec))
    return path


def test_mlflow_set_up_waits_for_the_cpu_the_last_round_leaves_free(ray_cluster, uri: str, tmp_path: Path) -> None:
    """5 one-CPU folds on 2 CPUs: the MLflow runs open only once a fold's CPU has nothing left to run
    (after the 4th fold ended), not at the folds' expense; fold scores that came first are logged
    then, and the runs are still dated from the command's start."""
    from mlflow.tracking import MlflowClient

    from foldwise.workflows.tracking.tracker import Tracker

    Tracker(uri, "breast-cancer")  # MLflow imported, store and experiment made: opening the runs takes well under a fold
    # each fold takes 1 s, longer than opening the runs takes: only waiting for the CPU puts them last
    r = run_cv(slow_spec(tmp_path / "one.yaml", sleep=1.0), out=tmp_path / "out", tracking_uri=uri, no_cache=True)
    assert not any(r.summary["models"]["slow"]["cached"])
    ends = sorted(f.ended for f in r.fold_results)
    client = MlflowClient(uri)
    parent = client.get_run(r.run_id)
    child = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{r.run_id}'")[0]
    history = client.get_metric_history(child.info.run_id, "fold_score")
    assert min(m.timestamp for m in history) / 1000 >= ends[3]  # the first score was written after the 4th fold
    assert parent.info.start_time / 1000 <= min(f.started for f in r.fold_results)
    assert child.info.start_time == parent.info.start_time
    assert sorted(m.step for m in history) == [0, 1, 2, 3, 4]
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == r.summary["models"]["slow"]["fold_scores"]


def test_failing_fold_exits_1_and_marks_the_run_failed(ray_cluster, uri: str, tmp_path: Path, capsys) -> None:
    from mlflow.tracking import MlflowClient

    spec = tmp_path / "explode.yaml"
    spec.write_text("name: explode\ndata: {train: sklearn:breast_cancer}\nmodels:\n"
                    "  - {name: boom, type: 'tests.workflows_tests.adapters:ExplodesOnFold'}\n")
    code = main(["run", str(spec), "--tracking-uri", uri, "--out", str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1
    assert "train_fold[model=boom, fold=" in err and "ValueError: matrix is singular (planted failure)" in err
    run_id = err.split("MLflow run ")[1].split()[0]
    client = MlflowClient(uri)
    assert client.get_run(run_id).info.status == "FAILED"
    children = client.search_runs([client.get_run(run_id).info.experiment_id], f"tags.mlflow.parentRunId = '{run_id}'")
    assert [c.info.status for c in children] == ["FAILED"]


def test_init_writes_a_runnable_starter_spec(tmp_path: Path) -> None:
    write_churn(tmp_path)
    out = tmp_path / "starter.yaml"
    assert main(["init", str(tmp_path / "churn_train.csv"), "--target", "churned", "--id", "customer_id",
                 "--test", str(tmp_path / "churn_test.csv"), "--out", str(out)]) == 0
    from foldwise.workflows.pipeline.spec import load_spec

    spec = load_spec(out)
    assert spec.task == "binary" and spec.metric == "roc_auc" and spec.cv.folds == 5
    assert [m.type for m in spec.models] == ["sklearn", "lightgbm"]
    assert main(["init", str(tmp_path / "churn_train.csv"), "--target", "churned", "--out", str(out)]) == 2
    # data paths relative to the spec's folder (load_spec resolves them there), so the folder can move
    raw = yaml.safe_load(out.read_text())
    assert (raw["data"]["train"], raw["data"]["test"]) == ("churn_train.csv", "churn_test.csv")
    (tmp_path / "specs").mkdir()
    beside = tmp_path / "specs" / "s.yaml"
    assert main(["init", str(tmp_path / "churn_train.csv"), "--target", "churned", "--out", str(beside)]) == 0
    assert yaml.safe_load(beside.read_text())["data"]["train"] == "../churn_train.csv"
    assert load_spec(beside).data.train == str((tmp_path / "churn_train.csv").resolve())


def test_init_names_the_spec_after_the_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_churn(tmp_path)
    monkeypatch.chdir(tmp_path)
    for name in ("diamonds_train.csv", "diamonds-train.csv", "train_diamonds.csv"):
        (tmp_path / name).write_bytes((tmp_path / "churn_train.csv").read_bytes())
        assert main(["init", name, "--target", "churned", "--force"]) == 0
        spec = yaml.safe_load((tmp_path / "diamonds.yaml").read_text())
        assert spec["name"] == "diamonds" and spec["data"]["train"] == name
    (tmp_path / "train.csv").write_bytes((tmp_path / "churn_train.csv").read_bytes())
    assert main(["init", "train.csv", "--target", "churned"]) == 0 and (tmp_path / "train.yaml").exists()


def test_cli_main_job_as_a_user_runs_it(tmp_path: Path) -> None:
    """README's main command through the console script, in a fresh working directory."""
    exe = Path(sys.executable).with_name("foldwise")
    proc = subprocess.run([str(exe), "run", str(EXAMPLES / "diabetes.yaml"), "--set", "cv.folds=3"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    last = proc.stdout.strip().splitlines()[-1]
    summary = json.loads((tmp_path / last).read_text())
    assert summary["folds"]["n"] == 3 and summary["metric"] == "neg_root_mean_squared_error"
    assert (tmp_path / "mlflow.db").exists()  # embedded default store in the working directory
    assert "ridge" in proc.stdout and "lgbm" in proc.stdout


def test_sigint_ends_the_run_failed_even_when_started_with_sigint_ignored(tmp_path: Path) -> None:
    """`foldwise stop` sends SIGINT; a driver whose launcher ignored SIGINT (a cluster started with
    `nohup ... &` hands that to its jobs) still ends as an interrupted run: exit 1, runs FAILED."""
    import signal
    import time

    from mlflow.tracking import MlflowClient

    spec = slow_spec(tmp_path / "slow.yaml", sleep=8.0, name="sigint", cv={"scheme": "stratified", "folds": 4, "seed": 1},
                     slices={})
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    proc = subprocess.Popen([str(Path(sys.executable).with_name("foldwise")), "run", str(spec),
                             "--tracking-uri", uri, "--out", str(tmp_path / "out"), "--no-cache", "--no-progress",
                             "--executor", "ray"],
                            cwd=EXAMPLES.parents[1], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    client, deadline, running = MlflowClient(uri), time.monotonic() + 120, []
    while not running:  # interrupt it mid-run, once its runs exist
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        experiment = client.get_experiment_by_name("sigint") if (tmp_path / "m.db").exists() else None
        running = client.search_runs([experiment.experiment_id], "attributes.status = 'RUNNING'") if experiment else []
        time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and "interrupted" in err, err[-2000:]
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FAILED"}


def test_marks_run_failed_ends_every_run_and_closes_the_executor(tmp_path: Path) -> None:
    """The one failure path of run, ablate and check: FAILED runs, RunFailed naming the parent, executor closed."""
    from foldwise.workflows.errors import RunFailed
    from foldwise.workflows.pipeline.failures import marks_run_failed
    from foldwise.workflows.tracking import tracker as tk

    class Executor:
        closed = 0

        def close(self) -> None:
            Executor.closed += 1

    uri = f"sqlite:///{tmp_path / 'f.db'}"
    tracker = tk.Tracker(uri, "failures")
    outcomes = {}
    for case, body_error in (("ok", None), ("bug", ValueError("bad value")), ("ctrl-c", KeyboardInterrupt())):
        parent = tracker.start_run(case, {})
        done, running = tracker.start_run("done", {}, parent_id=parent), tracker.start_run("running", {}, parent_id=parent)
        try:
            with marks_run_failed(tracker, parent, [done, running], Executor()):
                tracker.finish(done, ok=True)
                if body_error is not None:
                    raise body_error
        except RunFailed as e:
            assert e.run_id == parent
            outcomes[case] = str(e)
        statuses = [tracker.run_status(r) for r in (parent, done, running)]
        assert statuses == (["FINISHED"] * 3 if body_error is None else ["FAILED", "FINISHED", "FAILED"]), case
    assert outcomes == {"bug": "ValueError: bad value", "ctrl-c": "interrupted"}
    assert Executor.closed == 3
