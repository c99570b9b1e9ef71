"""`foldwise ablate` end to end on the session's Ray and a real MLflow sqlite store.

One workspace per module: `foldwise run`, then an ablation that must reuse its baseline
(fits are counted by the adapter's own log, not by foldwise), then the same ablation
from scratch (--no-cache) that must prepare the data exactly once. Many assertions read
these three results.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from foldwise.workflows.cli.main import main
from foldwise.workflows.commands.ablate import run_ablation
from foldwise.workflows.commands.run import run_cv
from foldwise.workflows.errors import RunFailed
from tests.conftest import store_state

FOLDS = 4
GROUPS = {"strong": ["s*"], "weak": ["w1", "w2"], "noise": ["z*"]}


def fits(log: Path) -> int:
    return len(log.read_text().splitlines()) if log.exists() else 0


def make_spec(ws: Path, **changes) -> dict:
    spec = {
        "name": "ablate-test",
        "data": {"train": str(ws / "train.csv"), "target": "y"},
        "metric": "roc_auc",
        "cv": {"scheme": "stratified", "folds": FOLDS, "seed": 3},
        "features": {"groups": GROUPS},
        "models": [
            {"name": "a", "type": "tests.workflows_tests.adapters:SlowLogistic", "params": {"C": 1.0, "log": str(ws / "fits.log")}},
            {"name": "b", "type": "lightgbm", "params": {"n_estimators": 60, "learning_rate": 0.1, "num_leaves": 7,
                                                       "min_child_samples": 20}},
        ],
        "ensemble": {"method": "mean"},
    }
    spec.update(changes)
    return spec


@pytest.fixture(scope="module")
def ws(tmp_path_factory, ray_cluster) -> Path:
    """A strong group, a weak-but-real group and pure noise (and an id-free, test-free CSV)."""
    ws = tmp_path_factory.mktemp("ablate")
    rng = np.random.default_rng(11)
    n = 800
    X = rng.normal(size=(n, 9))
    signal = 1.0 * (X[:, 0] + X[:, 1]) + 0.5 * (X[:, 2] + X[:, 3])
    frame = pd.DataFrame(X, columns=["s1", "s2", "w1", "w2", "z1", "z2", "z3", "z4", "z5"])
    frame["y"] = (rng.uniform(size=n) < 1 / (1 + np.exp(-signal))).astype(int)
    frame.to_csv(ws / "train.csv", index=False)
    (ws / "spec.yaml").write_text(yaml.safe_dump(make_spec(ws)))
    return ws


def _kw(ws: Path, out: str) -> dict:
    return {"out": ws / out, "tracking_uri": f"sqlite:///{ws / 'mlflow.db'}", "cache_root": str(ws / "cache")}


@pytest.fixture(scope="module")
def runs(ws: Path) -> dict:
    """run -> ablate (baseline from the run's cache) -> ablate --no-cache, with the fits each one made."""
    log = ws / "fits.log"
    out: dict = {}
    out["run"] = run_cv(ws / "spec.yaml", **_kw(ws, "run")).summary
    out["fits_run"] = fits(log)
    out["ablate"] = run_ablation(ws / "spec.yaml", n_boot=500, **_kw(ws, "ablate"))
    out["fits_ablate"] = fits(log) - out["fits_run"]
    before = fits(log)
    out["fresh"] = run_ablation(ws / "spec.yaml", n_boot=500, no_cache=True, **_kw(ws, "fresh"))
    out["fits_fresh"] = fits(log) - before
    return out


def test_baseline_identical_to_the_run_is_reused_not_refitted(runs: dict) -> None:
    run, s = runs["run"], runs["ablate"].summary
    assert runs["fits_run"] == FOLDS
    assert runs["fits_ablate"] == 3 * FOLDS, "only the three variants of model a are fitted, never its baseline"
    assert s["baseline"]["cached"] is True
    assert s["baseline"]["models"]["a"]["cached"] == [True] * FOLDS == s["baseline"]["models"]["b"]["cached"]
    assert s["folds"]["hash"] == run["folds"]["hash"], "the same fold plan as foldwise run"
    for m in ("a", "b"):
        assert s["baseline"]["models"][m]["fold_scores"] == run["models"][m]["fold_scores"]
    assert s["baseline"]["fold_scores"] == run["ensemble"]["fold_scores"]
    assert s["baseline"]["cv_score"] == pytest.approx(run["ensemble"]["cv_score"])
    assert s["dag"]["fits"] == {"total": 4 * 2 * FOLDS, "cached": 2 * FOLDS}


def test_one_prepare_task_per_command(runs: dict) -> None:
    fresh, reused = runs["fresh"].summary["dag"]["nodes_run"], runs["ablate"].summary["dag"]["nodes_run"]
    assert runs["fits_fresh"] == 4 * FOLDS, "--no-cache refits the baseline too"
    assert fresh["prepare_data"] == 1 and "plan_folds" not in fresh, "the plan is made on the driver, not a task"
    assert fresh["train_fold"] == 4 * 2 * FOLDS, "every variant x model x fold in the one DAG"
    assert fresh["permutation_importance_fold"] == 2 * FOLDS
    # after `foldwise run` the prepared data and the plan come from the cache: no prepare task at all
    assert "prepare_data" not in reused and "plan_folds" not in reused
    assert reused["train_fold"] == 3 * 2 * FOLDS
    assert reused["blend_repeats"] == 3 and fresh["blend_repeats"] == 4, "the baseline's ensemble is the run's, from the cache"


def test_an_unchanged_rerun_fits_nothing_and_never_starts_ray(ws: Path, runs: dict) -> None:
    before = fits(ws / "fits.log")
    again = run_ablation(ws / "spec.yaml", n_boot=500, executor="ray", **_kw(ws, "again")).summary
    assert fits(ws / "fits.log") == before and again["startup_seconds"] == 0.0
    assert set(again["dag"]["nodes_run"]) == {"fold_bootstrap"}, "only the statistics are recomputed, in-process"
    assert again["dag"]["importance_task_seconds"] == 0.0, "importance read from the cache"
    assert again["permutation_importance"] == runs["ablate"].summary["permutation_importance"]
    first = runs["ablate"].summary["variants"]
    assert [(v["dropped"], v["delta"], v["delta_ci"], v["verdict"]) for v in again["variants"]] == [
        (v["dropped"], v["delta"], v["delta_ci"], v["verdict"]) for v in first], "same seed, same intervals"
    # each model's intervals: computed in this process here, by tasks started on the fits' handles before
    models = [{m: (b["delta"], b["delta_ci"], b["verdict"]) for m, b in v["models"].items()} for v in again["variants"]]
    assert models == [{m: (b["delta"], b["delta_ci"], b["verdict"]) for m, b in v["models"].items()} for v in first]
    assert runs["ablate"].summary["dag"]["nodes_run"]["fold_bootstrap_of_fits"] == 2 * FOLDS
    assert runs["ablate"].summary["dag"]["nodes_run"]["fold_bootstrap"] == FOLDS, "the ensemble's, after the blends"


def test_strong_and_weak_help_noise_does_not(runs: dict) -> None:
    for key in ("ablate", "fresh"):
        variants = {v["dropped"]: v for v in runs[key].summary["variants"]}
        assert variants["strong"]["verdict"] == "helps" and variants["weak"]["verdict"] == "helps"
        assert variants["noise"]["verdict"] in ("neutral", "hurts")
        assert variants["strong"]["delta"] < variants["weak"]["delta"] < 0
    a = {v["dropped"]: v["fold_scores"] for v in runs["ablate"].summary["variants"]}
    b = {v["dropped"]: v["fold_scores"] for v in runs["fresh"].summary["variants"]}
    for g in a:
        np.testing.assert_allclose(a[g], b[g], rtol=0, atol=1e-12, err_msg="refitting reproduces the cached folds")


def test_summary_contract(runs: dict) -> None:
    res = runs["ablate"]
    s = json.loads((res.out_dir / "summary.json").read_text())
    assert s["command"] == "ablate" and s["run_id"] == res.run_id and s["greater_is_better"] is True
    assert set(s["baseline"]) >= {"cv_score", "fold_scores"} and len(s["baseline"]["fold_scores"]) == FOLDS
    assert [v["dropped"] for v in s["variants"]] == ["strong", "weak", "noise"], "sorted by worth"
    assert s["variants"][0]["columns"] == ["s1", "s2"] and s["variants"][2]["columns"] == ["z1", "z2", "z3", "z4", "z5"]
    for v in s["variants"]:
        assert set(v) >= {"dropped", "cv_score", "fold_scores", "delta", "delta_ci", "verdict"}
        assert v["delta"] == pytest.approx(v["cv_score"] - s["baseline"]["cv_score"])
        np.testing.assert_allclose(v["fold_deltas"], np.subtract(v["fold_scores"], s["baseline"]["fold_scores"]))
        lo, hi = v["delta_ci"]
        assert lo <= hi and v["verdict"] == ("helps" if hi < 0 else "hurts" if lo > 0 else "neutral")
        assert set(v["models"]) == {"a", "b"} and v["models"]["a"]["verdict"] in ("helps", "hurts", "neutral")
        assert v["fit_seconds_saved"] == pytest.approx(s["baseline"]["fit_seconds"] - v["fit_seconds"])
        assert "fit_time_share" in v  # kept for readers of older summaries
    assert "bootstrap" in s["interval_method"] and s["bootstrap_resamples"] == 500
    assert s["removal_candidates"] == ([] if s["variants"][2]["verdict"] == "helps" else ["noise"])


def test_permutation_importance_is_reported_apart(runs: dict) -> None:
    s = runs["ablate"].summary
    imp = s["permutation_importance"]
    assert "weaker" in imp["measure"] and imp["repeats"] == 3
    for m in ("a", "b"):
        assert imp["models"][m]["strong"]["mean"] > imp["models"][m]["noise"]["mean"]
        assert imp["models"][m]["strong"]["mean"] > 0.05
    # computed on the baseline models the run had fitted: no fit beyond the variants' (counted above)
    assert s["dag"]["nodes_run"]["permutation_importance_fold"] == 2 * FOLDS
    # --no-cache submits each importance task with its baseline fit's handle (it runs once that fit ends);
    # after `foldwise run` it reads the cached fold: the same fitted models, so the same importance
    fresh = runs["fresh"].summary
    assert fresh["dag"]["nodes_run"]["permutation_importance_fold"] == 2 * FOLDS
    for m in ("a", "b"):
        for g, v in imp["models"][m].items():
            assert fresh["permutation_importance"]["models"][m][g] == pytest.approx(v, abs=1e-12), (m, g)
    assert s["dag"]["importance_task_seconds"] > 0 and fresh["dag"]["importance_task_seconds"] > 0
    assert {"statistics", "importance_after_statistics", "statistics_and_importance"} <= set(fresh["phase_seconds"])


def test_report_and_chart(runs: dict) -> None:
    res = runs["ablate"]
    md = (res.out_dir / "ablation.md").read_text()
    ranked = [line.split("|")[2].strip() for line in md.splitlines() if line.startswith("| ") and "**" in line]
    assert ranked == ["strong", "weak", "noise"]
    assert "## Candidates to remove" in md and "Permutation importance (a different, weaker measure)" in md
    assert "`s1`" in md and "fit s saved" in md and "fit-time share" not in md
    png = (res.out_dir / "ablation.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_mlflow_parent_and_a_child_per_variant(ws: Path, runs: dict) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{ws / 'mlflow.db'}")
    run_id = runs["ablate"].run_id
    parent = client.get_run(run_id)
    assert parent.data.tags["foldwise.command"] == "ablate" and parent.info.status == "FINISHED"
    assert parent.data.metrics["cv_score"] == pytest.approx(runs["ablate"].summary["baseline"]["cv_score"])
    assert {"ablation.md", "ablation.png", "summary.json", "spec.yaml"} <= {a.path for a in client.list_artifacts(run_id)}
    kids = client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{run_id}'")
    assert sorted(k.data.tags["foldwise.ablation.variant"] for k in kids) == ["baseline", "noise", "strong", "weak"]
    dropped = {k.data.tags.get("foldwise.ablation.dropped"): k for k in kids}
    assert set(dropped) == {None, "strong", "weak", "noise"}
    strong = dropped["strong"]
    assert strong.info.status == "FINISHED" and strong.data.tags["foldwise.ablation.verdict"] == "helps"
    assert strong.data.metrics["delta"] < 0 and strong.data.metrics["delta_hi"] < 0
    assert [m.step for m in client.get_metric_history(strong.info.run_id, "fold_score")] == list(range(FOLDS))
    assert len(client.get_metric_history(strong.info.run_id, "fold_score.a")) == FOLDS


def test_cli_subset_of_groups_and_models_fits_nothing_new(ws: Path, runs: dict, capsys) -> None:
    before = fits(ws / "fits.log")
    code = main(["ablate", str(ws / "spec.yaml"), "--groups", "noise,strong", "--models", "a", "--no-progress",
                 "--bootstrap", "200", "--out", str(ws / "cli"), "--tracking-uri", f"sqlite:///{ws / 'mlflow.db'}",
                 "--cache", str(ws / "cache")])
    assert code == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last == str(ws / "cli" / "summary.json")
    s = json.loads(Path(last).read_text())
    assert s["models"] == ["a"] and {v["dropped"] for v in s["variants"]} == {"noise", "strong"}
    assert fits(ws / "fits.log") == before, "every fold of this subset was computed by earlier commands"


def test_default_outputs_go_under_foldwise_outputs(ws: Path, runs: dict, tmp_path: Path, monkeypatch, capsys) -> None:
    """Without --out, the report lands in $FOLDWISE_OUTPUTS/<spec name>/<run id>/, as `foldwise run`'s do
    (a cluster's jobs point it at a shared folder)."""
    monkeypatch.setenv("FOLDWISE_OUTPUTS", str(tmp_path / "shared"))
    code = main(["ablate", str(ws / "spec.yaml"), "--groups", "noise", "--models", "a", "--no-progress",
                 "--bootstrap", "200", "--tracking-uri", f"sqlite:///{ws / 'mlflow.db'}", "--cache", str(ws / "cache")])
    assert code == 0
    last = Path(capsys.readouterr().out.strip().splitlines()[-1])
    s = json.loads(last.read_text())
    assert last == tmp_path / "shared" / "ablate-test" / s["run_id"] / "summary.json"
    assert Path(s["outputs"]["report"]).parent == last.parent


@pytest.mark.parametrize("args,groups,message", [
    ([], {"strong": ["s*"], "typo": ["zz*"]}, "features.groups.typo: pattern 'zz*' matches no feature column"),
    ([], {"t": ["y"]}, "'y' is the target, not a feature"),
    (["--groups", "strong,nosuch"], GROUPS, "--groups: unknown group 'nosuch'"),
    (["--models", "c"], GROUPS, "--models: unknown model 'c' (models: a, b)"),
    (["--bootstrap", "5"], GROUPS, "--bootstrap: at least 100"),
])
def test_bad_input_exits_2_and_logs_nothing(ws: Path, capsys, args: list[str], groups: dict, message: str) -> None:
    spec_path = ws / "bad.yaml"
    spec_path.write_text(yaml.safe_dump(make_spec(ws, features={"groups": groups})))
    db = ws / "mlflow.db"
    state, before = store_state(db), fits(ws / "fits.log")
    code = main(["ablate", str(spec_path), "--no-progress", "--out", str(ws / "bad-out"), "--tracking-uri",
                 f"sqlite:///{db}", "--cache", str(ws / "cache"), *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert store_state(db) == state, "nothing logged"
    assert not (ws / "bad-out").exists() and fits(ws / "fits.log") == before


@pytest.mark.parametrize("executor", ["local", "ray"])  # on Ray, importance tasks wait on the failing fits' handles
def test_a_failing_fit_marks_the_runs_failed(ws: Path, executor: str) -> None:
    from mlflow.tracking import MlflowClient

    spec = make_spec(ws, name="ablate-fail")
    spec["models"] = [{"name": "x", "type": "tests.workflows_tests.adapters:ExplodesOnFold"}]
    uri = f"sqlite:///{ws / 'mlflow.db'}"
    with pytest.raises(RunFailed, match="matrix is singular") as info:
        run_ablation(spec, executor=executor, out=ws / f"fail-{executor}", tracking_uri=uri, cache_root=str(ws / "cache"))
    client = MlflowClient(uri)
    parent = client.get_run(info.value.run_id)
    assert parent.info.status == "FAILED"
    kids = client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert len(kids) == 4 and {k.info.status for k in kids} == {"FAILED"}
