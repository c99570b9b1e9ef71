"""Bad input: exit 2, one clear line naming the key/column, nothing logged, nothing written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from foldwise.workflows.cli.main import main
from tests.conftest import store_state


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("bad-data")
    rng = np.random.default_rng(0)
    train = pd.DataFrame({"id": range(60), "a": rng.normal(size=60), "b": rng.normal(size=60),
                          "g": np.repeat(np.arange(6), 10), "y": rng.integers(0, 2, size=60)})
    train.to_csv(d / "train.csv", index=False)
    train.drop(columns=["y"]).to_csv(d / "test.csv", index=False)
    train.drop(columns=["y", "b"]).assign(c=1.0).to_csv(d / "test_other_cols.csv", index=False)
    train.assign(y=train.y.astype(float).where(train.index != 5)).to_csv(d / "nan_target.csv", index=False)
    train.assign(y=train.y.astype(float).where(train.index != 5, np.inf)).to_csv(d / "inf_target.csv", index=False)
    train.assign(y=np.where(train.index < 3, 2, train.y)).to_csv(d / "rare_class.csv", index=False)
    (d / "malformed.yaml").write_text("name: x\nmodels: [\n  - {name: a\n")
    return d


def spec_file(d: Path, name: str, **changes) -> Path:
    spec = {"name": "bad", "data": {"train": str(d / "train.csv"), "target": "y", "id": "id"},
            "cv": {"folds": 3},
            "models": [{"name": "lr", "type": "sklearn", "estimator": "sklearn.linear_model.LogisticRegression"}]}
    for key, value in changes.items():
        node = spec
        *path, last = key.split("__")
        for part in path:
            node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
        node[last] = value
    path = d / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


CASES = {
    "unknown spec key": (dict(cvv={"folds": 3}), [], "'cvv' is not allowed"),
    "malformed yaml": (None, [], "not valid YAML at line"),
    "missing data file": (dict(data__train="/nonexistent/train.csv"), [], "'/nonexistent/train.csv' does not exist"),
    "target column missing": (dict(data__target="label"), [], "data.target: column 'label' is not in"),
    "nan target": (dict(data__train="nan_target.csv"), [], "data.target: column 'y' has 1 missing value"),
    "inf target": (dict(data__train="inf_target.csv"), ["task=binary"], "data.target: column 'y' has infinite value"),
    "rare class": (dict(data__train="rare_class.csv"), ["cv.folds=5"], "class 2 of the target has 3 member(s), fewer than cv.folds=5"),
    "group scheme without groups": (dict(), ["cv.scheme=group"], "cv.scheme 'group' needs data.groups"),
    "groups column missing": (dict(data__groups="team"), ["cv.scheme=group"], "data.groups: column 'team' is not in"),
    "test columns differ": (dict(data__test="test_other_cols.csv"), [], "test columns differ from train: missing b; not in train c"),
    "unknown model type": (dict(), ["models.0.type=catbost"], "unknown model type 'catbost'"),
    "unknown estimator": (dict(), ["models.0.estimator=sklearn.linear_model.Logistic"], "has no 'Logistic'"),
    "unknown estimator param": (dict(), ["models.0.params.CC=1"], "has no parameter 'CC'"),
    "unknown torch_mlp param": (dict(models=[{"name": "mlp", "type": "torch_mlp", "params": {"epoch": 3}}]), [],
                                "models.0.params (mlp): torch_mlp has no parameter(s) epoch"),
    "unknown lightgbm param": (dict(), ["models.0.type=lightgbm", "models.0.params.num_leafs=3"],
                               "lightgbm has no parameter 'num_leafs'"),
    "unknown xgboost param": (dict(), ["models.0.type=xgboost", "models.0.params.max_dept=3"],
                              "xgboost has no parameter 'max_dept'; did you mean max_depth? (valid: aft_loss_distribution,"),
    "unknown catboost param": (dict(), ["models.0.type=catboost", "models.0.params.dept=3"],
                               "catboost has no parameter 'dept'; did you mean depth? (valid: allow_const_label,"),
    "unknown metric": (dict(), ["metric=aucc"], "unknown metric 'aucc'"),
    "metric unfit for task": (dict(), ["metric=r2"], "metric 'r2' is for regression, but the task is binary"),
    "duplicate model names": (dict(models=[{"name": "lr", "type": "lightgbm"}, {"name": "lr", "type": "lightgbm"}]), [],
                              "duplicate model name(s) lr"),
    "repeats < 1": (dict(), ["cv.repeats=0"], "spec key 'cv.repeats': must be at least 1"),
    "repeats with time folds": (dict(), ["cv.scheme=time", "cv.repeats=2"], "cv.repeats > 1 needs a shuffled scheme"),
    "layers without stack": (dict(), ["ensemble.method=weights", "ensemble.layers=2"],
                             "layers and passthrough are for method stack (method is weights)"),
    "folds < 2": (dict(), ["cv.folds=1"], "spec key 'cv.folds': must be at least 2"),
    "folds > rows": (dict(), ["cv.folds=61", "cv.scheme=kfold"], "cv.folds=61 is more than the 60 rows"),
    "bad override": (dict(), ["models.3.name=x"], "needs a list index below 1"),
    "slice on an unknown column": (dict(slices={"big": "`c` > 1"}), [], "slices.big: cannot evaluate '`c` > 1'"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_exits_2_and_logs_nothing(case: str, data_dir: Path, tmp_path: Path, capsys) -> None:
    changes, overrides, needle = CASES[case]
    if changes is None:
        spec = data_dir / "malformed.yaml"
    else:
        fixed = {k: (str(data_dir / v) if k.startswith("data__") and v.endswith(".csv") and "/" not in v else v)
                 for k, v in changes.items()}
        spec = spec_file(data_dir, case.replace(" ", "_"), **fixed)
    db = tmp_path / "mlflow.db"
    out = tmp_path / "out"
    argv = ["run", str(spec), "--tracking-uri", f"sqlite:///{db}", "--out", str(out), "--no-progress"]
    for o in overrides:
        argv += ["--set", o]
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.count("\n") == 0 and err.startswith("foldwise: error: "), err
    assert needle in err
    assert "Traceback" not in err
    assert not db.exists(), "bad input must not create or touch the MLflow store"
    assert not out.exists(), "bad input must write nothing"


def test_bad_input_leaves_an_existing_store_unchanged(breast_cancer_run, session_dir: Path, data_dir: Path, capsys) -> None:
    db = session_dir / "mlflow.db"
    before = store_state(db)
    assert before is not None
    code = main(["run", str(spec_file(data_dir, "bad_metric")), "--set", "metric=r2",
                 "--tracking-uri", f"sqlite:///{db}", "--no-progress"])
    assert code == 2
    assert store_state(db) == before


def test_console_script_prints_one_line_without_traceback(data_dir: Path, tmp_path: Path) -> None:
    """The real `foldwise` entry point, as a user runs it."""
    exe = Path(sys.executable).with_name("foldwise")
    spec = spec_file(data_dir, "cli_bad", data__target="label")
    proc = subprocess.run([str(exe), "run", str(spec), "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"foldwise: error: data.target: column 'label' is not in {str(data_dir / 'train.csv')!r} (columns: id, a, b, g, y)"
    assert not (tmp_path / "m.db").exists() and not (tmp_path / "outputs").exists()


def test_an_address_where_nothing_listens_exits_2_in_seconds(data_dir: Path, tmp_path: Path, capsys) -> None:
    """ray.init would retry such an address for minutes; foldwise says so in one line instead."""
    import socket
    import time

    with socket.socket() as s:  # a port nobody listens on (bound, then released)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    db, out = tmp_path / "mlflow.db", tmp_path / "out"
    start = time.monotonic()
    code = main(["run", str(spec_file(data_dir, "addr")), "--address", f"127.0.0.1:{port}", "--no-cache",
                 "--tracking-uri", f"sqlite:///{db}", "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and time.monotonic() - start < 30
    assert err == (f"foldwise: error: --address 127.0.0.1:{port}: nothing answers there (Connection refused); start a "
                   "cluster (`foldwise cluster up`, `ray start --head`) or leave --address out to run on a local Ray")
    assert not db.exists() and not out.exists()


@pytest.mark.parametrize("command", ["run", "ablate", "check", "sweep"])
def test_a_tracking_server_that_does_not_answer_exits_2_before_any_compute(command: str, data_dir: Path, tmp_path: Path,
                                                                          capsys) -> None:
    import socket
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    spec = spec_file(data_dir, f"server_{command}", features={"groups": {"a": ["a"]}},
                     search={"model": "lr", "trials": 2, "space": {"C": {"loguniform": [0.1, 1.0]}}})
    out = tmp_path / "out"
    start = time.monotonic()
    code = main([command, str(spec), "--tracking-uri", f"http://127.0.0.1:{port}", "--out", str(out), "--no-cache"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and time.monotonic() - start < 30
    assert err.startswith(f"foldwise: error: tracking URI http://127.0.0.1:{port}: no MLflow server answers there")
    assert not out.exists()


def test_help_imports_no_command_module() -> None:
    """`foldwise --help` lists every command from the routing table alone (it used to import pandas,
    sklearn and every workflow: seconds before the first line)."""
    code = ("import sys; from foldwise.workflows.cli.main import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "loaded = sorted(m for m in sys.modules if m.startswith(('foldwise.workflows.', 'foldwise.tasks', 'foldwise.infra', 'pandas', 'sklearn', 'ray')))\n"
            "print(loaded)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "check" in out and "sweep" in out and "submit" in out  # the command list was printed
    # the cli package (a docstring) and its router, nothing else of foldwise's
    assert out.strip().splitlines()[-1] == "['foldwise.workflows.cli', 'foldwise.workflows.cli.main']"
