"""MLflow tracking: the only module that imports mlflow.

Only the driver writes (tasks return results), so a sqlite store stays safe; metrics,
params and tags go in batches. Key names live here as constants so that compare, the
UI test and users' own queries agree on them.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

DEFAULT_URI = "sqlite:///mlflow.db"

# tags
TAG_COMMAND = "foldwise.command"
TAG_MODEL = "foldwise.model"
TAG_FOLDS_HASH = "folds_hash"
TAG_DATA = "data_fingerprint"
TAG_CODE = "foldwise.code_version"
TAG_GIT = "mlflow.source.git.commit"
TAG_PARENT = "mlflow.parentRunId"
TAG_RUN_NAME = "mlflow.runName"
TAG_NOTE = "mlflow.note.content"
# metrics
M_FOLD_SCORE = "fold_score"
M_CV_SCORE = "cv_score"
M_FIT_SECONDS = "fit_seconds"
M_PREDICT_SECONDS = "predict_seconds"
M_MODEL_BYTES = "model_bytes"

_MAX_PARAMS_PER_BATCH = 100
_MAX_METRICS_PER_BATCH = 1000
_MAX_PARAM_LEN = 6000


def resolve_uri(explicit: str | None = None, spec_uri: str | None = None) -> str:
    """--tracking-uri, then the spec's tracking.uri, then MLFLOW_TRACKING_URI, then sqlite:///mlflow.db."""
    return explicit or spec_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


class Tracker:
    """A thin, batched writer over MlflowClient for one experiment."""

    def __init__(self, uri: str, experiment: str) -> None:
        import logging

        from mlflow.tracking import MlflowClient

        logging.getLogger("alembic").setLevel(logging.WARNING)
        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)
        found = self.client.get_experiment_by_name(experiment)
        self.experiment_id = found.experiment_id if found else self.client.create_experiment(experiment)
        self.experiment = experiment

    def start_run(self, name: str, tags: Mapping[str, str], parent_id: str | None = None) -> str:
        all_tags = dict(tags)
        if parent_id:
            all_tags[TAG_PARENT] = parent_id
        run = self.client.create_run(self.experiment_id, run_name=name, tags=all_tags)
        return run.info.run_id

    def log(self, run_id: str, params: Mapping[str, Any] | None = None, metrics: Mapping[str, float] | None = None,
            tags: Mapping[str, str] | None = None, steps: Mapping[str, Iterable[float]] | None = None) -> None:
        """Params, summary metrics, tags and stepped metrics (step = index) in few batches."""
        from mlflow.entities import Metric, Param, RunTag
        from mlflow.utils.time import get_current_time_millis

        now = get_current_time_millis()
        param_list = [Param(k, str(v)[:_MAX_PARAM_LEN]) for k, v in (params or {}).items()]
        metric_list = [Metric(k, float(v), now, 0) for k, v in (metrics or {}).items()]
        for key, values in (steps or {}).items():
            metric_list += [Metric(key, float(v), now, i) for i, v in enumerate(values)]
        tag_list = [RunTag(k, str(v)) for k, v in (tags or {}).items()]
        for i in range(0, max(len(param_list), 1), _MAX_PARAMS_PER_BATCH):
            chunk = param_list[i:i + _MAX_PARAMS_PER_BATCH]
            first = i == 0
            self.client.log_batch(run_id, params=chunk, metrics=metric_list[:_MAX_METRICS_PER_BATCH] if first else [],
                                  tags=tag_list if first else [])
        for i in range(_MAX_METRICS_PER_BATCH, len(metric_list), _MAX_METRICS_PER_BATCH):
            self.client.log_batch(run_id, metrics=metric_list[i:i + _MAX_METRICS_PER_BATCH])

    def log_step(self, run_id: str, key: str, value: float, step: int) -> None:
        """One stepped metric as soon as it exists (a fold score while the others still run)."""
        self.client.log_metric(run_id, key, float(value), step=step)

    def log_artifacts(self, run_id: str, folder: Path) -> None:
        self.client.log_artifacts(run_id, str(folder))

    def finish(self, run_id: str, ok: bool) -> None:
        self.client.set_terminated(run_id, "FINISHED" if ok else "FAILED")

    def run_status(self, run_id: str) -> str:
        return self.client.get_run(run_id).info.status


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': [1, {'c': 2}]}} -> {'a.b.0': 1, 'a.b.1.c': 2}: MLflow params are flat."""
    out: dict[str, Any] = {}
    if isinstance(value, Mapping):
        for k, v in value.items():
            out.update(flatten(v, f"{prefix}{k}."))
    elif isinstance(value, list | tuple) and value and any(isinstance(v, Mapping | list) for v in value):
        for i, v in enumerate(value):
            out.update(flatten(v, f"{prefix}{i}."))
    elif prefix:
        out[prefix[:-1]] = value
    return out
