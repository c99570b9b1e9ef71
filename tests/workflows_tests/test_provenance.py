"""The code version in every cache key: what a result depends on beyond the spec and the data.

A cached fold is served only if nothing that computed it changed: the tasks/ source, the
libraries the model computes with, and a user adapter's whole package (its helpers too).
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

import lightgbm
import numpy as np
import pandas as pd
import pytest
import sklearn
import yaml

from foldwise.workflows.commands.run import run_cv
from foldwise.workflows.pipeline.provenance import (
    COMMON_LIBRARIES,
    MODEL_LIBRARIES,
    adapter_version,
    library_versions,
    tasks_version,
)

ADAPTER = '''
import numpy as np
from sklearn.linear_model import LogisticRegression

from {pkg}.helpers import SCALE


class Model:
    def __init__(self, config, ctx):
        self.m = LogisticRegression(C=SCALE)

    def fit(self, X, y):
        self.m.fit(X.to_numpy(), y)

    def predict(self, X):
        return self.m.predict_proba(X.to_numpy())[:, 1]
'''


def write_package(root: Path, name: str, helpers: str, model: str) -> Path:
    """A user's adapter package under `root`: `<name>.model` (the template, formatted with the
    package name) imports `<name>.helpers`. Returns its folder."""
    (root / name).mkdir(parents=True)
    (root / name / "__init__.py").write_text("")
    (root / name / "helpers.py").write_text(helpers)
    (root / name / "model.py").write_text(model.format(pkg=name))
    return root / name


@pytest.fixture
def user_package(tmp_path: Path, monkeypatch):
    """A user's adapter package on sys.path: `<name>.model:Model` imports `<name>.helpers`."""
    name = f"userpkg_{tmp_path.name.replace('-', '_')}"
    root = tmp_path / "src"
    write_package(root, name, "SCALE = 1.0\n", ADAPTER)
    monkeypatch.syspath_prepend(str(root))
    importlib.invalidate_caches()
    yield name, root / name
    for mod in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
        del sys.modules[mod]


def test_editing_a_helper_module_of_a_user_adapter_changes_its_version(user_package) -> None:
    name, folder = user_package
    before = adapter_version(f"{name}.model:Model")
    assert before and adapter_version(f"{name}.model:Model") == before, "stable while nothing changes"
    (folder / "helpers.py").write_text("SCALE = 0.5\n")
    after_edit = adapter_version(f"{name}.model:Model")
    assert after_edit != before, "a helper the adapter imports is part of its version"
    (folder / "extra.py").write_text("X = 1\n")
    assert adapter_version(f"{name}.model:Model") != after_edit, "a new module in the package counts too"


def test_an_sklearn_estimator_from_a_users_own_package_is_versioned_by_its_source(user_package) -> None:
    """No __version__ and no installed distribution: its source, read again on every call."""
    name, folder = user_package
    before = adapter_version("sklearn", f"{name}.helpers.Estimator")
    (folder / "helpers.py").write_text("SCALE = 2.0\n")
    assert adapter_version("sklearn", f"{name}.helpers.Estimator") != before


def test_a_top_level_module_adapter_covers_the_files_beside_it(toplevel_module) -> None:
    name, folder = toplevel_module
    before = adapter_version(f"{name}:M")
    (folder / f"{name}_util.py").write_text("K = 2\n")
    assert adapter_version(f"{name}:M") != before


def test_library_versions_are_the_installed_ones_and_enter_the_key() -> None:
    assert library_versions(MODEL_LIBRARIES["lightgbm"]) == (f"lightgbm=={lightgbm.__version__}",)
    common = dict(v.split("==") for v in library_versions(COMMON_LIBRARIES))
    assert common["numpy"] == np.__version__ and common["pandas"] == pd.__version__
    assert common["scikit-learn"] == sklearn.__version__
    assert library_versions(("surely-not-installed-xyz",)) == ("surely-not-installed-xyz absent",)
    # built-in types differ by the libraries they compute with; an sklearn-type estimator path by
    # the package it comes from (LightGBM's sklearn API through the `sklearn` type)
    assert adapter_version("lightgbm") not in ("", adapter_version("sklearn"))
    from_sklearn = adapter_version("sklearn", "sklearn.linear_model.LogisticRegression")
    from_lightgbm = adapter_version("sklearn", "lightgbm.LGBMClassifier")
    assert from_sklearn and from_lightgbm and from_sklearn != from_lightgbm
    assert len(tasks_version()) == 12


