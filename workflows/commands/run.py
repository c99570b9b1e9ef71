"""`foldwise run`: a spec -> its RunPlan at the edge -> the run graph (pipeline.cross_validation)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from foldwise.workflows.pipeline.cross_validation import CVResult, cross_validate
from foldwise.workflows.pipeline.plan import plan_run
from foldwise.workflows.pipeline.preflight import preflight
from foldwise.workflows.pipeline.spec import WorkflowSpec, load_spec

__all__ = ["CVResult", "run_cv"]


def run_cv(spec: WorkflowSpec | str | Path, *, overrides: Sequence[str] = (), out: str | Path | None = None,
           tracking_uri: str | None = None, address: str | None = None, executor: str = "auto",
           progress: bool = False, no_cache: bool = False, cache_root: str | None = None,
           checks: bool = True, parent_run_id: str | None = None, run_name: str | None = None,
           register: str | None = None) -> CVResult:
    """The Python API of `foldwise run` (same data as summary.json, plus the OOF frame).

    `checks` runs the cheap data checks of `foldwise check` first (no model, no drift):
    their errors stop the run before any task, their warnings go to stderr, summary.json
    and the MLflow run. `parent_run_id` nests the run under another command's MLflow run.
    Every run logs its fold models and ensemble as an MLflow pyfunc (`runs:/<id>/model`);
    `register` also makes it a new version of that registered model.
    Raises SpecError/InputError (nothing started, nothing logged) or RunFailed.
    """
    wall_start, started = time.perf_counter(), time.time()
    if not isinstance(spec, WorkflowSpec):
        spec = load_spec(spec, overrides)
    plan = plan_run(spec, tracking_uri)
    preflight(spec, task=plan.inputs.task, out=out, cache_root=cache_root, address=address, executor=executor)
    return cross_validate(plan, out=out, address=address, executor=executor, progress=progress, no_cache=no_cache,
                          cache_root=cache_root, checks=checks, parent_run_id=parent_run_id, run_name=run_name,
                          wall_start=wall_start, started=started, register=register)
