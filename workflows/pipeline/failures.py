"""What a failed task means to the user: one line naming the task, what went wrong and what to do.

A raising fold is the user's bug: its error's last line is enough. A fold killed by Ray's
memory monitor is not a bug in the fold, so it says so and names the spec keys that fix it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from foldwise.workflows.engine.idle import IdleWork, done
from foldwise.workflows.errors import RunFailed, TaskFailed, TaskOutOfMemory
from foldwise.workflows.pipeline.spec import WorkflowSpec
from foldwise.workflows.units import human_size

if TYPE_CHECKING:
    from foldwise.workflows.tracking.tracker import Tracker


class _Closable(Protocol):
    def close(self) -> None: ...


@dataclass(frozen=True)
class OpenRuns:
    """A command's MLflow runs: the parent and its children (model name -> run id)."""

    tracker: Tracker
    parent: str
    children: Mapping[str, str]


@contextmanager
def closes_on_failure(ex: _Closable, spec: WorkflowSpec | None = None) -> Iterator[None]:
    """Work before any MLflow run exists: the executor is closed whichever way it fails, and a
    task's failure becomes RunFailed with no run to name."""
    try:
        yield
    except TaskFailed as e:
        ex.close()
        raise RunFailed(describe_failure(e, spec), None) from None
    except BaseException:
        ex.close()
        raise


@contextmanager
def marks_run_failed(tracker: Tracker, parent: str, children: Iterable[str], ex: _Closable,
                     spec: WorkflowSpec | None = None) -> Iterator[None]:
    """The body of a command whose MLflow runs exist: any failure in it (a task, Ctrl-C, a bug)
    becomes RunFailed naming the parent run; the runs end FINISHED or FAILED (children still
    RUNNING too), and the executor is closed, whichever way the body ends."""
    with marks_runs_failed(done(OpenRuns(tracker, parent, {run: run for run in children})), ex, spec):
        yield


@contextmanager
def marks_runs_failed(runs: IdleWork, ex: _Closable, spec: WorkflowSpec | None = None) -> Iterator[None]:
    """`marks_run_failed` for runs still being opened while the body runs (see foldwise.workflows.engine.idle).

    The runs are marked before the executor closes (a stopped job's driver has a deadline
    before it is killed, and closing Ray can be slow); runs still waiting to open are opened
    at once, at normal priority. If opening them failed, that error is the failure reported,
    with no run to name."""
    ok, message, cause = False, "", None
    try:
        try:
            yield
            ok = True
        except TaskFailed as e:
            message = describe_failure(e, spec)
        except KeyboardInterrupt:
            message = "interrupted"
        except Exception as e:  # noqa: BLE001 - any other failure still marks the run FAILED
            message, cause = f"{type(e).__name__}: {e}", e
    finally:
        opened = None
        try:
            runs.start_now(lower=False)
            if (opened := _opened(runs)) is not None:
                for run_id in opened.children.values():
                    if opened.tracker.run_status(run_id) == "RUNNING":
                        opened.tracker.finish(run_id, ok)
                opened.tracker.finish(opened.parent, ok)
        finally:
            ex.close()
    if not ok:
        raise RunFailed(message, opened.parent if opened is not None else None) from cause


def _opened(runs: Future[OpenRuns]) -> OpenRuns | None:
    try:
        return runs.result()
    except Exception:  # noqa: BLE001 - opening failed: the body reported that error, nothing to mark
        return None


def describe_failure(e: TaskFailed, spec: WorkflowSpec | None = None) -> str:
    if isinstance(e, TaskOutOfMemory):
        return out_of_memory_message(e, spec)
    return f"{e.task}: {e.error}"


def out_of_memory_message(e: TaskOutOfMemory, spec: WorkflowSpec | None = None) -> str:
    """What died, why, and the two remedies, naming the spec key to set."""
    models = spec.models if spec is not None else []
    index = next((i for i, m in enumerate(models) if f"[model={m.name}," in e.task), None)
    if index is None:
        remedy = ("reserve memory per task (the model's resources.memory, e.g. 4GiB) or run fewer tasks at once "
                  "(raise its resources.cpus), or give the nodes more memory")
    else:
        m = models[index]
        now = f", now {human_size(m.resources.memory)}" if m.resources.memory else ""
        remedy = (f"reserve memory per fold so Ray runs fewer of them per node: models.{index}.resources.memory "
                  f"(e.g. --set models.{index}.resources.memory=4GiB{now}), or run fewer folds concurrently "
                  f"(raise models.{index}.resources.cpus)")
    return (f"{e.task}: out of memory: Ray's memory monitor killed the task because the node ran low on memory; "
            f"{remedy}. Completed folds are cached. Ray said: {e.error}")
