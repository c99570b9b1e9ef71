"""Where a result came from: the git commit and a version of the code that computed it."""

from __future__ import annotations

import hashlib
import importlib
import subprocess
from functools import cache
from collections.abc import Sequence
from pathlib import Path

import tasks
from tasks.models import BUILTIN_MODEL_TYPES, ModelConfig


@cache
def git_commit() -> str:
    """HEAD of the repository the user runs from; 'none' outside git."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "none"
    return out.stdout.strip() if out.returncode == 0 else "none"


@cache
def tasks_version() -> str:
    """Hash of the `tasks` package source: any change there may change any result."""
    h = hashlib.sha256()
    for path in sorted(Path(tasks.__file__).parent.rglob("*.py")):
        h.update(path.read_bytes())
    return h.hexdigest()[:12]


def adapter_version(model_type: str) -> str:
    """Hash of a user adapter's module ('' for built-in types, covered by tasks_version)."""
    if model_type in BUILTIN_MODEL_TYPES:
        return ""
    module = importlib.import_module(model_type.partition(":")[0])
    path = getattr(module, "__file__", None)
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:12] if path else ""


def code_version(models: Sequence[ModelConfig] = ()) -> str:
    """tasks_version plus the distinct user adapter modules the spec names (for run tags)."""
    parts = [tasks_version(), *sorted({adapter_version(m.type) for m in models} - {""})]
    return parts[0] if len(parts) == 1 else hashlib.sha256("+".join(parts).encode()).hexdigest()[:12]
