"""What an ablation compares: the baseline and one variant per feature group."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from foldwise.tasks.ablation import (
    GroupError,
    resolve_groups,
    select_groups,
)
from foldwise.tasks.models import ModelConfig
from foldwise.workflows.errors import InputError
from foldwise.workflows.pipeline.inputs import Inputs
from foldwise.workflows.pipeline.spec import WorkflowSpec

BASELINE = "baseline"


CLOSED_FORM_METRICS = ("roc_auc", "accuracy", "neg_log_loss", "neg_mean_squared_error", "neg_root_mean_squared_error",
                       "neg_mean_absolute_error", "r2")


BOOTSTRAP_DEFAULT = 1000  # resamples for the metrics scored in closed form


BOOTSTRAP_SLOW_DEFAULT = 200  # for the others (one sklearn call per resample and fold)


MIN_BOOTSTRAP = 100


@dataclass(frozen=True)
class Variant:
    name: str  # "baseline" or the dropped group's name
    dropped: str | None  # the group left out (None: the baseline)
    columns: tuple[str, ...]  # the feature columns left out


@dataclass(frozen=True)
class AblationPlan:
    """What an ablation fits: the baseline and one variant per group, each variant x model a DAG node."""

    variants: tuple[Variant, ...]  # the baseline first
    nodes: dict[str, tuple[Variant, ModelConfig]]  # node name -> (variant, model)
    n_boot: int  # bootstrap resamples of the intervals
    repeats: int  # shuffles per group for permutation importance


def plan_variants(spec: WorkflowSpec, inputs: Inputs, only: Sequence[str] | None = None) -> list[Variant]:
    """The baseline, then one variant per feature group (InputError for a group the data cannot honour)."""
    d = inputs.data
    not_features = {c: what for c, what in ((d.target, "the target"), (d.id, "the id column"),
                                            (d.groups, "the groups column")) if c}
    not_features |= {c: "in features.drop" for c in d.drop}
    try:
        resolved = resolve_groups(spec.features.groups, inputs.summary.columns, not_features)
        chosen = select_groups(resolved, only)
    except GroupError as e:
        raise InputError(str(e)) from None
    return [Variant(BASELINE, None, ())] + [Variant(name, name, cols) for name, cols in chosen.items()]


def node_name(v: Variant, m: ModelConfig) -> str:
    """A fit's name in the DAG: the model's own name for the baseline (as in `foldwise run`), else
    'model -group' (model names hold no spaces, so these never collide)."""
    return m.name if v.dropped is None else f"{m.name} -{v.dropped}"


def only_models(spec: WorkflowSpec, names: Sequence[str] | None) -> WorkflowSpec:
    if names is None:
        return spec
    known = [m.name for m in spec.models]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise InputError(f"--models: unknown model {unknown[0]!r} (models: {', '.join(known)})")
    if not names:
        raise InputError(f"--models: name at least one model (models: {', '.join(known)})")
    keep = [m for m in spec.models if m.name in names]
    ens_models = [n for n in (spec.ensemble.models or []) if n in names] or None
    return spec.model_copy(update={"models": keep, "ensemble": spec.ensemble.model_copy(update={"models": ens_models})})

