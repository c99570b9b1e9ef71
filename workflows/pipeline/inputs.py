"""Checks against the data, done on the driver before any task starts.

`validate_inputs` turns a spec into the facts the run needs (task, metric, scheme) or
raises `InputError` with one line naming the key/column and what would be valid.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, replace

from foldwise.tasks.data import DataConfig, DataError, DataSummary, inspect_data
from foldwise.tasks.folds import fold_problem
from foldwise.tasks.metrics import DEFAULT_METRIC, check_metric
from foldwise.workflows.errors import InputError, SpecError
from foldwise.workflows.pipeline.spec import WorkflowSpec
from foldwise.workflows.tracking import tracker as tk


def usable_tracking_uri(explicit: str | None, spec: WorkflowSpec) -> str:
    """The tracking URI a command will log to (flag, then spec, then default); InputError when it
    names a server where nothing answers or a store MLflow cannot open, so no compute starts for a run
    that cannot be logged."""
    uri = tk.resolve_uri(explicit, spec.tracking.uri)
    problem = tk.uri_problem(uri)
    if problem:
        raise InputError(problem)
    return uri


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
                      categorical=tuple(spec.features.categorical), task=task or spec.task, image=spec.data.image,
                      positive_class=spec.data.positive_class)


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
        problem = model_param_problem(model.type, model.estimator, model.params)
        if problem:
            raise InputError(f"models.{i}.params ({model.name}): {problem}")
        problem = image_model_problem(model, spec.data.image, summary.columns)
        if problem:
            raise InputError(f"models.{i} ({model.name}): {problem}")
    config = data_config(spec, task)
    problem = _slice_problem(spec.slices, config)
    if problem:
        raise InputError(problem)
    if spec.submission.kind == "label" and task == "regression":
        raise InputError("submission.kind: label is for classification tasks (this task is regression); use proba")
    return Inputs(task=task, metric=metric, scheme=scheme, data=config, summary=summary)


def _slice_problem(slices: dict[str, str], config: DataConfig) -> str | None:
    """A spec slice that cannot be evaluated on the feature columns (+ `fold`), checked on the first rows."""
    if not slices:
        return None
    from foldwise.tasks.data import feature_columns, read_header
    from foldwise.tasks.slices import SliceError, slice_mask

    head = read_header(config.train)
    head = head[feature_columns(list(head.columns), config)].assign(fold=0)
    for name, query in slices.items():
        try:
            slice_mask(head, name, query)
        except SliceError as e:
            return f"slices.{name}: {str(e).removeprefix(f'slice {name!r}: ')} (slices see the feature columns and `fold`)"
    return None


def image_model_problem(model, image_column: str | None, features: tuple[str, ...]) -> str | None:  # noqa: ANN001
    """Image models need data.image (and their pipelines must keep the model's input size);
    other built-in models need a tabular feature besides the image column."""
    if model.type == "torch_image":
        if image_column is None:
            return "type torch_image needs data.image, the column of image paths"
        from foldwise.tasks.models.image_params import check_model

        return check_model(model.params, model.augment.model_dump() if model.augment else None, model.tta)
    if image_column is not None and not features and ":" not in model.type:
        return (f"type {model.type} learns from tabular columns, and this data has none besides the image column "
                f"{image_column!r}; use type torch_image")
    return None


def model_param_problem(kind: str, estimator: str | None, params: dict) -> str | None:
    if kind == "sklearn" and estimator:
        from foldwise.tasks.models.sklearn_model import check_params

        return check_params(estimator, params)
    if kind in ("lightgbm", "xgboost", "catboost"):
        try:
            module = importlib.import_module(f"foldwise.tasks.models.{kind}_model")
        except ImportError as e:
            return str(e)
        return module.check_params(params)
    if kind == "torch_mlp":
        from foldwise.tasks.models.mlp_params import check_params

        return check_params(params)
    if kind == "torch_image":
        from foldwise.tasks.models.image_params import check_params

        return check_params(params)
    return None


__all__ = ["InputError", "Inputs", "SpecError", "validate_inputs", "data_config"]


# --------------------------------------------------------------------------- data checks on the full frames
# `foldwise check` runs all of these; `foldwise run` can run them too (`data_warnings`):
# they read the frames once on the driver and fit no model but a per-column bincount.


@dataclass(frozen=True)
class DataFindings:
    """The errors and warnings of the frame checks, plus the frames they were read from."""

    errors: tuple  # tasks.checks.Finding, level "error"
    warnings: tuple  # tasks.checks.Finding, level "warning"
    train: object = None  # pandas frames, kept for the caller (target drift); None when not read
    other: object = None  # tasks.checks.Side or None

    def first_error_line(self) -> str:
        more = f" (and {len(self.errors) - 1} more error(s))" if len(self.errors) > 1 else ""
        return self.errors[0].message + more


def data_findings(spec: WorkflowSpec, inputs: Inputs, reference: str | None = None,
                  frames: tuple | None = None) -> DataFindings:
    """Read train and the other side (the spec's test, or `reference`) in full; check both.

    With `reference` the comparison is new training data (data.train) vs an old version;
    the spec's test set is then not read. Warnings whose code the spec's `checks.ignore`
    names are left out. Raises InputError when a file cannot be read.
    """
    findings = _all_findings(spec, inputs, reference, frames)
    ignore = set(spec.checks.ignore)
    return replace(findings, warnings=tuple(f for f in findings.warnings if f.code not in ignore))


def _all_findings(spec: WorkflowSpec, inputs: Inputs, reference: str | None = None,
                  frames: tuple | None = None) -> DataFindings:
    """`frames`: (train, test) already read and stepped (the frame steps' output), checked instead of the files."""
    from foldwise.tasks.checks import Side, frame_errors, frame_warnings
    from foldwise.tasks.data import read_table

    try:
        train = read_table(spec.data.train) if frames is None else frames[0]
    except DataError as e:
        raise InputError(f"data.train: {e}") from None
    other = None
    source, key, role = (reference, "--reference", "reference") if reference else (spec.data.test, "data.test", "test")
    if frames is not None and frames[1] is not None:
        other = Side(frames[1], key=key, source=source, role=role)
    elif source is not None:
        try:
            other = Side(read_table(source), key=key, source=source, role=role)
        except DataError as e:
            raise InputError(f"{key}: {e}") from None
    errors = frame_errors(train, inputs.data, other)
    if errors:
        return DataFindings(errors=errors, warnings=(), train=train, other=other)
    warnings = frame_warnings(train, inputs.data, inputs.task, inputs.summary.y, other, seed=spec.cv.seed)
    return DataFindings(errors=(), warnings=warnings, train=train, other=other)


def data_warnings(spec: WorkflowSpec, inputs: Inputs, frames: tuple | None = None) -> tuple[list[str], DataFindings]:
    """The cheap data checks for `foldwise run`: every warning line (each ends with its code,
    `[leak]`), and the findings, whose frames the run prepares its arrays from (so the files are
    read once). The lines are cached with the data, so which of them a run shows (`shown_warnings`)
    is decided after the cache, from the spec's `checks.ignore` and the scheme.

    Call after `validate_inputs` and before any task starts. Raises InputError (exit 2)
    for the errors only a full read finds (e.g. a constant regression target, duplicate
    test ids, a column that is numeric in train but text in test past the first rows).
    No adversarial model, no drift statistics: `foldwise check` adds those.
    """
    findings = _all_findings(spec, inputs, frames=frames)
    if findings.errors:
        raise InputError(findings.first_error_line())
    return [f.line for f in findings.warnings], findings


def shown_warnings(lines: list[str], spec: WorkflowSpec, scheme: str) -> list[str]:
    """The warning lines a run prints and records: not those whose code `checks.ignore` names, and
    the row-order warning only under the time scheme (every other scheme shuffles the rows)."""
    hidden = set(spec.checks.ignore) | ({"row_order_tracks_target"} if scheme != "time" else set())
    return [line for line in lines if not any(line.endswith(f" [{code}]") for code in hidden)]


__all__ += ["DataFindings", "data_findings", "data_warnings", "shown_warnings"]
