"""foldwise workflows: spec -> Ray DAG -> results -> tracking."""

from __future__ import annotations

from typing import Any


def run_cv(*args: Any, **kwargs: Any):  # noqa: ANN201 - lazy: `foldwise --help` must not import Ray
    """See workflows.cv.run_cv."""
    from workflows.cv import run_cv as _run_cv

    return _run_cv(*args, **kwargs)
