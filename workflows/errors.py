"""Every error a user can meet, in one place at the base of the layers.

Two families, because they mean different exit codes: a user mistake found before any
compute (`InputError`, `SpecError`: exit 2, nothing started, nothing logged) and a failure
while running (`RunFailed`: exit 1, the MLflow run marked FAILED, finished work cached).
`TaskFailed` is what the engine raises for a task; commands turn it into `RunFailed`.
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad spec, data or arguments: exit code 2, nothing started, nothing logged."""


class SpecError(ValueError):
    """A user mistake in the spec or its overrides: one line, exit code 2."""


class RunFailed(RuntimeError):
    """Failed while running (exit 1): the MLflow run is marked FAILED."""

    def __init__(self, message: str, run_id: str | None) -> None:
        super().__init__(message)
        self.run_id = run_id


class TaskFailed(RuntimeError):
    """A task raised: names the task and the error's last line (no Ray wrapping noise)."""

    def __init__(self, task: str, error: str) -> None:
        super().__init__(f"{task} failed: {error}")
        self.task, self.error = task, error


class TaskOutOfMemory(TaskFailed):
    """Ray's memory monitor killed the task (node memory above its threshold): not the task's own bug."""