def test_a_rerun_refits_a_user_model_after_its_helper_changed(user_package, tmp_path: Path) -> None:
    """End to end: unchanged -> every fold from the cache; helper edited -> every fold refitted."""
    name, folder = user_package
    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 3))
    frame = pd.DataFrame(X, columns=["a", "b", "c"]).assign(target=(X[:, 0] > 0).astype(int))
    frame.to_csv(tmp_path / "d.csv", index=False)
    spec = {"name": "provenance", "data": {"train": str(tmp_path / "d.csv"), "target": "target"},
            "metric": "roc_auc", "cv": {"scheme": "stratified", "folds": 3, "seed": 0},
            "models": [{"name": "user", "type": f"{name}.model:Model"}]}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    kw = {"tracking_uri": f"sqlite:///{tmp_path / 'm.db'}", "cache_root": str(tmp_path / "cache"),
          "executor": "local"}
    first_run = run_cv(path, out=tmp_path / "o1", **kw)
    again = run_cv(path, out=tmp_path / "o2", **kw).summary
    (folder / "helpers.py").write_text("SCALE = 0.01\n")
    edited_run = run_cv(path, out=tmp_path / "o3", **kw)
    first, edited = first_run.summary, edited_run.summary
    assert first["models"]["user"]["cached"] == [False] * 3
    assert again["models"]["user"]["cached"] == [True] * 3
    assert edited["models"]["user"]["cached"] == [False] * 3
    # refitted with the edited helper (C=0.01 shrinks the probabilities), not the module imported before
    assert not np.allclose(first_run.oof["user"], edited_run.oof["user"])


SIGNED = '''
import os

import numpy as np

from {pkg}.helpers import SIGN


class Model:
    """Scores rows by column a, signed by the helper; logs the pid of each fit."""

    def __init__(self, config, ctx):
        self.log = config.params["log"]

    def fit(self, X, y):
        with open(self.log, "a") as f:
            f.write(f"{{os.getpid()}}\\n")

    def predict(self, X):
        return 0.5 + 0.1 * SIGN * np.tanh(X["a"].to_numpy())
'''

NOTEBOOK = """
import json, pathlib, sys
import ray
ray.init(address="local", num_cpus=1, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
from foldwise.workflows.commands.run import run_cv
spec, helpers, out = sys.argv[1], pathlib.Path(sys.argv[2]), pathlib.Path(sys.argv[3])
kw = dict(tracking_uri=f"sqlite:///{out / 'm.db'}", cache_root=str(out / "cache"))
before = run_cv(spec, out=out / "o1", **kw)
helpers.write_text("SIGN = -1.0\\n")  # the user edits a helper between two calls
after = run_cv(spec, out=out / "o2", **kw)
print(json.dumps({"before": before.cv_score, "after": after.cv_score,
                  "cached": after.summary["models"]["user"]["cached"]}))
"""


def test_a_reused_ray_worker_fits_the_edited_source_not_the_module_it_imported(tmp_path: Path) -> None:
    """A notebook keeps Ray up and edits its adapter's helper between two run_cv calls. One worker
    (num_cpus=1, in a subprocess: its own Ray) fits every fold of both calls; the second call's
    folds must come from the edited source: the sign flip turns AUC a into 1 - a."""
    import json
    import subprocess

    name = f"nbpkg_{tmp_path.name.replace('-', '_')}"
    root = tmp_path / "src"
    folder = write_package(root, name, "SIGN = 1.0\n", SIGNED)
    rng = np.random.default_rng(1)
    X = rng.normal(size=(200, 2))
    frame = pd.DataFrame(X, columns=["a", "b"]).assign(target=(X[:, 0] + rng.normal(size=200) > 0).astype(int))
    frame.to_csv(tmp_path / "d.csv", index=False)
    log = tmp_path / "fits.log"
    spec = {"name": "notebook-edit", "data": {"train": str(tmp_path / "d.csv"), "target": "target"},
            "metric": "roc_auc", "cv": {"scheme": "stratified", "folds": 3, "seed": 0},
            "models": [{"name": "user", "type": f"{name}.model:Model", "params": {"log": str(log)}}]}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
               RAY_DEDUP_LOGS="0")
    done = subprocess.run([sys.executable, "-c", NOTEBOOK, str(path), str(folder / "helpers.py"), str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    pids = log.read_text().split()
    assert len(pids) == 6 and len(set(pids)) == 1, "one worker fitted every fold of both calls"
    assert result["cached"] == [False] * 3, "the edit changed the folds' keys"
    assert result["before"] > 0.6
    assert result["after"] == pytest.approx(1 - result["before"], abs=1e-9), "the edited helper's sign, not the old one"
