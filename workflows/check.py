"""Checks against the data, done on the driver before any task starts.

`validate_inputs` turns a spec into the facts the run needs (task, metric, scheme) or
raises `InputError` with one line naming the key/column and what would be valid.
"""

from __future__ import annotations

from dataclasses import dataclass

from tasks.data import DataConfig, DataError, DataSummary, inspect_data
from tasks.folds import fold_problem
from tasks.metrics import DEFAULT_METRIC, check_metric
from workflows.spec import SpecError, WorkflowSpec


class InputError(ValueError):
    """Bad spec, data or arguments: exit code 2, nothing started, nothing logged."""


@dataclass(frozen=True)
class Inputs:
    task: str
    metric: str
    scheme: str
    data: DataConfig
    summary: DataSummary


def data_config(spec: WorkflowSpec, task: str | None = None) -> DataConfig:
    return DataConfig(train=spec.data.train, test=spec.data.test, target=spec.data.target, id=spec.data.id,
                      groups=spec.data.groups, drop=tuple(spec.features.drop),
                      categorical=tuple(spec.features.categorical), task=task or spec.task)


def validate_inputs(spec: WorkflowSpec) -> Inputs:
    try:
        summary = inspect_data(data_config(spec))
    except DataError as e:
        raise InputError(str(e)) from None
    task = summary.task
    metric = spec.metric or DEFAULT_METRIC[task]
    problem = check_metric(metric, task, summary.n_classes)
    if problem:
        raise InputError(f"metric: {problem}")
    scheme = spec.cv.scheme or ("kfold" if task == "regression" else "stratified")
    problem = fold_problem(summary.y, summary.groups, scheme, spec.cv.folds, task, summary.classes)
    if problem:
        raise InputError(problem)
    if spec.ensemble.method == "rank_mean" and task != "binary" and len(spec.models) > 1:
        raise InputError(f"ensemble.method: rank_mean is for binary tasks (this task is {task}); use mean, weights or stack")
    for i, model in enumerate(spec.models):
        problem = _model_param_problem(model.type, model.estimator, model.params)
        if problem:
            raise InputError(f"models.{i}.params ({model.name}): {problem}")
    return Inputs(task=task, metric=metric, scheme=scheme, data=data_config(spec, task), summary=summary)


def _model_param_problem(kind: str, estimator: str | None, params: dict) -> str | None:
    if kind == "sklearn" and estimator:
        from tasks.models.sklearn_model import check_params

        return check_params(estimator, params)
    if kind == "lightgbm":
        from tasks.models.lightgbm_model import check_params

        return check_params(params)
    if kind == "torch_mlp":
        from tasks.models.mlp_params import check_params

        return check_params(params)
    return None


__all__ = ["InputError", "Inputs", "SpecError", "validate_inputs", "data_config"]
