"""What the gradient-boosting adapters (lightgbm, xgboost, catboost) share.

Each library refuses some characters in feature names, wants labels 0..K-1 where a fold may
see fewer classes, and runs on the GPU only when the fold holds one and the library's build and
the driver can use it. These helpers keep that logic in one place, so the three adapters keep
one contract: native categoricals, NaN allowed, early stopping on the inner 10% split of the
training rows, threads from the fold's cpus, the GPU when the fold has one (else the CPU, with
a warning that says why).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from functools import cache

import numpy as np
import pandas as pd

from foldwise.tasks.models import did_you_mean


class GpuFallbackWarning(UserWarning):
    """A fold that holds a GPU trained on the CPU (the library's build or the driver cannot use it)."""


def safe_names(columns: list, bad: re.Pattern[str]) -> list[str]:
    """Column names with `bad` characters replaced; f0..fN when that would make duplicates."""
    names = [bad.sub("_", str(c)) for c in columns]
    return names if len(set(names)) == len(names) else [f"f{i}" for i in range(len(columns))]


def encode_seen(y: np.ndarray, task: str) -> tuple[np.ndarray, np.ndarray]:
    """(codes 0..k-1, the classes seen in these training rows); y itself for regression.

    A multiclass fold may hold only some classes; the libraries want contiguous labels, and
    the adapters map the probabilities back onto every class (`_align_proba`)."""
    if task == "regression":
        return np.asarray(y, dtype=np.float64), np.empty(0)
    seen = np.unique(y)
    return np.searchsorted(seen, y).astype(np.int64), seen


def check_names(library: str, params: dict, accepted: set[str], docs: str) -> str | None:
    """The first param `library` does not accept, naming the valid ones; None if all are fine."""
    for name in params:
        if name not in accepted:
            return (f"{library} has no parameter {name!r}{did_you_mean(name, accepted)} "
                    f"(valid: {', '.join(sorted(accepted))}; see {docs})")
    return None


@cache
def gpu_usable(library: str, probe: Callable[[], None]) -> str | None:
    """None when `probe` (a tiny fit on the GPU) works in this process, else why not (one line)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            probe()
    except Exception as e:  # noqa: BLE001 - any failure means the GPU cannot be used here
        return str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
    return None


def warn_cpu_fallback(library: str, why: str) -> None:
    warnings.warn(f"{library}: the fold holds a GPU but trains on the CPU ({why})", GpuFallbackWarning, stacklevel=3)


def on_gpu(library: str, probe: Callable[[], None]) -> bool:
    """For a fold that holds a GPU: whether `library` can train on it here; if not, warn (naming
    why) and train on the CPU rather than fail the fold."""
    why = gpu_usable(library, probe)
    if why is not None:
        warn_cpu_fallback(library, why)
    return why is None


def tiny_frame() -> tuple[pd.DataFrame, np.ndarray]:
    """Data for a GPU probe: a few rows, two classes."""
    X = pd.DataFrame({"a": np.arange(20, dtype=np.float64), "b": np.arange(20, dtype=np.float64)[::-1]})
    return X, (np.arange(20) % 2).astype(np.int64)
