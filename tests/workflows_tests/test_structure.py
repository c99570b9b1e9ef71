"""The structure the codebase promises (docs/architecture.md), checked rather than described:
the layer contracts hold, modules stay small, and a user's own `tasks`/`workflows` packages
never shadow foldwise's code, on the driver or in Ray workers."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_import_layer_contracts_hold(tmp_path: Path) -> None:
    """`lint-imports` with pyproject.toml's contracts, on the installed layout (foldwise/tasks,
    foldwise/workflows, foldwise/infra): import-linter walks a package's own folder, and the
    source tree keeps those folders beside foldwise/ instead (setuptools package-dir)."""
    tree = tmp_path / "site"
    shutil.copytree(REPO / "foldwise", tree / "foldwise", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("tasks", "workflows", "infra"):
        shutil.copytree(REPO / name, tree / "foldwise" / name, ignore=shutil.ignore_patterns("__pycache__", "data"))
    exe = Path(sys.executable).with_name("lint-imports")
    proc = subprocess.run([str(exe), "--config", str(REPO / "pyproject.toml")], cwd=tree, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(tree)})
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout and "BROKEN" not in proc.stdout


def test_no_workflows_module_is_over_500_lines() -> None:
    sizes = {str(p.relative_to(REPO)): len(p.read_text().splitlines()) for p in (REPO / "workflows").rglob("*.py")}
    assert sizes, "no modules found"
    assert {p: n for p, n in sizes.items() if n > 500} == {}


def _user_project(root: Path) -> Path:
    """A user's project folder with packages named like foldwise's: `tasks` holds their own model
    adapter (their code must stay importable), `workflows` and `utils` must never be imported
    (they raise), and the spec lives in their `workflows/` folder."""
    (root / "tasks").mkdir(parents=True)
    (root / "tasks" / "__init__.py").write_text('"""The user\'s own tasks package."""\n')
    (root / "tasks" / "data.py").write_text("def load():\n    return 'the user data loader'\n")
    (root / "tasks" / "train.py").write_text("raise ImportError('the user tasks.train was imported by foldwise')\n")
    (root / "tasks" / "models.py").write_text(
        "import numpy as np\n\n\n"
        "class FirstColumnRank:\n"
        "    def __init__(self, config, ctx):\n        self.sign = 1.0\n\n"
        "    def fit(self, X, y):\n"
        "        col = X.iloc[:, 0].to_numpy()\n"
        "        self.sign = 1.0 if np.corrcoef(col, y)[0, 1] >= 0 else -1.0\n"
        "        self.lo, self.hi = np.nanmin(col), np.nanmax(col)\n\n"
        "    def predict(self, X):\n"
        "        col = (X.iloc[:, 0].to_numpy() - self.lo) / (self.hi - self.lo + 1e-12)\n"
        "        return np.clip(col if self.sign > 0 else 1 - col, 0, 1)\n")
    for name in ("workflows", "utils", "infra"):
        (root / name).mkdir(exist_ok=True)
        (root / name / "__init__.py").write_text(f"raise ImportError('the user {name} package was imported by foldwise')\n")
    spec = root / "workflows" / "bc.yaml"
    spec.write_text(
        "name: user-packages\n"
        "data: {train: 'sklearn:breast_cancer'}\n"
        "cv: {folds: 3, seed: 7}\n"
        "models:\n"
        "  - {name: logreg, type: sklearn, estimator: sklearn.linear_model.LogisticRegression,\n"
        "     params: {max_iter: 2000}, preprocess: [standard_scaler]}\n"
        "  - {name: mine, type: 'tasks.models:FirstColumnRank'}\n")
    return spec


def test_a_users_own_tasks_and_workflows_packages_never_shadow_foldwise(tmp_path: Path) -> None:
    """`foldwise run workflows/bc.yaml` from a project with its own tasks/workflows/utils/infra
    packages: foldwise's code runs on the driver and in the Ray fold tasks (the user's
    workflows/utils/infra raise on import, their tasks.train too), while the user's adapter from
    their own `tasks` package is found, as `type: tasks.models:...` says."""
    spec = _user_project(tmp_path)
    exe = Path(sys.executable).with_name("foldwise")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([str(exe), "run", "workflows/bc.yaml", "--no-progress", "--executor", "ray"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "was imported by foldwise" not in proc.stderr
    summary = json.loads((tmp_path / proc.stdout.strip().splitlines()[-1]).read_text())
    assert summary["folds"]["n"] == 3 and set(summary["models"]) == {"logreg", "mine"}
    assert summary["models"]["logreg"]["cv_score"] > 0.98
    assert 0.9 < summary["models"]["mine"]["cv_score"] < 0.97  # the first column alone: good, imperfect
    assert spec.exists() and (tmp_path / "mlflow.db").exists()


def test_the_python_api_is_foldwise_and_its_code_is_namespaced() -> None:
    """`from foldwise import ...` gives every command's API; no top-level `tasks`/`workflows` is installed."""
    code = ("import foldwise, importlib.util as u, sys\n"
            "names = ['run_cv', 'run_sweep', 'run_ablation', 'run_check', 'compare', 'load_spec']\n"
            "assert all(callable(getattr(foldwise, n)) for n in names), names\n"
            "assert u.find_spec('tasks') is None and u.find_spec('workflows') is None\n"
            "import foldwise.tasks.train as t; print(t.__name__)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "foldwise.tasks.train"


def test_every_package_folder_is_listed_for_the_wheel() -> None:
    """pyproject's explicit package list (package-dir maps the root folders into foldwise.*) names
    every folder with an __init__.py, so a `pip install .` ships the whole code, not just the editable tree."""
    import tomllib

    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    roots = {folder: name for name, folder in config["package-dir"].items()}
    found = {".".join([roots[init.relative_to(REPO).parts[0]], *init.relative_to(REPO).parts[1:-1]])
             for root in roots for init in (REPO / root).rglob("__init__.py")}
    assert found and found == set(config["packages"])
