"""`foldwise init DATA --target COL`: a starter spec for the user's own file, in one step.

Reads the data's header and target, infers the task and its default metric, and writes a spec
with a linear model and LightGBM on 5 folds (the command line is the `foldwise init` CLI module).
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from foldwise.tasks.data import DataConfig, DataError, inspect_data
from foldwise.tasks.metrics import DEFAULT_METRIC


class StarterError(ValueError):
    """Bad arguments to `foldwise init`: exit code 2, nothing written."""


def starter_spec(data: str, target: str, id_column: str | None = None, test: str | None = None,
                 name: str | None = None) -> dict:
    """Task and metric inferred from the target; a linear model + LightGBM, 5 folds."""
    try:
        summary = inspect_data(DataConfig(train=data, test=test, target=target, id=id_column))
    except DataError as e:
        raise StarterError(str(e)) from None
    task = summary.task
    stem = name or re.sub(r"[^A-Za-z0-9_.\-]+", "-", Path(data.removeprefix("sklearn:")).name.split(".")[0])
    linear = ({"name": "ridge", "type": "sklearn", "estimator": "sklearn.linear_model.Ridge", "params": {"alpha": 1.0}}
              if task == "regression" else
              {"name": "logreg", "type": "sklearn", "estimator": "sklearn.linear_model.LogisticRegression",
               "params": {"C": 1.0, "max_iter": 2000}})
    linear["preprocess"] = ["standard_scaler"]
    return {
        "name": stem,
        "data": {"train": data, "test": test, "target": target, "id": id_column},
        "task": task,
        "metric": DEFAULT_METRIC[task],
        "cv": {"scheme": "kfold" if task == "regression" else "stratified", "folds": 5, "seed": 42},
        "models": [linear, {"name": "lgbm", "type": "lightgbm",
                            "params": {"n_estimators": 1000, "learning_rate": 0.05, "early_stopping_rounds": 100}}],
        "ensemble": {"method": "weights"},
    }


def write_starter_spec(data: str, target: str, id_column: str | None = None, test: str | None = None,
                       name: str | None = None, out: str | None = None, force: bool = False) -> Path:
    if not data.startswith("sklearn:") and "://" not in data:
        data = str(Path(data).resolve())
        test = str(Path(test).resolve()) if test else None
    spec = starter_spec(data, target, id_column, test, name)
    path = Path(out or f"{spec['name']}.yaml")
    if path.exists() and not force:
        raise StarterError(f"{str(path)!r} already exists (use --force to overwrite, or --out another path)")
    header = (f"# Starter spec written by `foldwise init` ({spec['task']} task inferred from {target!r}).\n"
              "# Edit models, params and cv, then: foldwise run " + str(path) + "\n")
    path.write_text(header + yaml.safe_dump(spec, sort_keys=False))
    return path
