"""`foldwise init DATA --target COL`: a starter spec for the user's own file, in one step."""

from __future__ import annotations

import argparse
import re
import sys
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


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", help="training data (.csv/.parquet path or URI, or sklearn:NAME)")
    p.add_argument("--target", required=True, help="target column")
    p.add_argument("--id", help="id column (kept out of features, written to the submission)")
    p.add_argument("--test", help="test data with the same columns minus the target")
    p.add_argument("--name", help="spec name (default: the data file's stem)")
    p.add_argument("--out", help="where to write the spec (default: <name>.yaml)")
    p.add_argument("--force", action="store_true", help="overwrite an existing spec file")


def command(args: argparse.Namespace) -> int:
    from foldwise.workflows.cli.main import EXIT_OK, bad_input

    try:
        path = write_starter_spec(args.data, target=args.target, id_column=args.id, test=args.test, name=args.name,
                                  out=args.out, force=args.force)
    except StarterError as e:
        return bad_input(str(e))
    print(f"wrote a starter spec; run it with: foldwise run {path}", file=sys.stderr)
    print(str(path))
    return EXIT_OK
