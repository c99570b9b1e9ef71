"""A finished `foldwise run` as a model: its Predictor, logged as an MLflow pyfunc on the parent run
(`model/`) and, with `--register NAME`, a new version in the MLflow Model Registry."""

from __future__ import annotations

from typing import Any

from foldwise.tasks import images
from foldwise.tasks.data import DataError, read_header, read_table
from foldwise.tasks.predictor import Predictor, build_predictor
from foldwise.workflows.pipeline.dag import DagOutput
from foldwise.workflows.pipeline.plan import RunPlan
from foldwise.workflows.pipeline.provenance import MODEL_LIBRARIES
from foldwise.workflows.pipeline.spec_steps import step_config, topo_steps


def run_predictor(plan: RunPlan, dag: DagOutput, run_id: str) -> Predictor:
    """The run's fold models, ensemble and encoding as one Predictor."""
    spec, data = plan.spec, dag.data
    names = spec.ensemble.models or [m.name for m in plan.models]
    steps = tuple(step_config(s) for s in topo_steps(spec))
    raw = read_table(plan.inputs.data.train) if steps else None  # what the steps took, as run_steps reads it
    return build_predictor(data, dag.plan, dag.folds, dag.ensemble, list(names), spec.cv.seed, spec.ensemble.meta,
                           dict(spec.ensemble.params), kinds=_kinds(plan, data.columns, data.categories),
                           image_folder=images.table_folder(plan.inputs.data.train) if data.image_column else None,
                           info={"run_id": run_id, "experiment": spec.experiment, "metric": plan.inputs.metric,
                                 "cv_score": dag.ensemble.cv_score, "folds_hash": dag.plan.hash},
                           slots={m.name: (m.cpus, m.gpus) for m in plan.models},
                           layers=spec.ensemble.layers, passthrough=spec.ensemble.passthrough,
                           steps=steps, raw=raw)


def log_model(plan: RunPlan, dag: DagOutput, uri: str, run_id: str, register: str | None) -> dict[str, Any]:
    """Log the pyfunc on `run_id` (and register it); summary.json's `model` section."""
    from foldwise.workflows.tracking.logged_model import log_run_model, register_model

    p = run_predictor(plan, dag, run_id)
    packages = tuple(sorted({lib for m in plan.models for lib in MODEL_LIBRARIES.get(m.type, ())}
                            | {m.estimator.split(".")[0] for m in plan.models if m.estimator}))
    model_uri = log_run_model(uri, run_id, p, packages)
    out: dict[str, Any] = {"uri": model_uri, "outputs": list(p.outputs), "registered": None}
    if register:
        version = register_model(uri, run_id, register, dag.ensemble.cv_score)
        out["registered"] = {"name": register, "version": version, "uri": f"models:/{register}/{version}"}
    return out


def _kinds(plan: RunPlan, columns: tuple[str, ...], categories: dict) -> dict[str, str]:
    """numeric | categorical | datetime per feature: datetimes are numbers (seconds) to the models,
    but a user passes dates, so the model must know to convert them."""
    try:
        header = read_header(plan.inputs.data.train)
    except DataError:
        header = None
    kinds = {}
    for c in columns:
        if c in categories:
            kinds[c] = "categorical"
        elif header is not None and c in header.columns and str(header[c].dtype).startswith("datetime64"):
            kinds[c] = "datetime"
        else:
            kinds[c] = "numeric"
    return kinds
