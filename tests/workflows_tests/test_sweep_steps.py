"""`foldwise sweep` over frame-step params (`search.space` keys `steps.NAME.PARAM`), real Ray and MLflow."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from foldwise.workflows.cli.main import main

FN = "tests.workflows_tests.sweep_step_features:interaction"
LEVELS = [0.1, 0.3, 0.7, 0.9]  # the step's column helps only above 0.5


def write_project(root: Path, log: Path, **search) -> Path:
    """The label is the sign of a * b: a linear model needs the step's `ab` column to see it."""
    rng = np.random.default_rng(0)
    n = 300
    df = pd.DataFrame({"id": np.arange(n), "a": rng.normal(size=n), "b": rng.normal(size=n)})
    df["target"] = (df["a"] * df["b"] > 0).astype(int)
    df.iloc[:240].to_csv(root / "train.csv", index=False)
    df.iloc[240:].drop(columns="target").to_csv(root / "test.csv", index=False)
    spec = {"name": "sweep-steps", "task": "binary", "metric": "roc_auc",
            "data": {"train": str(root / "train.csv"), "test": str(root / "test.csv"), "target": "target", "id": "id"},
            "cv": {"scheme": "stratified", "folds": 3, "seed": 0},
            "steps": [{"name": "inter", "fn": FN, "params": {"level": 0.1, "log": str(log)}}],
            "models": [{"name": "lr", "type": "sklearn", "estimator": "sklearn.linear_model.LogisticRegression"}],
            "search": {"model": "lr", "trials": 8, "pruner": "none", "sampler": "random", "refit": True,
                       "space": {"steps.inter.level": {"categorical": LEVELS}, "C": {"loguniform": [0.1, 10.0]}},
                       **search}}
    path = root / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def swept(ray_cluster, tmp_path_factory):
    from foldwise.workflows.commands.sweep import run_sweep

    d = tmp_path_factory.mktemp("sweep-steps")
    log = d / "step_calls.log"
    uri = f"sqlite:///{d / 'mlflow.db'}"
    result = run_sweep(write_project(d, log), out=d / "out", tracking_uri=uri, storage=str(d / "store"),
                       cache_root=str(d / "cache"), concurrency=2)
    return result, d, uri, log


def _trials(uri: str, parent: str) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_run(parent).info.experiment_id
    runs = client.search_runs([exp], f"tags.mlflow.parentRunId = '{parent}'", max_results=100)
    return [r for r in runs if "foldwise.trial_id" in r.data.tags]


def test_the_sweep_finds_the_step_param_region_where_the_column_helps(swept) -> None:
    result, d, uri, _ = swept
    summary = json.loads((d / "out" / "summary.json").read_text())
    best = summary["best"]
    assert best["params"]["steps.inter.level"] > 0.5 and best["cv_score"] > 0.9, best
    runs = _trials(uri, result.run_id)
    assert len(runs) == 8
    by_level = {}
    for r in runs:
        assert "steps.inter.level" in r.data.params and "C" in r.data.params, "MLflow trial params carry the step key"
        by_level.setdefault(float(r.data.params["steps.inter.level"]), []).append(r.data.metrics["cv_score"])
    assert {lv for lv in by_level if lv > 0.5} and {lv for lv in by_level if lv < 0.5}, by_level
    for level, scores in by_level.items():  # the score truly depends on the step param
        assert (min(scores) > 0.9) if level > 0.5 else (max(scores) < 0.7), (level, scores)


def test_equal_step_params_compute_the_step_once_and_the_refit_finds_it_cached(swept) -> None:
    result, d, uri, log = swept
    runs = _trials(uri, result.run_id)
    levels = [float(r.data.params["steps.inter.level"]) for r in runs]
    calls = Counter(float(x) for x in log.read_text().split())
    assert len(levels) > len(set(levels)), "some trials share step params (8 trials over 4 levels)"
    assert set(calls) == set(levels) and set(calls.values()) == {1}, \
        f"each distinct level computed exactly once (calls {dict(calls)}, trial levels {sorted(levels)})"
    summary = json.loads((d / "out" / "summary.json").read_text())
    refit = json.loads((d / "out" / "refit" / "summary.json").read_text())
    assert refit["steps"]["inter"]["cached"] is True, "the refit (a `foldwise run`) hits the sweep's step node"
    assert summary["refit"]["params"]["steps.inter.level"] == summary["best"]["params"]["steps.inter.level"]
    assert summary["refit"]["cv_score"] == pytest.approx(summary["best"]["cv_score"], abs=1e-9), \
        "the refit runs the best trial's step params and model params"


