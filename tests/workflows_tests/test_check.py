"""`foldwise check` end to end: real Ray (the session cluster), real MLflow sqlite in tmp.

Three real checks (a planted shift, identical distributions through the CLI, a new
version of train against an old one) share one MLflow store; every error case must exit
2 with one line naming the column and leave the store as it was.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from foldwise.workflows.cli.main import main
from tests.conftest import store_state

N_TRAIN, N_TEST = 3000, 1500
CONTRACT_KEYS = {"command", "run_id", "experiment", "errors", "warnings", "adversarial_auc",
                 "top_adversarial_features", "drift"}


def _frame(rng: np.random.Generator, n: int, start: int) -> pd.DataFrame:
    a = rng.normal(size=n)
    return pd.DataFrame({"id": np.arange(start, start + n), "a": a, "b": rng.normal(size=n), "c": rng.gamma(2.0, size=n),
                         "d": rng.normal(size=n), "plan": rng.choice(["basic", "plus", "pro"], size=n, p=[0.5, 0.3, 0.2]),
                         "y": (a + rng.normal(size=n) > 0).astype(int)})


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("check-data")
    rng = np.random.default_rng(3)
    train = _frame(rng, N_TRAIN, 0)
    test = _frame(rng, N_TEST, N_TRAIN).drop(columns="y")
    train.to_csv(d / "train.csv", index=False)
    test.to_csv(d / "test_same.csv", index=False)
    test.assign(d=test.d + 2.0).to_csv(d / "test_shift.csv", index=False)  # one feature shifted by 2 sd
    old = _frame(rng, N_TRAIN, 0)
    old.assign(b=old.b * 0.3 - 1.5, y=(old.a + rng.normal(size=N_TRAIN) > 1.0).astype(int)).to_csv(d / "old.csv", index=False)
    train.assign(leak=train.y * 2.0 + rng.normal(scale=0.1, size=N_TRAIN)).to_csv(d / "train_leak.csv", index=False)
    test.assign(d=test.d + 2.0, leak=rng.normal(size=N_TEST)).to_csv(d / "test_leak.csv", index=False)
    # error cases
    train.head(0).to_csv(d / "empty.csv", index=False)
    small = train.head(80)
    small.to_csv(d / "small.csv", index=False)
    small.assign(y=small.y.astype(float).where(small.index != 4)).to_csv(d / "nan_target.csv", index=False)
    small.assign(y=small.y.astype(float).where(small.index != 4, np.inf)).to_csv(d / "inf_target.csv", index=False)
    small.assign(y=1).to_csv(d / "const_target.csv", index=False)
    small.assign(y=3.5).to_csv(d / "const_regression.csv", index=False)
    small.assign(id=np.where(small.index == 7, 3, small.id)).to_csv(d / "dup_ids.csv", index=False)
    t = test.head(1200).copy()
    t.assign(id=np.where(t.index == 9, t.id.iloc[0], t.id)).to_csv(d / "test_dup_ids.csv", index=False)
    t.rename(columns={"b": "bb"}).to_csv(d / "test_renamed.csv", index=False)
    t.assign(b=t.b.astype(object).where(t.index != 1100, "unknown")).to_csv(d / "test_text_late.csv", index=False)
    t.drop(columns="id").to_csv(d / "test_no_id.csv", index=False)
    t.head(0).to_csv(d / "test_empty.csv", index=False)
    small.drop(columns="c").to_csv(d / "old_no_c.csv", index=False)
    return d


def spec_file(d: Path, name: str, test: str | None = None, train: str = "train.csv", **data) -> Path:
    spec = {"name": "check-test", "data": {"train": train, "test": test, "target": "y", "id": "id", **data},
            "cv": {"folds": 4, "seed": 0},
            "models": [{"name": "lgbm", "type": "lightgbm", "params": {"n_estimators": 20}}]}
    path = d / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("check-mlflow") / "mlflow.db"


@pytest.fixture(scope="module")
def shift_run(ray_cluster, data: Path, store: Path):
    from foldwise.workflows.commands.check import run_check

    return run_check(spec_file(data, "shift", test="test_shift.csv"), tracking_uri=f"sqlite:///{store}",
                     out=data / "out-shift")


@pytest.fixture(scope="module")
def same_run(ray_cluster, data: Path, store: Path):
    """Through the CLI, as a user runs it: the last stdout line is the summary.json path."""
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(["check", str(spec_file(data, "same", test="test_same.csv")), "--tracking-uri", f"sqlite:///{store}",
                     "--out", str(data / "out-same")])
    return code, buf.getvalue()


def test_planted_shift_is_found_and_its_feature_is_first(shift_run) -> None:
    s = shift_run.summary
    assert s["adversarial_auc"] > 0.8 and s["adversarial_verdict"] == "strong"
    lo, hi = s["adversarial_auc_ci"]
    assert lo <= s["adversarial_auc"] <= hi and len(s["adversarial_fold_aucs"]) == 4
    assert s["top_adversarial_features"][0] == "d"
    assert s["drift"][0]["feature"] == "d" and s["drift"][0]["psi"] > 0.25 and s["drift"][0]["ks_pvalue"] < 1e-10
    others = {r["feature"]: r for r in s["drift"][1:]}
    assert set(others) == {"a", "b", "c", "plan"}  # the id column is never compared
    assert all(r["psi"] < 0.1 for r in others.values())
    assert others["plan"]["kind"] == "categorical" and others["plan"]["ks_pvalue"] is None
    assert others["plan"]["chi2_pvalue"] > 1e-4
    codes = {(w["code"], w["column"]) for w in s["warning_details"]}
    assert ("drift", "d") in codes and ("adversarial", None) in codes


def test_shift_run_writes_the_contract_outputs(shift_run) -> None:
    out = shift_run.out_dir
    s = json.loads((out / "summary.json").read_text())
    assert CONTRACT_KEYS <= set(s) and s["command"] == "check" and s["errors"] == []
    assert set(s["drift"][0]) >= {"feature", "psi", "ks_pvalue"}
    assert (out / "drift.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (out / "check.md").read_text()
    assert "## Adversarial validation" in report and "| d | numeric |" in report and "drift.png" in report
    assert len(pd.read_csv(out / "drift.csv")) == 5


def test_shift_run_is_in_mlflow(shift_run, store: Path) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{store}")
    run = client.get_run(shift_run.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["foldwise.command"] == "check"
    assert run.data.metrics["adversarial_auc"] == pytest.approx(shift_run.adversarial_auc)
    assert run.data.metrics["psi.d"] > 0.25
    assert {"check.md", "drift.png", "summary.json", "drift.csv"} <= {a.path for a in client.list_artifacts(run.info.run_id)}


def test_identical_distributions_give_chance_auc_via_the_cli(same_run) -> None:
    code, stdout = same_run
    assert code == 0, stdout
    path = Path(stdout.strip().splitlines()[-1])
    assert path.name == "summary.json" and path.exists()
    s = json.loads(path.read_text())
    assert abs(s["adversarial_auc"] - 0.5) <= 0.05 and s["adversarial_verdict"] == "none"
    assert all(d["psi"] < 0.1 for d in s["drift"])
    assert not any(w["code"] in ("drift", "adversarial", "leak") for w in s["warning_details"])


def test_reference_compares_new_train_with_an_old_version(ray_cluster, data: Path, store: Path) -> None:
    from foldwise.workflows.commands.check import run_check

    result = run_check(spec_file(data, "ref", test="test_shift.csv"), reference=data / "old.csv",
                       tracking_uri=f"sqlite:///{store}", out=data / "out-ref")
    s = result.summary
    assert s["compared"]["kind"] == "reference" and s["compared"]["other"].endswith("old.csv")
    assert s["adversarial_auc"] > 0.8 and s["top_adversarial_features"][0] == "b"  # test's shift in d is not read
    assert s["drift"][0]["feature"] == "b"
    assert s["target_drift"]["feature"] == "y" and s["target_drift"]["psi"] > 0.1
    assert any(w["code"] == "target_drift" for w in s["warning_details"])
    assert "reference" in (result.out_dir / "check.md").read_text()


def test_a_planted_leak_is_flagged_without_starting_anything(data: Path, store: Path, tmp_path: Path) -> None:
    """No test set, no reference: only the checks run (no Ray task), and the leak is named."""
    from foldwise.workflows.commands.check import run_check

    result = run_check(spec_file(data, "leak", train="train_leak.csv"), tracking_uri=f"sqlite:///{store}",
                       out=tmp_path / "out")
    leaks = [w for w in result.summary["warning_details"] if w["code"] == "leak"]
    assert [w["column"] for w in leaks] == ["leak"] and "'leak' alone predicts the target" in leaks[0]["message"]
    assert result.summary["adversarial_auc"] is None and result.summary["drift"] == []
    assert "nothing to compare" in (tmp_path / "out" / "check.md").read_text()


def test_without_out_the_outputs_go_under_foldwise_outputs(data: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    """No --out: like `foldwise run`, the check writes under $FOLDWISE_OUTPUTS (a cluster's shared outputs)."""
    root = tmp_path / "shared-outputs"
    monkeypatch.setenv("FOLDWISE_OUTPUTS", str(root))
    monkeypatch.chdir(tmp_path)
    spec = spec_file(data, "outputs-env", train="train_leak.csv")  # no test set: no Ray task
    assert main(["check", str(spec), "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]) == 0
    path = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert path.name == "summary.json" and path.is_file()
    assert path.resolve().is_relative_to(root.resolve())
    summary = json.loads(path.read_text())
    assert path.parent == root / "check-test" / summary["run_id"]
    assert not (tmp_path / "outputs").exists()


def test_data_warnings_is_the_cheap_part_for_foldwise_run(data: Path) -> None:
    from foldwise.workflows.errors import InputError
    from foldwise.workflows.pipeline.inputs import data_warnings, validate_inputs
    from foldwise.workflows.pipeline.spec import load_spec

    spec = load_spec(spec_file(data, "dw", test="test_leak.csv", train="train_leak.csv"))
    lines, findings = data_warnings(spec, validate_inputs(spec))
    assert any("'leak' alone predicts the target" in w for w in lines)
    assert findings.train is not None and findings.other.role == "test", "the frames the run prepares from"
    assert not any("drifted" in w or "adversarial" in w for w in lines)  # no drift model in the cheap part
    spec = load_spec(spec_file(data, "dw2", train="const_regression.csv"), ["task=regression"])
    inputs = validate_inputs(spec)  # the cheap header read cannot see this one
    with pytest.raises(InputError, match="column 'y' is constant"):
        data_warnings(spec, inputs)


ERRORS = {
    "empty train": (dict(train="empty.csv"), [], "has no rows"),
    "target missing": (dict(train="small.csv", target="label"), [], "data.target: column 'label' is not in"),
    "nan target": (dict(train="nan_target.csv"), [], "data.target: column 'y' has 1 missing value"),
    "inf target": (dict(train="inf_target.csv"), [], "data.target: column 'y' has infinite value"),
    "constant target": (dict(train="const_target.csv"), [], "data.target: column 'y' is constant ("),
    "constant regression target": (dict(train="const_regression.csv"), ["--set", "task=regression"],
                                   "data.target: column 'y' is constant (3.5)"),
    "duplicate ids": (dict(train="dup_ids.csv"), [], "data.id: column 'id' has duplicate value 3"),
    "duplicate test ids": (dict(train="small.csv", test="test_dup_ids.csv"), [], "column 'id' of data.test has 1 duplicate"),
    "test columns differ": (dict(train="small.csv", test="test_renamed.csv"), [], "missing b; not in train bb"),
    "test dtype differs": (dict(train="small.csv", test="test_text_late.csv"), [],
                           "data.test: column 'b' is numeric (float64) in train but text/categorical"),
    "id column missing": (dict(train="small.csv", id="key"), [], "data.id: column 'key' is not in"),
    "id missing in test": (dict(train="small.csv", test="test_no_id.csv"), [], "id column 'id' is missing"),
    "groups column missing": (dict(train="small.csv", groups="team"), [], "data.groups: column 'team' is not in"),
    "empty test": (dict(train="small.csv", test="test_empty.csv"), [], "data.test:"),
    "reference columns differ": (dict(train="small.csv"), ["--reference", "old_no_c.csv"],
                                 "--reference: reference columns differ from train: missing c"),
    "reference missing": (dict(train="small.csv"), ["--reference", "nope.csv"], "--reference: data file"),
}


@pytest.mark.parametrize("case", sorted(ERRORS))
def test_each_error_exits_2_naming_the_column_and_logs_nothing(case: str, data: Path, tmp_path: Path, capsys) -> None:
    fields, extra, needle = ERRORS[case]
    extra = [str(data / a) if a.endswith(".csv") else a for a in extra]
    spec = spec_file(data, case.replace(" ", "_"), **fields)
    db, out = tmp_path / "mlflow.db", tmp_path / "out"
    code = main(["check", str(spec), "--tracking-uri", f"sqlite:///{db}", "--out", str(out), *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("foldwise: error: ") and "\n" not in err and "Traceback" not in err
    assert needle in err
    assert not db.exists() and not out.exists()


def test_an_error_leaves_an_existing_store_unchanged(shift_run, data: Path, store: Path, capsys) -> None:
    before = store_state(store)
    assert before is not None
    code = main(["check", str(spec_file(data, "bad_dup", train="small.csv", test="test_dup_ids.csv")),
                 "--tracking-uri", f"sqlite:///{store}"])
    assert code == 2 and "duplicate" in capsys.readouterr().err
    assert store_state(store) == before


def test_a_failing_task_exits_1_and_marks_the_run_failed(data: Path, store: Path, monkeypatch, capsys) -> None:
    """In-process executor, so the patched task is the one that runs."""
    from mlflow.tracking import MlflowClient

    import foldwise.workflows.commands.check as check_cmd

    def broken(*args, **kwargs):
        raise MemoryError("out of memory in fold")

    monkeypatch.setattr(check_cmd, "adversarial_fold", broken)
    code = main(["check", str(spec_file(data, "broken", test="test_same.csv")), "--tracking-uri", f"sqlite:///{store}",
                 "--executor", "local", "--out", str(data / "out-broken")])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 1 and "adversarial_fold[fold=0]" in err and "MemoryError" in err and "marked FAILED" in err
    run_id = err.split("MLflow run ")[1].split()[0]
    assert MlflowClient(f"sqlite:///{store}").get_run(run_id).info.status == "FAILED"


def test_foldwise_run_checks_first_warns_and_logs(ray_cluster, data: Path, tmp_path: Path, capsys) -> None:
    """`foldwise run` runs the cheap checks before any task: warnings on stderr, in summary.json and on the run."""
    from mlflow.tracking import MlflowClient

    db = tmp_path / "mlflow.db"
    code = main(["run", str(spec_file(data, "run_leak", train="train_leak.csv")), "--tracking-uri", f"sqlite:///{db}",
                 "--out", str(tmp_path / "out"), "--no-progress", "--set", "cv.folds=2",
                 "--set", "models.0.params.n_estimators=5"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "foldwise: warning: column 'leak' alone predicts the target" in captured.err
    summary = json.loads(Path(captured.out.strip().splitlines()[-1]).read_text())
    assert any("'leak' alone predicts" in w for w in summary["warnings"])
    run = MlflowClient(f"sqlite:///{db}").get_run(summary["run_id"])
    assert run.data.tags["foldwise.data_warnings"] == str(len(summary["warnings"])) != "0"


def test_foldwise_run_stops_on_an_error_only_a_full_read_finds(data: Path, tmp_path: Path, capsys) -> None:
    """A column numeric in train but text past test's first 1000 rows: exit 2 before Ray, nothing written."""
    db, out = tmp_path / "mlflow.db", tmp_path / "out"
    code = main(["run", str(spec_file(data, "run_text_late", train="small.csv", test="test_text_late.csv")),
                 "--tracking-uri", f"sqlite:///{db}", "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "column 'b' is numeric (float64) in train but text/categorical" in err
    assert not db.exists() and not out.exists()


def test_checks_ignore_silences_the_drift_warnings_and_each_printed_warning_names_its_code(
        ray_cluster, data: Path, store: Path, tmp_path: Path, capsys) -> None:
    """`checks.ignore` silences `foldwise check`'s own drift/adversarial warnings too (the statistics
    stay in summary.json), and every printed warning ends with the code that silences it."""
    spec = spec_file(data, "shift", test="test_shift.csv")
    args = ["check", str(spec), "--tracking-uri", f"sqlite:///{store}", "--executor", "local"]
    assert main([*args, "--out", str(tmp_path / "loud")]) == 0
    loud = json.loads((tmp_path / "loud" / "summary.json").read_text())
    printed = capsys.readouterr().out
    assert any(w["code"] == "drift" for w in loud["warning_details"]) and "[drift]" in printed
    assert main([*args, "--out", str(tmp_path / "quiet"), "--set", "checks.ignore=[drift, adversarial]"]) == 0
    quiet = json.loads((tmp_path / "quiet" / "summary.json").read_text())
    assert not any(w["code"] in ("drift", "adversarial") for w in quiet["warning_details"])
    assert quiet["drift"][0]["feature"] == "d" and quiet["adversarial_auc"] > 0.7  # measured, only not warned
