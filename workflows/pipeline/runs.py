"""When a command's MLflow runs open, and how fold results reach them.

MLflow's import and store opening cost ~1.4 CPU-s on the driver: they run on a thread while
the folds run, started when it costs the folds least (`set_up_when`); fold results that finish
first wait in `FoldLog` until the runs are open.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from foldwise.infra import storage
from foldwise.tasks.train import FoldResult
from foldwise.workflows.engine.idle import IdleWork
from foldwise.workflows.pipeline.failures import OpenRuns
from foldwise.workflows.pipeline.plan import RunPlan
from foldwise.workflows.pipeline.provenance import git_commit
from foldwise.workflows.pipeline.spec import WorkflowSpec
from foldwise.workflows.tracking import tracker as tk

# How long the MLflow set-up waits for a free CPU before it runs anyway (at idle priority): the
# latest the run can appear in the MLflow UI after its folds start, plus the set-up itself.
MLFLOW_SETUP_WAIT_S = 20.0


def set_up_when(work: IdleWork) -> Callable[[float, float], None]:
    """When to start `work` (the MLflow set-up), told the CPUs the unfinished folds need and the
    cluster's: on the first free CPU, at idle priority, so it costs the folds nothing; but right
    away at normal priority when the folds fill every CPU to the end (equal rounds: no CPU frees
    before the last fold ends, and the set-up would only add its seconds after them)."""
    first = True

    def on_slots(busy: float, capacity: float) -> None:
        nonlocal first
        if math.isinf(capacity):  # folds in this process (no worker to protect): now, beside them
            work.start_now(lower=False)
        elif busy < capacity:
            work.start_now()
        elif first and (capacity <= 0 or _fills_to_the_end(busy, capacity)):
            work.start_now(lower=False)
        first = False

    return on_slots


def _fills_to_the_end(busy: float, capacity: float) -> bool:
    """Folds needing `busy` CPUs run in rounds of `capacity` with no partial last round (equal-length
    folds assumed: the only knowledge there is before any fold ends)."""
    rest = busy % capacity
    return rest < 1e-9 or capacity - rest < 1e-9


class FoldLog:
    """Hands each fold result to `write` with the open runs as it finishes; results that finish
    before the runs are open wait here until they are (the next fold, or `flush` once all are in)."""

    def __init__(self, runs: Future[OpenRuns], write: Callable[[OpenRuns, FoldResult], None]) -> None:
        self.runs, self.write = runs, write
        self.pending: list[FoldResult] = []

    def __call__(self, result: FoldResult) -> None:
        self.pending.append(result)
        if self.runs.done():
            self.flush()

    def flush(self) -> None:
        opened = self.runs.result()
        for r in self.pending:
            self.write(opened, r)
        self.pending.clear()



def open_runs(plan: RunPlan, command: str, children: Mapping[str, Mapping[str, str]], *, started: float,
              params: Mapping[str, Any] | None = None, run_name: str | None = None,
              parent_id: str | None = None) -> OpenRuns:
    """A command's MLflow runs, dated from `started` (the command's start): a parent named
    `COMMAND-<UTC time>` holding the spec's flattened params (+ `params`), and one child per entry
    of `children` (name -> its extra tags). Runs a dead driver left RUNNING are failed first."""
    tracker = tk.Tracker(plan.tracking_uri, plan.spec.experiment)
    tracker.fail_abandoned_runs()
    tags = {tk.TAG_COMMAND: command, tk.TAG_GIT: git_commit(), tk.TAG_CODE: plan.version} | tk.process_tags()
    name = run_name or f"{command}-{datetime.fromtimestamp(started, timezone.utc):%Y%m%d-%H%M%S}"
    parent = tracker.start_run(name, tags, parent_id=parent_id, start_time=started)
    opened = {child: tracker.start_run(child, {**tags, **extra}, parent_id=parent, start_time=started)
              for child, extra in children.items()}
    inputs = plan.inputs
    tracker.log(parent, params=tk.flatten(plan.spec.model_dump(mode="json"))
                | {"task": inputs.task, "metric": inputs.metric, "cv.scheme": inputs.scheme} | dict(params or {}))
    return OpenRuns(tracker, parent, opened)


@dataclass(frozen=True)
class RunContext:
    """A command once its MLflow runs are open: what its last step (outputs, summary, logging)
    needs besides the DAG's results."""

    plan: RunPlan
    runs: OpenRuns
    out: str | Path | None  # --out, else outputs_root()/<spec name>/<parent run id>
    wall_start: float  # time.perf_counter() at the command's start
    startup_seconds: float  # Ray's start-up the command waited for, 0 when nothing ran
    phases: Mapping[str, float]
    warnings: tuple[str, ...] = ()
    executor: str = "ray"  # where the tasks ran: ray | local | none (all from the cache)
    ray_start_seconds: float = 0.0  # Ray's whole start-up, also the part done beside the driver's work
    timeline: Mapping[str, float] = field(default_factory=dict)  # events, seconds after the start: ray_asked, ...

    @property
    def spec(self) -> WorkflowSpec:
        return self.plan.spec

    @property
    def tracker(self) -> tk.Tracker:
        return self.runs.tracker

    @property
    def parent(self) -> str:
        return self.runs.parent

    def out_target(self) -> str:
        """Where the outputs go: --out, else `$FOLDWISE_OUTPUTS` (or outputs/) / spec name / parent run id."""
        return str(self.out) if self.out else storage.join(storage.outputs_root(), self.spec.name, self.parent)
