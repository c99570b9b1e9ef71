"""`foldwise sweep` on the session Ray cluster (real Tune, real Optuna, real MLflow sqlite in tmp).

One sweep (ASHA, a refit) feeds most assertions. Its space is half clearly bad: with 3 folds
of breast cancer a LightGBM leaf needs `min_child_samples` rows, and past ~190 no split fits
in a fold's 379 training rows, so the model is constant and scores AUC 0.5. A second, tiny
sweep runs the folds in the trials' placement groups with the median rule, with as many
trials as the cluster has CPUs. A third runs as a separate driver process (a subprocess
connected to the session cluster), is SIGKILLed mid-sweep and resumed.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from foldwise.workflows.cli.main import main
from tests.conftest import REPO, store_state

TRIALS = 8
GOOD_LIMIT = 150  # min_child_samples below this fits real trees on every fold
BAD_START = 200  # from here on no split fits: a constant model, AUC 0.5


def sweep_spec(**search) -> dict:
    return {"name": "sweep-test", "data": {"train": "sklearn:breast_cancer"}, "task": "binary", "metric": "roc_auc",
            "cv": {"scheme": "stratified", "folds": 3, "seed": 7},
            "models": [{"name": "lgbm", "type": "lightgbm", "params": {"n_estimators": 20, "learning_rate": 0.2}}],
            "search": {"model": "lgbm", "trials": TRIALS, "pruner": "asha", "refit": True,
                       "space": {"min_child_samples": {"int": [2, 400]}, "num_leaves": {"int": [4, 32], "log": True}},
                       **search}}


@pytest.fixture(scope="module")
def sweep(ray_cluster, tmp_path_factory):
    from foldwise.workflows.commands.sweep import run_sweep

    d = tmp_path_factory.mktemp("sweep")
    uri = f"sqlite:///{d / 'mlflow.db'}"
    result = run_sweep(sweep_spec(), concurrency=2, out=d / "out", tracking_uri=uri, storage=str(d / "store"))
    return result, uri


def trial_runs(uri: str, parent: str) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_run(parent).info.experiment_id
    runs = client.search_runs([exp], f"tags.mlflow.parentRunId = '{parent}'", max_results=1000)
    return [r for r in runs if "foldwise.trial_id" in r.data.tags]


def fold_scores(uri: str, run_id: str) -> dict[int, float]:
    from mlflow.tracking import MlflowClient

    return {m.step: m.value for m in MlflowClient(uri).get_metric_history(run_id, "fold_score")}


def test_summary_has_the_contract_keys(sweep) -> None:
    result, _ = sweep
    s = json.loads((result.out_dir / "summary.json").read_text())
    assert s["command"] == "sweep" and s["greater_is_better"] is True and s["model"] == "lgbm"
    assert {"run_id", "best", "trials", "wall_seconds"} <= set(s)
    assert {"params", "cv_score", "run_id"} <= set(s["best"])
    assert {"total", "completed", "pruned", "failed"} <= set(s["trials"])
    assert set(s["best"]["params"]) == {"min_child_samples", "num_leaves"}
    assert s["best"]["cv_score"] == pytest.approx(np.mean(s["best"]["fold_scores"]))


def test_counts_add_up(sweep) -> None:
    result, uri = sweep
    c = result.summary["trials"]
    assert c["total"] == TRIALS == c["completed"] + c["pruned"] + c["failed"] + c["stopped"]
    assert c["interrupted"] == 0 and c["stopped"] == 0
    runs = trial_runs(uri, result.run_id)
    assert len(runs) == TRIALS, "one child run per trial"
    assert len({r.data.tags["foldwise.trial_id"] for r in runs}) == TRIALS
    states = [r.data.tags["foldwise.state"] for r in runs]
    assert {s: states.count(s) for s in set(states)} == {k: v for k, v in c.items()
                                                         if k in ("completed", "pruned", "failed") and v}
    assert all(r.info.status == "FINISHED" for r in runs), "completed and pruned trials end FINISHED, never RUNNING"
    assert len(pd.read_csv(result.summary["outputs"]["trials"])) == TRIALS


def test_every_trial_run_has_its_params_and_folds(sweep) -> None:
    result, uri = sweep
    by_run = {o.run_id: o for o in result.outcomes}
    for run in trial_runs(uri, result.run_id):
        params = run.data.params
        assert set(params) == {"min_child_samples", "num_leaves"}, "params are exactly the sampled hyperparameters"
        assert 2 <= int(params["min_child_samples"]) <= 400 and 4 <= int(params["num_leaves"]) <= 32
        outcome = by_run[run.info.run_id]
        assert {k: str(v) for k, v in outcome.params.items()} == params
        folds = fold_scores(uri, run.info.run_id)
        assert folds == pytest.approx(outcome.fold_scores) and len(folds) == run.data.metrics["folds_done"]
        assert run.data.tags["folds_hash"] == result.summary["folds"]["hash"]
        if run.data.tags["foldwise.state"] == "completed":
            assert sorted(folds) == [0, 1, 2]
            assert run.data.metrics["cv_score"] == pytest.approx(np.mean(list(folds.values())))
        else:
            assert len(folds) < 3 and "cv_score" not in run.data.metrics, "a pruned trial has no full cv_score"


def test_pruning_cuts_the_clearly_bad_half(sweep) -> None:
    result, _ = sweep
    outcomes = result.outcomes
    bad = [o for o in outcomes if o.params["min_child_samples"] >= BAD_START]
    good = [o for o in outcomes if o.params["min_child_samples"] < GOOD_LIMIT]
    assert bad and good, "the seeded sampler drew from both halves"
    for o in bad:  # the premise: the bad half really is a constant model
        assert list(o.fold_scores.values())[0] == pytest.approx(0.5)
    pruned_bad = [o for o in bad if o.state == "pruned"]
    assert pruned_bad, "ASHA stops the constant models after their first fold"
    assert all(o.folds_done == 1 for o in pruned_bad)
    assert result.summary["trials"]["pruned"] >= len(pruned_bad)
    best = result.summary["best"]
    assert best["params"]["min_child_samples"] < GOOD_LIMIT and best["cv_score"] > 0.97


def test_the_sampler_is_optunas_tpe_seeded_with_the_spec_seed(sweep) -> None:
    """Fewer trials than TPE's startup trials: the draws are the seeded sampler's, in order."""
    import optuna

    from foldwise.workflows.pipeline.search_space import parse_space, to_optuna

    result, _ = sweep
    space = {d.name: to_optuna(d) for d in parse_space(sweep_spec()["search"]["space"])}
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=7, constant_liar=True))
    expected = [study.ask(fixed_distributions=space).params for _ in range(TRIALS)]
    drawn = [o.params for o in sorted(result.outcomes, key=lambda o: o.number)]
    assert drawn == expected


def test_refit_is_the_full_pipeline_on_the_same_folds(sweep) -> None:
    """The refit (a `foldwise run` child run) reproduces the best trial's fold scores exactly."""
    from mlflow.tracking import MlflowClient

    result, uri = sweep
    refit = result.summary["refit"]
    best = result.summary["best"]
    assert refit["params"] == best["params"]
    summary = json.loads((Path(refit["out_dir"]) / "summary.json").read_text())
    assert summary["folds"]["hash"] == result.summary["folds"]["hash"]
    np.testing.assert_allclose(summary["models"]["lgbm"]["fold_scores"], best["fold_scores"], rtol=0, atol=1e-12)
    oof = pd.read_parquet(summary["outputs"]["oof"])
    assert len(oof) == 569 and oof["lgbm"].notna().all()
    client = MlflowClient(uri)
    run = client.get_run(refit["run_id"])
    assert run.data.tags["mlflow.parentRunId"] == result.run_id and run.info.status == "FINISHED"
    assert run.data.tags["foldwise.refit_of"] == result.run_id


