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


def plan_variants(spec: WorkflowSpec, inputs: Inputs, only: Sequence[str] | None = None,
                  steps: Sequence[str] | None = None, step_facts: dict[str, dict] | None = None) -> list[Variant]:
    """The baseline, then one variant per feature group (InputError for a group the data cannot honour),
    then one per frame step `steps` names (its columns and its descendants' columns dropped).

    With frame steps, groups are matched against the stepped columns (the steps' new columns too).
    With `steps` and no `only`, a spec without `features.groups` ablates the steps alone."""
    step_facts = step_facts or {}
    columns = _stepped_columns(inputs.summary.columns, step_facts, inputs.data.drop)
    if steps is not None and only is None and not spec.features.groups:
        return [Variant(BASELINE, None, ()), *step_variants(spec, steps, step_facts, columns)]
    d = inputs.data
    not_features = {c: what for c, what in ((d.target, "the target"), (d.id, "the id column"),
                                            (d.groups, "the groups column")) if c}
    not_features |= {c: "in features.drop" for c in d.drop}
    try:
        resolved = resolve_groups(spec.features.groups, columns, not_features)
        chosen = select_groups(resolved, only)
    except GroupError as e:
        raise InputError(str(e)) from None
    return ([Variant(BASELINE, None, ())] + [Variant(name, name, cols) for name, cols in chosen.items()]
            + (step_variants(spec, steps, step_facts, columns) if steps is not None else []))


STEP_PREFIX = "step:"  # a step variant's name: never a group's (groups are matched to columns, steps to `steps:`)


def _stepped_columns(raw: Sequence[str], facts: dict[str, dict], drop: Sequence[str]) -> tuple[str, ...]:
    """The feature columns after the frame steps: the raw ones (less those a step removed) and the new ones."""
    removed = {c for f in facts.values() for c in f.get("removed", ())}
    cols = [c for c in raw if c not in removed]
    for f in facts.values():
        cols += [c for c in f["columns"] if c not in cols and c not in drop]
    return tuple(cols)


def check_step_names(spec: WorkflowSpec, names: Sequence[str]) -> list[str]:
    """The frame steps `--steps` names (every step for `all`); InputError naming the valid ones."""
    known = [s.name for s in spec.steps]
    if not known:
        raise InputError("--steps: this spec has no frame steps (steps:)")
    chosen = known if list(names) == ["all"] else list(dict.fromkeys(names))
    unknown = [n for n in chosen if n not in known]
    if unknown or not chosen:
        raise InputError(f"--steps: unknown step {(unknown or [''])[0]!r} (steps: {', '.join(known)}, or all)")
    return chosen


def step_variants(spec: WorkflowSpec, names: Sequence[str], facts: dict[str, dict],
                  columns: Sequence[str]) -> list[Variant]:
    """One variant per named frame step (every step for `all`): the columns it made and those its
    descendants made are dropped, so the variant is the run without that step (a column a step
    replaced is dropped, not restored to its raw values)."""
    from foldwise.tasks.steps import descendants
    from foldwise.workflows.pipeline.steps import step_configs

    configs = step_configs(spec)
    chosen = check_step_names(spec, names)
    out = []
    for name in chosen:
        made = [c for s in (name, *descendants(configs, name)) for c in facts[s]["columns"]]
        cols = tuple(c for c in columns if c in set(made))
        if not cols:
            raise InputError(f"--steps: step {name!r} made no feature column, so there is nothing to drop")
        out.append(Variant(f"{STEP_PREFIX}{name}", f"{STEP_PREFIX}{name}", cols))
    return out


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

