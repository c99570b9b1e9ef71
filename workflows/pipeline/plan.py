"""The RunPlan: everything a command knows before any task starts, built once at the edge.

Commands load the spec, then `plan_run` validates it against the data (InputError: exit 2,
nothing started, nothing logged) and fixes the facts every later node reads (task, metric,
scheme, model configs, code version, tracking URI), so nothing below re-derives them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from foldwise.tasks.fold_steps import split_preprocess
from foldwise.tasks.models import ModelConfig
from foldwise.workflows.pipeline.inputs import Inputs, usable_tracking_uri, validate_inputs
from foldwise.workflows.pipeline.provenance import code_version
from foldwise.workflows.pipeline.spec import WorkflowSpec


@dataclass(frozen=True)
class RunPlan:
    """A validated spec and the facts derived from it once."""

    spec: WorkflowSpec
    inputs: Inputs
    models: tuple[ModelConfig, ...]
    version: str  # the code version of tasks + each model's adapter (run tags)
    tracking_uri: str


def model_config(spec_model: Any, shared_preprocess: Sequence[Any] = ()) -> ModelConfig:
    """A spec model as the plain config the tasks take; `shared_preprocess` (the spec's top-level
    `preprocess:`) comes before the model's own."""
    numeric, fold_steps = split_preprocess([*shared_preprocess, *spec_model.preprocess])
    return ModelConfig(name=spec_model.name, type=spec_model.type, params=dict(spec_model.params),
                       estimator=spec_model.estimator, preprocess=numeric, fold_steps=fold_steps,
                       cpus=spec_model.resources.cpus, gpus=spec_model.resources.gpus,
                       memory=spec_model.resources.memory,
                       augment=spec_model.augment.model_dump() if spec_model.augment else None, tta=tuple(spec_model.tta),
                       seeds=tuple(spec_model.seeds))


def plan_run(spec: WorkflowSpec, tracking_uri: str | None = None) -> RunPlan:
    """Validate `spec` against its data and the tracking store; raises InputError before anything starts."""
    inputs = validate_inputs(spec)
    models = tuple(model_config(m, spec.preprocess) for m in spec.models)
    return RunPlan(spec=spec, inputs=inputs, models=models, version=code_version(models),
                   tracking_uri=usable_tracking_uri(tracking_uri, spec))
