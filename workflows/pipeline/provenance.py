"""Where a result came from: the git commit and a version of the code that computed it."""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Sequence
from functools import cache
from pathlib import Path

from foldwise import tasks
from foldwise.tasks.models import BUILTIN_MODEL_TYPES, ModelConfig
from foldwise.tasks.source import installed_version, library_versions, source_hash


@cache
def git_commit() -> str:
    """HEAD of the repository the user runs from; 'none' outside git."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "none"
    return out.stdout.strip() if out.returncode == 0 else "none"


# Libraries whose version can change a result. Every node: numpy/pandas/pyarrow read and encode
# the data, scikit-learn assigns the folds and scores. Per built-in model type: what it computes with.
COMMON_LIBRARIES = ("numpy", "pandas", "pyarrow", "scikit-learn")
MODEL_LIBRARIES = {"sklearn": (), "lightgbm": ("lightgbm",), "xgboost": ("xgboost",), "catboost": ("catboost",), "torch_mlp": ("torch",),
                   "torch_image": ("torch", "timm", "albumentations", "opencv-python-headless", "pillow")}


@cache
def tasks_version() -> str:
    """Hash of the `tasks` package source and the common libraries' versions: any change there
    may change any result (upgrading pandas or scikit-learn recomputes, like editing tasks/)."""
    h = hashlib.sha256()
    for path in sorted(Path(tasks.__file__).parent.rglob("*.py")):
        h.update(path.read_bytes())
    h.update("\n".join(library_versions(COMMON_LIBRARIES)).encode())
    return h.hexdigest()[:12]


def adapter_version(model_type: str, estimator: str | None = None) -> str:
    """What a model's results depend on beyond tasks_version: the versions of the libraries it
    computes with (a built-in type's, the distribution an sklearn `estimator` path comes from)
    and, for a user adapter, the source of its whole package (so editing a helper module it
    imports recomputes too) or, for a top-level module, of the .py files beside it."""
    parts: list[str] = []
    if model_type in BUILTIN_MODEL_TYPES:
        parts += library_versions(MODEL_LIBRARIES.get(model_type, ()))
    else:
        parts.append(source_hash(model_type.partition(":")[0].split(".")[0]))
    if estimator:
        top_level = estimator.rpartition(".")[0].split(".")[0]
        parts.append(installed_version(top_level) or f"{top_level} source {source_hash(top_level)}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:12] if parts else ""


def metric_stamp(metric: str) -> str:
    """A metric as a cache key part: a scorer name as it is; a user's `pkg.module:function` with
    the source of its package, so editing the metric rescores (scorers change with sklearn's version)."""
    if ":" not in metric:
        return metric
    return f"{metric}@{source_hash(metric.partition(':')[0].split('.')[0])}"


def code_version(models: Sequence[ModelConfig] = ()) -> str:
    """tasks_version plus what each model's results depend on (for run tags)."""
    parts = [tasks_version(), *sorted({adapter_version(m.type, m.estimator) for m in models} - {""})]
    return parts[0] if len(parts) == 1 else hashlib.sha256("+".join(parts).encode()).hexdigest()[:12]
