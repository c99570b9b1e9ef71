"""Where a result came from: the git commit and a version of the code that computed it."""

from __future__ import annotations

import hashlib
import importlib
import subprocess
from functools import cache
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


def code_version(models: list[ModelConfig] = ()) -> str:  # type: ignore[assignment]
    """Hash of the `tasks` package source plus any user adapter modules the spec names."""
    h = hashlib.sha256()
    for path in sorted(Path(tasks.__file__).parent.rglob("*.py")):
        h.update(path.read_bytes())
    for m in models:
        if m.type not in BUILTIN_MODEL_TYPES:
            module = importlib.import_module(m.type.partition(":")[0])
            if getattr(module, "__file__", None):
                h.update(Path(module.__file__).read_bytes())
    return h.hexdigest()[:12]
