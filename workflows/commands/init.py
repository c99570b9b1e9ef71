"""`foldwise init DATA --target COL`: a starter spec for the user's own file, in one step.

Reads the data's header and target, infers the task and its default metric, and writes a spec
with a linear model and LightGBM on 5 folds (the command line is the `foldwise init` CLI module).
Local data paths are written relative to the spec's folder when the data lies under it or
beside it (`load_spec` resolves relative paths against the spec's folder), so the project
folder can move; the spec is named after the dataset (`diamonds_train.csv` -> `diamonds`).
"""

from __future__ import annotations

import os
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
    stem = name or dataset_name(data)
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


def dataset_name(data: str) -> str:
    """The spec name for a data file: its stem without a train part (`diamonds_train.csv` -> `diamonds`)."""
    stem = re.sub(r"[^A-Za-z0-9_.\-]+", "-", Path(data.removeprefix("sklearn:")).name.split(".")[0])
    short = re.sub(r"(?i)^train[_\-]+|[_\-]+train$", "", stem)
    return short or stem


def spec_relative(path: str, spec_folder: Path) -> str:
    """`path` relative to the spec's folder when it lies under that folder or beside it (under its parent);
    else unchanged (absolute), since a long `../../..` breaks as soon as either side moves."""
    target, folder = Path(path), spec_folder.resolve()
    beside = folder.parent != Path(folder.anchor) and folder.parent in target.parents  # never `../` up to /
    if folder in target.parents or beside:
        return os.path.relpath(target, folder)
    return path


def write_starter_spec(data: str, target: str, id_column: str | None = None, test: str | None = None,
                       name: str | None = None, out: str | None = None, force: bool = False) -> Path:
    if not data.startswith("sklearn:") and "://" not in data:
        data = str(Path(data).resolve())
        test = str(Path(test).resolve()) if test else None
    spec = starter_spec(data, target, id_column, test, name)
    path = Path(out or f"{spec['name']}.yaml")
    if path.exists() and not force:
        raise StarterError(f"{str(path)!r} already exists (use --force to overwrite, or --out another path)")
    local = not data.startswith("sklearn:") and "://" not in data
    if local:
        spec["data"]["train"] = spec_relative(data, path.parent)
        if test:
            spec["data"]["test"] = spec_relative(test, path.parent)
    header = (f"# Starter spec written by `foldwise init` ({spec['task']} task inferred from {target!r}).\n"
              "# Edit models, params and cv, then: foldwise run " + str(path) + "\n")
    path.write_text(header + yaml.safe_dump(spec, sort_keys=False))
    return path
