"""foldwise: Kaggle-grade cross-validation pipelines on Ray, tracked in MLflow.

The Python API, one function per command; each is imported on first use, so `import foldwise`
(and `foldwise --help`) does not pay for Ray, MLflow or the models. Installed code lives under
`foldwise.tasks`, `foldwise.workflows` and `foldwise.infra`, so a user's own `tasks/` or
`workflows/` package never shadows it.
"""

from __future__ import annotations

from importlib import import_module
from pathlib import Path
from typing import Any

# In a source tree (a clone, or the project folder a Ray Job uploads as its working_dir) this
# folder sits beside tasks/, workflows/ and infra/: the subpackages come from that same tree, so
# a job runs the code that was submitted, not a copy installed on the cluster earlier. An
# installed wheel has them inside this folder instead, and this does nothing.
_here = Path(__file__).resolve().parent
if not (_here / "workflows").is_dir() and (_here.parent / "workflows" / "engine").is_dir():
    __path__.append(str(_here.parent))  # noqa: F821 - a package's __path__

_API = {
    "run_cv": "foldwise.workflows.commands.run",
    "run_sweep": "foldwise.workflows.commands.sweep",
    "run_ablation": "foldwise.workflows.commands.ablate",
    "run_check": "foldwise.workflows.commands.check",
    "compare": "foldwise.workflows.commands.compare",
    "load_spec": "foldwise.workflows.pipeline.spec",
}

__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'foldwise' has no attribute {name!r}")
    value = getattr(import_module(_API[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
