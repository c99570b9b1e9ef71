"""Frame steps as cached DAG nodes and fold steps inside the folds, end to end (real Ray, real MLflow)."""

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

from foldwise.workflows.errors import InputError, RunFailed

SLOW = "import time\n\ndef {fn}(df, *, seconds=1.5):\n    time.sleep(seconds)\n    return df.assign({col}=df['a'] * {k})\n"


def write_project(root: Path, name: str = "feats") -> Path:
    """A user's project folder: data, a package of step modules, a spec with two independent slow steps
    and one that depends on the first."""
    pkg = root / name
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "slow_a.py").write_text(SLOW.format(fn="add_a2", col="a2", k=2))
    (pkg / "slow_b.py").write_text(SLOW.format(fn="add_a3", col="a3", k=3))
    (pkg / "later.py").write_text("def add_sum(df):\n    return df.assign(s=df['a2'] + df['b'])\n")
    (pkg / "bad.py").write_text("def fewer(df):\n    return df.iloc[1:]\n"
                                "def no_id(df):\n    return df.drop(columns=['id'])\n"
                                "def leak(df):\n    return df.assign(Target=0)\n"
                                "def boom(df):\n    raise ValueError('the step broke')\n")
    rng = np.random.default_rng(0)
    n = 400
    df = pd.DataFrame({"id": np.arange(n), "a": rng.normal(size=n), "b": rng.normal(size=n)})
    df["target"] = (df["a"] + 0.5 * rng.normal(size=n) > 0).astype(int)
    df.iloc[:300].to_csv(root / "train.csv", index=False)
    df.iloc[300:].drop(columns="target").to_csv(root / "test.csv", index=False)
    spec = {"name": "steps-e2e", "data": {"train": "train.csv", "test": "test.csv", "target": "target", "id": "id"},
            "cv": {"folds": 3, "seed": 0},
            "steps": [{"name": "a2", "fn": f"{name}.slow_a:add_a2"}, {"name": "a3", "fn": f"{name}.slow_b:add_a3"},
                      {"name": "sum", "fn": f"{name}.later:add_sum", "inputs": ["a2"]}],
            "models": [{"name": "logreg", "type": "sklearn", "estimator": "sklearn.linear_model.LogisticRegression"}]}
    (root / "spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return root / "spec.yaml"


def foldwise(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, FOLDWISE_CACHE=str(cwd / "cache"), RAY_DEDUP_LOGS="0")
    return subprocess.run([sys.executable, "-m", "foldwise", *args, "--no-progress"], cwd=cwd, capture_output=True,
                          text=True, env=env, timeout=600)


def test_steps_run_in_parallel_are_cached_and_an_edit_recomputes_only_its_descendants(tmp_path: Path) -> None:
    write_project(tmp_path)
    db = f"sqlite:///{tmp_path / 'mlflow.db'}"
    first = foldwise(tmp_path, "run", "spec.yaml", "--executor", "ray", "--tracking-uri", db, "--out", "out1")
    assert first.returncode == 0, first.stderr[-3000:]
    s1 = json.loads((tmp_path / "out1" / "summary.json").read_text())
    steps = s1["steps"]
    assert {n: f["columns"] for n, f in steps.items()} == {"a2": ["a2"], "a3": ["a3"], "sum": ["s"]}
    assert not any(f["cached"] for f in steps.values())
    a, b = steps["a2"], steps["a3"]
    assert a["started"] < b["ended"] and b["started"] < a["ended"], "two independent slow steps overlap in time"
    assert steps["sum"]["started"] >= a["ended"] - 0.05, "a step waits for its input"
    assert s1["rows"]["features"] == 5, "a, b and the three step columns"

    (tmp_path / "feats" / "slow_a.py").write_text(SLOW.format(fn="add_a2", col="a2", k=-2))
    second = foldwise(tmp_path, "run", "spec.yaml", "--executor", "ray", "--tracking-uri", db, "--out", "out2")
    assert second.returncode == 0, second.stderr[-3000:]
    s2 = json.loads((tmp_path / "out2" / "summary.json").read_text())
    assert {n: f["cached"] for n, f in s2["steps"].items()} == {"a2": False, "a3": True, "sum": False}, \
        "the edited step and its descendant recompute, nothing else"
    assert sum(not f["cached"] for f in s2["steps"].values()) == 2
    assert s2["models"]["logreg"]["cached"] == [False] * 3, "new columns: the folds refit"

    third = foldwise(tmp_path, "run", "spec.yaml", "--tracking-uri", db, "--out", "out3")
    s3 = json.loads((tmp_path / "out3" / "summary.json").read_text())
    assert third.returncode == 0 and all(f["cached"] for f in s3["steps"].values())
    assert s3["models"]["logreg"]["cached"] == [True] * 3 and s3["steps"]["sum"]["columns"] == ["s"]


@pytest.fixture
def project(tmp_path: Path, monkeypatch):
    name = f"feats_{tmp_path.name.replace('-', '_')}"
    spec = write_project(tmp_path, name)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    yield spec, name
    for m in [m for m in sys.modules if m.startswith(name)]:
        del sys.modules[m]


@pytest.mark.parametrize(("fn", "says"), [
    ("fewer", "step 'a3' returned 399 rows for 400; a frame step must keep every row"),
    ("no_id", "step 'a3' dropped the id column 'id'"),
    ("leak", "step 'a3' made column 'Target', named like the target 'target' (a likely leak)"),
])
def test_a_step_result_that_breaks_a_rule_is_bad_input_and_writes_nothing(project, fn, says) -> None:
    from foldwise.workflows.commands.run import run_cv

    spec, name = project
    root = spec.parent
    with pytest.raises(InputError, match=says.replace("(", r"\(").replace(")", r"\)")):
        run_cv(spec, overrides=[f"steps.1.fn={name}.bad:{fn}", "steps.0.params.seconds=0", "steps.1.params={}"],
               executor="local", out=root / "out", tracking_uri=f"sqlite:///{root / 'm.db'}", cache_root=str(root / "c"))
    assert not (root / "out").exists() and not (root / "m.db").exists() and not (root / "c").exists(), \
        "no outputs, no MLflow store, no cache entries"


def test_a_step_that_raises_fails_the_run_naming_it_and_keeps_completed_steps(project) -> None:
    from foldwise.workflows.commands.run import run_cv
    from foldwise.workflows.engine.cache import Cache

    spec, name = project
    root = spec.parent
    with pytest.raises(RunFailed, match=r"step a3: ValueError: the step broke"):
        run_cv(spec, overrides=[f"steps.1.fn={name}.bad:boom", "steps.0.params.seconds=0", "steps.1.params={}"],
               executor="local", out=root / "out", tracking_uri=f"sqlite:///{root / 'm.db'}", cache_root=str(root / "c"))
    assert [e.kind for e in Cache(str(root / "c")).entries()] == ["step"], "step a2, done before a3 raised, is cached"


def test_bad_step_specs_exit_2_with_one_line(project, capsys) -> None:
    from foldwise.workflows.cli.main import main

    spec, name = project
    root = spec.parent
    cases = {f"steps.0.fn={name}.slow_a:nope": f"spec key 'steps.0': '{name}.slow_a:nope': module '{name}.slow_a' has no 'nope'",
             f"steps.0.fn={name}.missing:f": "cannot be imported",
             "steps.0.params={zz: 1}": "does not accept params ['zz']",
             "steps.2.inputs=[zz]": "step 'sum': unknown input(s) zz (valid: raw, a2, a3)",
             "steps.0.inputs=[sum]": "steps form a cycle: a2 -> sum -> a2",
             "steps.1.name=a2": "duplicate step name(s) a2"}
    for override, says in cases.items():
        code = main(["run", str(spec), "--set", override, "--tracking-uri", f"sqlite:///{root / 'm.db'}"])
        lines = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and says in lines[0], (override, lines)
    assert not (root / "m.db").exists()


def test_target_encoding_inside_folds_scores_chance_while_fitted_on_all_rows_it_leaks(ray_cluster, tmp_path) -> None:
    """The leakage canary: random labels and a many-level categorical column."""
    from sklearn.preprocessing import TargetEncoder

    from foldwise.workflows.commands.run import run_cv

    rng = np.random.default_rng(7)
    n = 3000
    frame = pd.DataFrame({"city": [f"c{i}" for i in rng.integers(0, 300, n)], "noise": rng.normal(size=n),
                          "target": rng.integers(0, 2, n)})
    frame.to_csv(tmp_path / "random.csv", index=False)
    base = {"name": "te-canary", "data": {"train": str(tmp_path / "random.csv"), "target": "target"}, "metric": "roc_auc",
            "cv": {"scheme": "stratified", "folds": 5, "seed": 0},
            "models": [{"name": "logreg", "type": "sklearn", "estimator": "sklearn.linear_model.LogisticRegression",
                        "preprocess": ["target_encoding", "standard_scaler"]}]}
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    inside = run_cv(base, out=tmp_path / "inside", tracking_uri=uri, checks=False)
    assert abs(inside.cv_score - 0.5) <= 0.05, f"target encoding inside the folds: {inside.cv_score:.3f}"
    fitted = json.loads((tmp_path / "inside" / "summary.json").read_text())
    assert fitted["rows"]["features"] == 2

    leaky = frame.assign(city=TargetEncoder(target_type="binary").fit(frame[["city"]], frame["target"])
                         .transform(frame[["city"]])[:, 0])  # the same encoder fitted on all rows, before the folds
    leaky.to_csv(tmp_path / "leaky.csv", index=False)
    spec = base | {"data": {"train": str(tmp_path / "leaky.csv"), "target": "target"},
                   "models": [base["models"][0] | {"preprocess": ["standard_scaler"]}]}
    outside = run_cv(spec, out=tmp_path / "outside", tracking_uri=uri, checks=False)
    assert outside.cv_score > 0.65, f"fitted on all rows it sees each row's own label: {outside.cv_score:.3f}"


def test_check_sees_the_columns_steps_make(project) -> None:
    """A step numbering rows over train then test makes a column that separates them: check finds it."""
    from foldwise.workflows.commands.check import run_check

    spec, name = project
    root = spec.parent
    (root / name / "position.py").write_text("import numpy as np\n\ndef number_rows(df):\n"
                                             "    return df.assign(row_number=np.arange(len(df), dtype=float))\n")
    result = run_check(spec, overrides=[f"steps.1.fn={name}.position:number_rows", "steps.0.params.seconds=0",
                                        "steps.1.params={}"], executor="local", out=root / "check",
                       tracking_uri=f"sqlite:///{root / 'm.db'}", folds=3)
    assert result.summary["top_adversarial_features"][0] == "row_number"
    assert result.adversarial_auc > 0.95
    assert "row_number" in {d["feature"] for d in result.summary["drift"]}


def test_the_logged_model_replays_the_steps_and_fold_steps_on_new_rows(project) -> None:
    """The run's pyfunc takes the raw columns, runs the frame steps and each fold's fitted fold steps,
    and gives the run's own test predictions."""
    import mlflow

    from foldwise.workflows.commands.run import run_cv

    spec, _ = project
    root = spec.parent
    uri = f"sqlite:///{root / 'm.db'}"
    result = run_cv(spec, overrides=["steps.0.params.seconds=0", "steps.1.params.seconds=0",
                                     "models.0.preprocess=[standard_scaler, {step: pca, params: {n_components: 2}}]"],
                    executor="local", out=root / "out", tracking_uri=uri, cache_root=str(root / "c"))
    local = mlflow.artifacts.download_artifacts(run_id=result.run_id, artifact_path="model", tracking_uri=uri,
                                                dst_path=str(root / "model"))
    model = mlflow.pyfunc.load_model(local)
    predicted = np.asarray(model.predict(pd.read_csv(root / "test.csv")))
    written = pd.read_parquet(result.summary["outputs"]["test_predictions"])["ensemble"].to_numpy()
    assert predicted[:, 1] == pytest.approx(written, abs=1e-9)
