"""A fold's peak_memory_bytes is the memory it really took (issue 23, 7a): not a few KB for a LightGBM fold.

Ray reuses a worker between folds, and the C allocator keeps what an earlier fold freed
resident: a later fold reuses those pages and the process's resident size hardly grows, so
"resident size above the fold's start" read ~8 KB. The reference here is the kernel's own
figure for the same fold from a clean start: the allocator's free pages returned
(malloc_trim), the resident high-water mark (VmHWM) reset, VmHWM after the fold minus the
resident size before it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import re
from pathlib import Path

import numpy as np
import pytest

from foldwise.tasks.data import PreparedData
from foldwise.tasks.folds import FoldPlan
from foldwise.tasks.models import ModelConfig
from foldwise.tasks.train import train_fold

pytest.importorskip("lightgbm")


def _status(field: str) -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", text, re.M).group(1)) * 1024


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _malloc_trim() -> bool:
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    if libc is None or not hasattr(libc, "malloc_trim"):
        return False
    libc.malloc_trim(0)
    return True


def _data(n: int = 40_000, p: int = 40, seed: int = 0) -> tuple[PreparedData, FoldPlan]:
    """Arrays under glibc's largest mmap threshold (32 MB), so a warm process serves them from its heap."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, p))
    y = X[:, 0] * 2.0 + X[:, 1] ** 2 + rng.normal(scale=0.1, size=n)
    data = PreparedData(X=X, y=y, columns=tuple(f"x{i}" for i in range(p)), categories={}, task="regression",
                        classes=(), fingerprint="peak-memory-test", X_test=rng.normal(size=(n // 2, p)))
    plan = FoldPlan(fold_of_row=(np.arange(n) % 3).astype(np.int32), n_folds=3, scheme="kfold", seed=0, hash="t")
    return data, plan


def _hold_freed_pages(mb: int = 48) -> None:
    """What earlier folds leave in a worker: freed heap pages glibc keeps resident for reuse.

    Freeing a 30 MB mmapped block lifts glibc's mmap threshold to 30 MB (and its trim
    threshold to 60 MB), so the 8 MB blocks after it come from the heap and stay there freed.
    """
    big = np.ones(30 * 2**20 // 8)
    del big
    blocks = [np.ones(8 * 2**20 // 8) for _ in range(mb // 8)]
    del blocks


LINUX_HWM = Path("/proc/self/clear_refs").exists() and _reset_hwm() and _malloc_trim()


@pytest.mark.skipif(not LINUX_HWM, reason="needs Linux's resettable resident high-water mark and glibc")
def test_lightgbm_fold_in_a_reused_worker_reports_its_real_peak() -> None:
    data, plan = _data()  # X 12.8 MB, the test set 6.4 MB: the fold copies, bins and predicts them natively
    config = ModelConfig(name="lgbm", type="lightgbm", params={"n_estimators": 20, "num_leaves": 15, "verbose": -1})

    def fold() -> int:
        return train_fold(data, plan, config, fold=0, metric="r2", seed=0).peak_memory_bytes

    fold(), fold()  # a worker that already ran folds: its allocator holds their freed pages
    assert _malloc_trim() and _reset_hwm()
    start = _status("VmRSS")
    fold()
    measured = _status("VmHWM") - start  # the kernel's peak over a clean start
    assert measured > 15e6, f"the fold should allocate tens of MB (kernel saw {measured / 1e6:.1f} MB)"

    # the next folds in the same warm worker, as a run's later folds are: each reports that peak
    _hold_freed_pages()
    reported = [fold() for _ in range(3)]
    for r in reported:
        assert r > 1e6, f"peak_memory_bytes {r} B is far too small (kernel saw {measured / 1e6:.1f} MB): {reported}"
        assert measured / 2 <= r <= measured * 2, (reported, measured)
