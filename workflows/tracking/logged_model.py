"""A finished run as an MLflow model: a pyfunc wrapping the run's `Predictor`, and the registry.

`log_run_model` writes the pyfunc under the run's `model/` artifacts, so
`mlflow.pyfunc.load_model("runs:/<id>/model").predict(df)` gives what `foldwise run` wrote for
the same rows; `register_model` makes it a new version of a registered model, with the run's
`cv_score` as a tag. The pyfunc itself is this module's `FoldwiseModel` (imported by name when
loaded, so a process that loads it needs foldwise installed, as the model's requirements say)
and the pickled Predictor as its one artifact. Requirements are given, never inferred (inference
imports the model in a subprocess and may reach the network).
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import tempfile
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd

from foldwise.tasks.predictor import ENSEMBLE, LoadedPredictor, Predictor
from foldwise.workflows.tracking.tracker import quiet_store_logs

ARTIFACT_PATH = "model"
PREDICTOR_FILE = "predictor.pkl"
TAG_CV_SCORE = "cv_score"
TAG_SOURCE_RUN = "foldwise.run_id"


class FoldwiseModel(mlflow.pyfunc.PythonModel):
    """The pyfunc: raw feature rows in; one probability column per class (classification) or the
    predicted value (regression) out. `params={"model": NAME}` answers for one model instead of
    the ensemble."""

    def load_context(self, context: Any) -> None:
        with open(context.artifacts["predictor"], "rb") as f:
            predictor: Predictor = pickle.load(f)
        if getattr(predictor, "steps", ()):  # fail at load, naming the step, not at the first predict
            from foldwise.tasks.steps import step_import_problem

            problem = step_import_problem(predictor.steps)
            if problem:
                raise ImportError(problem)
        self._loaded: LoadedPredictor = predictor.load()

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        output = str((params or {}).get("model") or ENSEMBLE)
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        return output_frame(self._loaded.predictor, self._loaded.predict(frame, output))


def output_frame(p: Predictor, pred: np.ndarray) -> pd.DataFrame:
    """Predictions as the pyfunc returns them: a column per class (binary too), or the target."""
    if p.task == "binary":
        return pd.DataFrame({str(p.classes[0]): 1.0 - pred, str(p.classes[1]): pred})
    if p.task == "multiclass":
        return pd.DataFrame(pred, columns=[str(c) for c in p.classes])
    return pd.DataFrame({p.target: pred})


def example_frame(p: Predictor, rows: int = 5) -> pd.DataFrame:
    """Training rows as a user passes them (levels as text, numbers as numbers): the input example."""
    X = p.reference[:rows]
    cols: dict[str, Any] = {}
    for j, c in enumerate(p.columns):
        if p.kinds[c] == "categorical":
            levels = np.asarray(p.categories[c], dtype=object)
            cols[c] = [levels[int(v)] if not np.isnan(v) else None for v in X[:, j]]
        elif p.kinds[c] == "datetime":
            cols[c] = pd.to_datetime(X[:, j], unit="s")
        else:
            cols[c] = X[:, j]
    if p.image_column:
        cols[p.image_column] = [f"image_{i}.png" for i in range(len(X))]
    return pd.DataFrame(cols)


def requirements(p: Predictor, model_packages: tuple[str, ...] = ()) -> list[str]:
    """Pinned to what trained the run: foldwise, MLflow, the array libraries and each model's library."""
    out = []
    for dist in ("foldwise", "mlflow", "numpy", "pandas", "scikit-learn", "scipy", *model_packages):
        try:
            out.append(f"{dist}=={metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            continue
    return sorted(set(out))


def step_code_paths(p: Predictor) -> list[str]:
    """The user's own step modules (not installed: a package folder or a plain file in the project
    folder) as MLflow `code_paths`: copied into the model's `code/`, which MLflow puts first on
    sys.path when it loads the model, so the steps import wherever the model is loaded."""
    from foldwise.tasks.code_hash import project_sources

    out: dict[str, None] = {}
    for s in getattr(p, "steps", ()):
        for path in project_sources(s.fn.partition(":")[0]):
            out[str(path)] = None
    return list(out)


@contextlib.contextmanager
def _in_folder(folder: str) -> Iterator[None]:
    """Run with `folder` as the working directory: MLflow's save_model reads the working directory,
    which a Ray Job's driver may no longer have (its uploaded working_dir can be gone by then)."""
    try:
        previous: str | None = os.getcwd()
    except FileNotFoundError:
        previous = None
    os.chdir(folder)
    try:
        yield
    finally:
        if previous is not None:
            os.chdir(previous)


def log_run_model(uri: str, run_id: str, p: Predictor, model_packages: tuple[str, ...] = ()) -> str:
    """Save the pyfunc and upload it as the run's `model/` artifacts; returns `runs:/<id>/model`."""
    from mlflow.environment_variables import MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR
    from mlflow.models import infer_signature
    from mlflow.tracking import MlflowClient

    quiet_store_logs()
    if MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.name not in os.environ:  # its bar for a tiny download under our table
        MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.set("false")
    example = example_frame(p)
    signature = infer_signature(example, output_frame(p, np.zeros((len(example), p.n_classes))[:, 1]
                                                       if p.task == "binary" else np.zeros((len(example), p.n_classes))
                                                       if p.task == "multiclass" else np.zeros(len(example))),
                                params={"model": ENSEMBLE})
    if getattr(p, "steps", ()):  # it takes the raw columns and makes the step columns itself: no column schema to enforce
        signature, example = None, None
    code = step_code_paths(p)
    with tempfile.TemporaryDirectory(prefix="foldwise-model-") as tmp:
        pkl = Path(tmp) / PREDICTOR_FILE
        with open(pkl, "wb") as f:
            pickle.dump(p, f, protocol=pickle.HIGHEST_PROTOCOL)
        path = Path(tmp) / ARTIFACT_PATH
        quiet = logging.getLogger("mlflow")
        level = quiet.level
        quiet.setLevel(logging.ERROR)  # its notes on cloudpickle and the input example are not for the user
        try:
            with _no_requirement_check(), _in_folder(tmp):
                mlflow.pyfunc.save_model(str(path), python_model=FoldwiseModel(), artifacts={"predictor": str(pkl)},
                                         signature=signature, input_example=example, code_paths=code or None,
                                         pip_requirements=requirements(p, model_packages))
        finally:
            quiet.setLevel(level)
        MlflowClient(tracking_uri=uri).log_artifacts(run_id, str(path), ARTIFACT_PATH)
    return f"runs:/{run_id}/{ARTIFACT_PATH}"


@contextlib.contextmanager
def _no_requirement_check() -> Iterator[None]:
    """Skip MLflow's check that the requirements match this environment: they are this environment's
    own versions (`requirements`), and the check maps every installed distribution's files first,
    3-6 s per process, which would be most of a cached rerun's wall time."""
    import mlflow.utils.environment as env

    original = getattr(env, "warn_dependency_requirement_mismatches", None)
    if original is None:  # a later MLflow moved it: it checks, slower, nothing breaks
        yield
        return
    env.warn_dependency_requirement_mismatches = lambda requirements: None
    try:
        yield
    finally:
        env.warn_dependency_requirement_mismatches = original


def register_model(uri: str, run_id: str, name: str, cv_score: float) -> int:
    """A new version of registered model `name` (created if new) from the run's `model/`; its number."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    try:
        client.create_registered_model(name)
    except MlflowException as e:
        if "RESOURCE_ALREADY_EXISTS" not in str(e.error_code) and "already exists" not in str(e):
            raise
    source = f"{client.get_run(run_id).info.artifact_uri.rstrip('/')}/{ARTIFACT_PATH}"
    version = client.create_model_version(name, source, run_id=run_id,
                                          tags={TAG_CV_SCORE: repr(float(cv_score)), TAG_SOURCE_RUN: run_id})
    return int(version.version)


class ModelNotFound(LookupError):
    """RUN names no logged foldwise model (unknown run, a run without `model/`, unknown registry name
    or version): exit 2, with what does exist."""


def find_model(uri: str, ref: str) -> tuple[Predictor, dict[str, str]]:
    """The Predictor behind RUN (a run id or name, or `models:/NAME/VERSION`) and where it came from:
    {run_id, experiment, model_uri}. Raises ModelNotFound naming what exists."""
    from mlflow.artifacts import download_artifacts
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from foldwise.workflows.tracking.tracker import RunNotFound, RunReader

    quiet_store_logs()
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    if ref.startswith("models:/"):
        source, run_id = _registry_source(client, ref)
        model_uri = ref
    else:
        reader = RunReader(uri)
        try:
            run = reader.find(ref)
        except RunNotFound as e:
            raise ModelNotFound(f"{e}{_runs_with_models(client)}") from None
        if ARTIFACT_PATH not in reader.artifact_names(run.run_id):
            raise ModelNotFound(f"run {ref!r} ({run.run_id}, command {run.tags.get('foldwise.command', '?')}) has no "
                                f"logged model (`{ARTIFACT_PATH}/`){_runs_with_models(client)}")
        run_id, model_uri = run.run_id, f"runs:/{run.run_id}/{ARTIFACT_PATH}"
        source = f"{client.get_run(run_id).info.artifact_uri.rstrip('/')}/{ARTIFACT_PATH}"
    with tempfile.TemporaryDirectory(prefix="foldwise-model-") as tmp:
        try:
            path = download_artifacts(artifact_uri=f"{source}/artifacts/{PREDICTOR_FILE}", dst_path=tmp, tracking_uri=uri)
        except (MlflowException, OSError) as e:
            raise ModelNotFound(f"{ref}: its model has no {PREDICTOR_FILE} (not a foldwise run's model?): "
                                f"{str(e).splitlines()[0]}") from None
        with open(path, "rb") as f:
            predictor = pickle.load(f)
    experiment = client.get_experiment(client.get_run(run_id).info.experiment_id).name if run_id else ""
    return predictor, {"run_id": run_id or "", "experiment": experiment, "model_uri": model_uri}


def _registry_source(client: Any, ref: str) -> tuple[str, str | None]:
    from mlflow.exceptions import MlflowException

    name, _, version = ref.removeprefix("models:/").rstrip("/").rpartition("/")
    if not name or not version.isdigit():
        raise ModelNotFound(f"{ref!r}: expected models:/NAME/VERSION (a version number)")
    try:
        versions = sorted(int(v.version) for v in client.search_model_versions(f"name = '{name}'"))
    except MlflowException:
        versions = []
    if not versions:
        names = sorted(m.name for m in client.search_registered_models(max_results=50))
        raise ModelNotFound(f"no registered model {name!r} (registered: {', '.join(names) or 'none'})")
    if int(version) not in versions:
        raise ModelNotFound(f"registered model {name!r} has no version {version} (versions: "
                            f"{', '.join(map(str, versions))})")
    mv = client.get_model_version(name, version)
    return mv.source, mv.run_id


def _runs_with_models(client: Any, limit: int = 5) -> str:
    """'; runs with a logged model: NAME (ID), ...' from the newest foldwise runs, or ''."""
    exp_ids = [e.experiment_id for e in client.search_experiments()]
    if not exp_ids:
        return "; the store has no runs"
    runs = client.search_runs(exp_ids, "tags.`foldwise.command` = 'run'", max_results=50,
                              order_by=["attributes.start_time DESC"])
    found = [f"{r.info.run_name} ({r.info.run_id})" for r in runs
             if r.info.status == "FINISHED" and "mlflow.parentRunId" not in r.data.tags][:limit]
    return f"; runs with a logged model: {', '.join(found)}" if found else "; the store has no finished foldwise run"