@pytest.mark.parametrize(("key", "says"), [
    ("steps.intr.level", "search.space.steps.intr.level: unknown step 'intr' (steps: inter)"),
    ("steps.inter.depth", "search.space.steps.inter.depth: step 'inter': "),
    ("steps.inter", "search.space.steps.inter: a frame step's param is written steps.STEP.PARAM (steps: inter)"),
])
def test_a_bad_step_key_exits_2_naming_what_is_valid(key: str, says: str, tmp_path: Path, capsys) -> None:
    path = write_project(tmp_path, tmp_path / "calls.log", space={key: {"uniform": [0.0, 1.0]}})
    db, out, store = tmp_path / "m.db", tmp_path / "out", tmp_path / "store"
    code = main(["sweep", str(path), "--tracking-uri", f"sqlite:///{db}", "--out", str(out), "--storage", str(store),
                 "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and says in err, err
    if key == "steps.inter.depth":
        assert "it takes: level, log" in err, err
    assert not db.exists() and not out.exists() and not store.exists() and not (tmp_path / "calls.log").exists()


def test_step_keys_are_sampled_in_every_models_trials_and_start_from_the_specs_values(tmp_path: Path) -> None:
    """With search.models, a `steps.` key belongs to no model: each model's subspace and baseline hold it,
    and a trial's model params never receive it."""
    from foldwise.workflows.commands.sweep.plan import plan_sweep
    from foldwise.workflows.engine.tune import TrialInputs, trial_model
    from foldwise.workflows.pipeline.spec import load_spec
    from foldwise.workflows.pipeline.sweep_frames import with_step_params

    raw = yaml.safe_load(write_project(tmp_path, tmp_path / "calls.log").read_text())
    raw["models"].append({"name": "lr2", "type": "sklearn", "estimator": "sklearn.linear_model.LogisticRegression",
                          "params": {"C": 2.0}})
    raw["search"] = {"models": ["lr", "lr2"], "space": {"steps.inter.level": {"uniform": [0.0, 1.0]},
                                                          "lr2.C": {"loguniform": [0.1, 10.0]}}}
    spec = load_spec(raw)
    plan = plan_sweep(spec)
    assert plan.step_keys == ("steps.inter.level",)
    subspaces = dict(plan.search_space().per_model)
    assert [k for k, _ in subspaces["lr"]] == ["steps.inter.level"]
    assert [k for k, _ in subspaces["lr2"]] == ["steps.inter.level", "lr2.C"]
    assert plan.baselines == ({"model": "lr", "steps.inter.level": 0.1},
                              {"model": "lr2", "steps.inter.level": 0.1, "lr2.C": 2.0})
    one = plan_sweep(load_spec({**raw, "search": {"model": "lr", "space": {"steps.inter.level": {"uniform": [0.0, 1.0]},
                                                                          "C": {"loguniform": [0.1, 10.0]}}}}))
    inputs = TrialInputs(data=None, plan=None, model=one.model, metric="roc_auc", seed=0, n_folds=3,
                         parallel_folds=False, bundles=1, step_keys=one.step_keys)
    assert trial_model({"steps.inter.level": 0.7, "C": 3.0}, inputs).params == {**one.model.params, "C": 3.0}
    stepped = with_step_params(spec, {"steps.inter.level": 0.7, "lr2.C": 3.0})
    assert stepped.steps[0].params == {"level": 0.7, "log": str(tmp_path / "calls.log")}
    assert stepped.models == spec.models, "only the step's params change"
