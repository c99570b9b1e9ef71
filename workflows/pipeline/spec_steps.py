"""The spec's keys for a user's own features: `steps:` (frame steps) and fold steps in `preprocess:`.

Kept beside spec.py (which imports them): what a step entry may hold and how a `preprocess:`
list is checked, each mistake one line naming the key and what would be valid.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from foldwise.tasks.models import PREPROCESS_STEPS


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class StepSpec(_Frozen):
    """A frame step (`steps:`): `fn(frame, **params)` adds or replaces feature columns once, before the folds."""

    name: str = Field(pattern=r"^[A-Za-z0-9_\-]+$")
    fn: str  # 'package.module:function'
    params: dict[str, Any] = Field(default_factory=dict)
    inputs: list[str] = Field(default_factory=lambda: ["raw"])  # raw | names of other steps
    mode: Literal["together", "apart"] = "together"  # train + test rows in one call, or one call each

    @model_validator(mode="after")
    def _callable(self) -> StepSpec:
        from foldwise.tasks.steps import fn_problem

        problem = fn_problem(self.fn, self.params)
        if problem:
            raise ValueError(problem)
        return self


def check_preprocess(entries: list[str | dict[str, Any]]) -> list[str | dict[str, Any]]:
    """Numeric steps by name (PREPROCESS_STEPS), or fold steps (built-in names, or a mapping)."""
    from foldwise.tasks.fold_steps import FoldStepError, parse_fold_step

    for i, step in enumerate(entries):
        if isinstance(step, str) and step in PREPROCESS_STEPS:
            continue
        try:
            parse_fold_step(step, i)
        except FoldStepError as e:
            raise ValueError(f"{e} (numeric steps: {', '.join(PREPROCESS_STEPS)})") from None
    return entries


def step_config(s: StepSpec):  # noqa: ANN201 - tasks.steps.FrameStepConfig, imported lazily
    """A spec step as the plain config the step tasks take."""
    from foldwise.tasks.steps import FrameStepConfig

    return FrameStepConfig(name=s.name, fn=s.fn, params=dict(s.params), inputs=tuple(s.inputs), mode=s.mode)


def check_step_graph(steps: list[StepSpec]) -> list[StepSpec]:
    """Duplicate names, unknown inputs, a cycle: one line (pydantic puts the key `steps` before it)."""
    from foldwise.tasks.steps import graph_problem

    problem = graph_problem([step_config(s) for s in steps])
    if problem:
        raise ValueError(problem)
    return steps


Steps = Annotated[list[StepSpec], AfterValidator(check_step_graph)]
Preprocess = Annotated[list[str | dict[str, Any]], AfterValidator(check_preprocess)]


def topo_steps(spec: Any) -> list[StepSpec]:
    """The spec's steps with every step after its inputs (the order they replay in)."""
    from foldwise.tasks.steps import topo_order

    by_name = {s.name: s for s in spec.steps}
    return [by_name[c.name] for c in topo_order([step_config(s) for s in spec.steps])]