def test_parent_run_holds_the_plots_and_the_best(sweep) -> None:
    from mlflow.tracking import MlflowClient

    result, uri = sweep
    client = MlflowClient(uri)
    parent = client.get_run(result.run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["foldwise.command"] == "sweep"
    assert parent.data.metrics["cv_score"] == pytest.approx(result.summary["best"]["cv_score"])
    assert parent.data.params["search.space.min_child_samples.int"] == "[2, 400]"
    artifacts = {a.path for a in client.list_artifacts(result.run_id)}
    assert {"summary.json", "trials.csv", "spec.yaml", "plots"} <= artifacts
    plots = {a.path for a in client.list_artifacts(result.run_id, "plots")}
    written, skipped = result.summary["outputs"]["plots"], result.summary["outputs"]["plots_skipped"]
    assert plots == {f"plots/{name}.png" for name in written}
    assert set(written) | set(skipped) == {"optimization_history", "param_importances", "parallel_coordinate"}
    assert {"optimization_history", "parallel_coordinate"} <= set(written)
    if result.summary["trials"]["completed"] < 2:  # ASHA may leave one: importances need two (tested below)
        assert skipped == {"param_importances": "needs at least two completed trials"}


def test_plots_and_importances_from_trial_records(tmp_path: Path) -> None:
    """Optuna's evaluator and plots on the sweep's own records: completed trials only, pruned and failed kept apart."""
    from PIL import Image

    from foldwise.tasks.sweep_report import TrialOutcome, importances, study_of, write_plots
    from foldwise.workflows.pipeline.search_space import parse_space, to_optuna

    space = {d.name: to_optuna(d) for d in parse_space(sweep_spec()["search"]["space"])}
    rng = np.random.default_rng(0)
    outcomes = []
    for i in range(12):
        mcs, leaves = int(rng.integers(2, 400)), int(rng.integers(4, 33))
        score = 0.5 if mcs >= BAD_START else 0.99 - leaves / 1000
        state = "pruned" if i % 4 == 3 else ("failed" if i == 5 else "completed")
        folds = {0: score} if state == "pruned" else ({} if state == "failed" else {0: score, 1: score, 2: score})
        outcomes.append(TrialOutcome(number=i, trial_id=f"t{i}", run_id=None,
                                     params={"min_child_samples": mcs, "num_leaves": leaves}, state=state, fold_scores=folds))
    study = study_of(outcomes, space)
    assert [t.state.name for t in study.trials].count("COMPLETE") == 8 and len(study.trials) == 12
    imp = importances(study, seed=0)
    assert set(imp) == {"min_child_samples", "num_leaves"} and sum(imp.values()) == pytest.approx(1.0)
    assert imp["min_child_samples"] > imp["num_leaves"], "the param that decides 0.5 vs 0.99 matters most"
    written, skipped = write_plots(study, tmp_path, seed=0, metric="roc_auc")
    assert skipped == {} and set(written) == {"optimization_history", "param_importances", "parallel_coordinate"}
    for path in written.values():
        assert Image.open(path).size[0] > 500


def test_parallel_folds_in_placement_groups_with_the_median_rule(sweep, tmp_path: Path) -> None:
    """As many trials as CPUs, each running its folds as tasks: only the reserved bundles avoid a deadlock.

    Same spec and seed as the main sweep, so the first trial has the same params; its fold
    scores must equal the sequential ones exactly.
    """
    from foldwise.workflows.commands.sweep import run_sweep

    main_result, _ = sweep
    spec = sweep_spec(parallel_folds=True, pruner="median", trials=3, refit=False)
    result = run_sweep(spec, concurrency=2, out=tmp_path / "out", tracking_uri=f"sqlite:///{tmp_path / 'm.db'}",
                       storage=str(tmp_path / "store"))
    assert result.summary["trials"]["total"] == 3 and result.summary["concurrency"] == 2
    first = min(result.outcomes, key=lambda o: o.number)
    main_first = min(main_result.outcomes, key=lambda o: o.number)
    assert first.params == main_first.params and first.state == main_first.state == "completed"
    assert first.fold_scores == main_first.fold_scores


def test_default_outputs_go_under_foldwise_outputs(ray_cluster, tmp_path: Path, monkeypatch) -> None:
    """Without `out`, the sweep's files land in $FOLDWISE_OUTPUTS/<spec name>/<parent run id>/, as
    `foldwise run`'s do (a cluster's jobs point it at a shared folder)."""
    from foldwise.workflows.commands.sweep import run_sweep

    monkeypatch.setenv("FOLDWISE_OUTPUTS", str(tmp_path / "shared"))
    result = run_sweep(sweep_spec(trials=2, refit=False), concurrency=2,
                       tracking_uri=f"sqlite:///{tmp_path / 'm.db'}", storage=str(tmp_path / "store"))
    summary = tmp_path / "shared" / "sweep-test" / result.run_id / "summary.json"
    assert summary.exists() and Path(result.out_dir) == summary.parent
    s = json.loads(summary.read_text())
    assert s["run_id"] == result.run_id and s["trials"]["total"] == 2
    assert Path(s["outputs"]["trials"]).parent == summary.parent



def test_first_trial_is_the_specs_own_params_and_the_best_is_no_worse(ray_cluster, tmp_path: Path, capsys) -> None:
    """Issue 23 item 4: the spec's own params (inside the space) run as trial 0, so a sweep cannot end worse."""
    from foldwise.workflows.cli.sweep import print_trials
    from foldwise.workflows.commands.sweep import run_sweep

    spec = sweep_spec(trials=4, refit=False)
    own = {"min_child_samples": 300, "num_leaves": 8}  # a constant model (AUC 0.5): ASHA would cut it at fold 1
    spec["models"][0]["params"].update(own)
    result = run_sweep(spec, concurrency=2, out=tmp_path / "out", tracking_uri=f"sqlite:///{tmp_path / 'm.db'}",
                       storage=str(tmp_path / "store"))
    first = min(result.outcomes, key=lambda o: o.number)
    assert first.number == 0 and first.params == own, "trial 0 runs exactly the spec's params"
    assert first.state == "completed", "the baseline trial is never pruned"
    summary = json.loads((result.out_dir / "summary.json").read_text())
    baseline = summary["baseline_trial"]
    assert baseline == {"number": 0, "params": own, "state": "completed", "cv_score": pytest.approx(first.cv_score),
                        "run_id": first.run_id}
    assert summary["baseline_skipped"] == {}
    assert result.summary["best"]["cv_score"] >= baseline["cv_score"]
    print_trials(result)
    assert "baseline: trial 0" in capsys.readouterr().out


def test_baseline_point_keeps_the_params_inside_the_space() -> None:
    """Params outside the space, or left to the model's default, are not enqueued: the summary says which and why."""
    from foldwise.workflows.commands.sweep.plan import plan_sweep
    from foldwise.workflows.pipeline.spec import load_spec

    spec = sweep_spec(space={"min_child_samples": {"int": [2, 400]}, "num_leaves": {"int": [4, 32], "log": True},
                             "learning_rate": {"loguniform": [0.01, 0.1]},
                             "boosting_type": {"categorical": ["gbdt", "dart"]},
                             "subsample": {"uniform": [0.5, 1.0], "step": 0.1}})
    spec["models"][0]["params"].update({"min_child_samples": 20, "boosting_type": "goss", "subsample": 0.75})
    plan = plan_sweep(load_spec(spec))
    assert plan.baseline == {"min_child_samples": 20}
    assert set(plan.baseline_skipped) == {"num_leaves", "learning_rate", "boosting_type", "subsample"}
    assert "not in the model's params" in plan.baseline_skipped["num_leaves"]
    assert "outside" in plan.baseline_skipped["learning_rate"] and "0.2" in plan.baseline_skipped["learning_rate"]
    assert "outside" in plan.baseline_skipped["boosting_type"] and "outside" in plan.baseline_skipped["subsample"]
    assert plan_sweep(load_spec(sweep_spec())).baseline == {}, "nothing to enqueue: the sweep is unchanged"



@pytest.mark.parametrize("pruner", ["asha", "median"])
def test_the_pruners_record_the_baseline_trial_but_never_stop_it(pruner: str) -> None:
    """Trial 0 (Tune's tag "1_...") scores worst at every fold: recorded in the rungs, never stopped."""
    from foldwise.workflows.engine.tune import FOLDS_DONE, SCORE, make_scheduler

    class Trial:
        def __init__(self, i: int) -> None:
            self.trial_id, self.experiment_tag = f"t{i}", f"{i + 1}_x=1"

    def decisions(spare: bool) -> list[str]:
        scheduler = make_scheduler(pruner, 3, spare_baselines=1 if spare else 0)
        scheduler.set_search_properties(SCORE, "max")
        trials = [Trial(i) for i in range(5)]
        for t in trials:
            scheduler.on_trial_add(None, t)
        out = []
        for fold in (1, 2):
            for t in trials[1:]:
                scheduler.on_trial_result(None, t, {FOLDS_DONE: fold, SCORE: 0.9 + int(t.trial_id[1:]) / 100})
            out.append(scheduler.on_trial_result(None, trials[0], {FOLDS_DONE: fold, SCORE: 0.5}))
            if out[-1] == "STOP":  # a stopped trial reports no more
                break
        return out

    assert "STOP" in decisions(spare=False), "the premise: an ordinary trial this bad is stopped"
    assert decisions(spare=True) == ["CONTINUE", "CONTINUE"]


BAD_SPACES = {
    "unknown distribution": ({"space": {"num_leaves": {"normal": [4, 32]}}}, [],
                             "spec key 'search.space.num_leaves': unknown distribution or option 'normal'"),
    "low above high": ({"space": {"learning_rate": {"loguniform": [0.3, 0.01]}}}, [],
                       "spec key 'search.space.learning_rate': loguniform low 0.3 is greater than high 0.01"),
    "empty space": ({"space": {}}, [], "spec key 'search.space': is empty"),
    "model not in models": ({"model": "xgb"}, [], "search.model: 'xgb' is not one of the models (lgbm)"),
    "param the estimator does not take": ({"space": {"num_leafs": {"int": [4, 32]}}}, [],
                                          "search.space.num_leafs: lightgbm has no parameter 'num_leafs'"),
    "sklearn param": (None, [], "search.space.gamma: estimator sklearn.linear_model.LogisticRegression has no parameter 'gamma'"),
    "no search section": ("drop", [], "spec has no search section"),
    "zero trials": ({}, ["--trials", "0"], "--trials must be at least 1"),
    "resume with nothing to resume": ({}, ["--resume"], "--resume: no unfinished sweep of spec 'sweep-test'"),
}


@pytest.mark.parametrize("case", sorted(BAD_SPACES))
def test_bad_space_exits_2_and_logs_nothing(case: str, tmp_path: Path, capsys) -> None:
    change, flags, needle = BAD_SPACES[case]
    spec = sweep_spec()
    if change == "drop":
        spec.pop("search")
    elif change is None:
        spec["models"] = [{"name": "lr", "type": "sklearn", "estimator": "sklearn.linear_model.LogisticRegression"}]
        spec["search"] = {"space": {"C": {"loguniform": [0.01, 10]}, "gamma": {"uniform": [0, 1]}}}
    else:
        spec["search"].update(change)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    db, out, store = tmp_path / "m.db", tmp_path / "out", tmp_path / "store"
    code = main(["sweep", str(path), "--tracking-uri", f"sqlite:///{db}", "--out", str(out), "--storage", str(store),
                 "--no-progress", *flags])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("foldwise: error: ") and err.count("\n") == 0 and "Traceback" not in err
    assert needle in err
    assert store_state(db) is None and not out.exists() and not store.exists(), "nothing logged, nothing written"


# --------------------------------------------------------------------------- resume after SIGKILL


RESUME_TRIALS = 10


def _trial_states(db: Path) -> dict[str, int]:
    rows = []
    try:
        with sqlite3.connect(db, timeout=5) as c:
            rows = c.execute("select t.value, r.status from tags t join runs r on r.run_uuid = t.run_uuid "
                             "where t.key = 'foldwise.state'").fetchall()
    except sqlite3.Error:
        pass
    return {"final": sum(s in ("completed", "pruned") for s, _ in rows), "running": sum(st == "RUNNING" for _, st in rows)}


def _saved_tune_trials(tune_path: Path) -> dict[str, str]:
    """Tune's own saved view of the trials (what a resume starts from): trial id -> status."""
    from foldwise.workflows.engine.tune import saved_trials

    try:
        return {t.trial_id: t.status for t in saved_trials(tune_path).values()}
    except (OSError, ValueError):  # a state file being written right now
        return {}


def test_resume_after_sigkill_continues_the_same_sweep(ray_cluster, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(200, 4)), columns=list("abcd"))
    frame["y"] = (frame.a + rng.normal(size=200) > 0).astype(int)
    frame.to_csv(tmp_path / "train.csv", index=False)
    spec = sweep_spec(trials=RESUME_TRIALS, pruner="asha", refit=False,
                      space={"C": {"loguniform": [0.01, 10.0]}})
    spec["name"] = "sweep-resume"
    spec["data"] = {"train": str(tmp_path / "train.csv"), "target": "y"}
    spec["models"] = [{"name": "slow", "type": "tests.workflows_tests.adapters:SlowLogistic",
                       "params": {"sleep": 0.7, "C": 1.0}}]  # C inside the space: trial 0 is the baseline
    spec["search"]["model"] = "slow"
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    db, store = tmp_path / "m.db", tmp_path / "store"
    address = ray_cluster.get_runtime_context().gcs_address
    exe = Path(sys.executable).with_name("foldwise")
    argv = [str(exe), "sweep", str(path), "--tracking-uri", f"sqlite:///{db}", "--storage", str(store),
            "--address", address, "--concurrency", "2", "--no-progress", "--out", str(tmp_path / "out")]
    env = os.environ | {"PYTHONPATH": str(REPO)}
    log = tmp_path / "driver.log"
    proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=log.open("w"))
    deadline = time.time() + 150
    chosen = None
    try:
        while time.time() < deadline and proc.poll() is None:
            states = _trial_states(db)
            if states["final"] >= 2 and states["running"] == 2:
                tune_path = next(store.glob("sweep-resume/*/tune"), None)
                saved = _saved_tune_trials(tune_path) if tune_path else {}
                running = [r for r in _running_trial_runs(db) if saved.get(r[1]) == "RUNNING"]
                if running:
                    chosen = running[0]
                    break
            time.sleep(0.1)
        assert proc.poll() is None, (f"the driver ended before it could be killed (last seen: {_trial_states(db)}): "
                                     f"{log.read_text()[-1500:]}")
        assert chosen is not None, "never saw two trials running with one of them in Tune's saved state"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    client = MlflowClient(f"sqlite:///{db}")
    exp = client.get_experiment_by_name("sweep-resume").experiment_id
    parent = client.search_runs([exp], "tags.`foldwise.command` = 'sweep'")[0]
    before = {r.info.run_id: r for r in trial_runs(f"sqlite:///{db}", parent.info.run_id)}
    ended_before = {r.data.tags["foldwise.trial_id"]: r.info.run_id for r in before.values()
                    if r.data.tags["foldwise.state"] in ("completed", "pruned")}
    cut = [r for r in before.values() if r.info.status == "RUNNING"]
    assert parent.info.status == "RUNNING" and len(ended_before) >= 2 and len(cut) == 2

    # Fault injection of the one race a kill can leave: the driver recorded a trial's end in
    # MLflow after Tune last saved its state (Tune still has it running). The resume must
    # keep that record and replay it to the searcher, not train the trial again.
    replay_run, replay_trial = chosen
    client.log_batch(replay_run, metrics=_metrics({"fold_score": [0.61, 0.62, 0.63], "folds_done": 3.0,
                                                   "running_score": 0.62, "cv_score": 0.62}))
    client.set_tag(replay_run, "foldwise.state", "completed")
    client.set_terminated(replay_run, "FINISHED")
    interrupted = next(r for r in cut if r.info.run_id != replay_run)

    resumed = subprocess.run([*argv, "--resume"], cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = json.loads(Path(resumed.stdout.strip().splitlines()[-1]).read_text())
    assert summary["run_id"] == parent.info.run_id, "re-attached to the same MLflow parent"
    assert summary["resumes"] == 1
    assert client.get_run(parent.info.run_id).info.status == "FINISHED"

    after = trial_runs(f"sqlite:///{db}", parent.info.run_id)
    final = [r for r in after if r.data.tags["foldwise.state"] in ("completed", "pruned", "failed")]
    assert len(final) == RESUME_TRIALS == summary["trials"]["total"], "ends with the requested total"
    assert len({r.data.tags["foldwise.trial_id"] for r in final}) == RESUME_TRIALS, "no trial has two ended runs"
    assert not [r for r in after if r.info.status == "RUNNING"], "no run left RUNNING"
    assert len([r for r in final if float(r.data.params["C"]) == 1.0]) == 1, "a resume does not enqueue the baseline again"
    assert summary["baseline_trial"]["number"] == 0 and summary["baseline_trial"]["params"] == {"C": 1.0}
    for trial_id, run_id in ended_before.items():  # no duplicate of what had ended
        assert [r.info.run_id for r in after if r.data.tags["foldwise.trial_id"] == trial_id] == [run_id]
    assert [r.info.run_id for r in after if r.data.tags["foldwise.trial_id"] == replay_trial] == [replay_run]
    assert fold_scores(f"sqlite:///{db}", replay_run) == {0: 0.61, 1: 0.62, 2: 0.63}
    # the pruner's state survives the kill: trials pruned before it stay pruned, and the restored
    # ASHA's rungs hold every ended trial of the whole sweep, not only those after the resume
    for run in before.values():
        if run.data.tags["foldwise.state"] == "pruned":
            assert client.get_run(run.info.run_id).data.tags["foldwise.state"] == "pruned"
    reached = {k: sum(len(fold_scores(f"sqlite:///{db}", r.info.run_id)) >= k for r in final) for k in (1, 2)}
    assert summary["pruner_rungs"] == {"1": reached[1], "2": reached[2]} and reached[1] == RESUME_TRIALS
    killed = client.get_run(interrupted.info.run_id)
    assert killed.info.status == "KILLED" and killed.data.tags["foldwise.state"] == "interrupted"
    assert summary["trials"]["interrupted"] >= 1


def _running_trial_runs(db: Path) -> list[tuple[str, str]]:
    """(run id, Tune trial id) of the trial runs still RUNNING, oldest first."""
    try:
        with sqlite3.connect(db, timeout=5) as c:
            return c.execute("select r.run_uuid, t.value from runs r join tags t on t.run_uuid = r.run_uuid "
                             "where t.key = 'foldwise.trial_id' and r.status = 'RUNNING' "
                             "order by r.start_time").fetchall()
    except sqlite3.Error:
        return []


def _metrics(values: dict) -> list:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    out = []
    for key, v in values.items():
        if isinstance(v, list):
            out += [Metric(key, x, now, i) for i, x in enumerate(v)]
        else:
            out.append(Metric(key, v, now, 0))
    return out
