"""One fold of one model: fit on the other folds, predict the held-out fold (the test set is
predict_test's, a node of its own, so a new test set refits nothing)."""

from __future__ import annotations

import ctypes
import functools
import os
import pickle
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import psutil

from foldwise.tasks.data import PreparedData, drop_columns
from foldwise.tasks.features import fit_vocabulary, frame
from foldwise.tasks.fold_steps import fit_fold_steps
from foldwise.tasks.folds import FoldPlan
from foldwise.tasks.metrics import resolve_metric, score
from foldwise.tasks.models import FitContext, ModelConfig, TrainingLog, create_model


@dataclass(frozen=True)
class FoldResult:
    model: str
    fold: int
    valid_rows: np.ndarray  # row indices of the held-out fold
    oof: np.ndarray  # predictions for valid_rows: (m,) or (m, K)
    # the test set's predictions from this fold's model: None out of train_fold, which never sees
    # the test set; the DAG attaches predict_test's (tasks.test_prediction), its own cached node
    test: np.ndarray | None
    score: float
    fit_seconds: float
    predict_seconds: float
    model_bytes: int  # pickled size of the fitted adapter
    peak_memory_bytes: int = -1  # most resident memory the fold added over its worker's start (-1: unknown)
    importance: dict[str, float] | None = field(default=None)  # per column, when the adapter reports it
    # the pickled fitted adapter (None when it cannot be pickled): later nodes re-predict with
    # it (permutation importance, new test data) instead of refitting
    fitted: bytes | None = None
    training: TrainingLog | None = None  # per-epoch history + checkpoint, from adapters that train in epochs
    started: float = 0.0  # unix seconds when the fold task began / ended (a timeline of the run)
    ended: float = 0.0
    best_iteration: int | None = None  # the boosting round early stopping kept (adapters with `best_iteration`)
    # the pickled fold steps (tasks.fold_steps.FittedFoldSteps) fitted on this fold's training rows, None without
    # any: new rows go through them, then through `fitted` (the columns the model was trained on)
    fold_steps: bytes | None = None


def train_fold(data: PreparedData, plan: FoldPlan, config: ModelConfig, fold: int, metric: str, seed: int,
               drop: tuple[str, ...] = ()) -> FoldResult:
    """Everything the model learns (encoders, scalers, early stopping) comes from the training rows.

    `drop` names feature columns the model must not see (an ablation variant); empty for `foldwise run`.
    """
    started = time.time()
    resolve_metric(metric, fresh=True)  # a user's metric as its source is now (workers live long)
    if drop:
        data = drop_columns(data, drop)
    train_rows, valid_rows = plan.train_rows(fold), plan.valid_rows(fold)
    vocab = fit_vocabulary(data, train_rows)
    seed = config.seed if config.seed is not None else seed  # a seed-averaging node fits with its own seed
    steps, train_frame = None, frame(data, data.X[train_rows], vocab)
    if config.fold_steps:  # fitted on the training rows only; the held-out and test rows only pass through
        steps, train_frame = fit_fold_steps(config.fold_steps, train_frame, data.y[train_rows], data.task, seed)
    categorical = tuple(c for c in train_frame.columns if isinstance(train_frame[c].dtype, pd.CategoricalDtype))
    ctx = FitContext(task=data.task, n_classes=data.n_classes, categorical=categorical, seed=seed,
                     n_threads=max(1, int(config.cpus)), gpus=config.gpus, image_column=data.image_column)
    model = create_model(config, ctx)
    images = data.images is not None and getattr(model, "takes_images", False)

    def rows_of(X: np.ndarray | None, paths: np.ndarray | None, rows: np.ndarray | None):  # noqa: ANN202
        """The fold frame (through the fold steps); the image paths as one more column for adapters that take images."""
        if rows is train_rows:
            out = train_frame.copy() if images else train_frame
        else:
            out = frame(data, X if rows is None else X[rows], vocab)
            out = steps.transform(out) if steps is not None else out
        if images:
            out[data.image_column] = paths if rows is None else paths[rows]
        return out

    with PeakMemory() as memory:
        start = time.perf_counter()
        model.fit(rows_of(data.X, data.images, train_rows), data.y[train_rows])
        fit_seconds = time.perf_counter() - start
        start = time.perf_counter()
        oof = np.asarray(model.predict(rows_of(data.X, data.images, valid_rows)))
        predict_seconds = time.perf_counter() - start
    importance = getattr(model, "feature_importance", None)
    training = model.training_log() if hasattr(model, "training_log") else None
    try:
        fitted: bytes | None = pickle.dumps(model, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:  # noqa: BLE001 - some user adapters hold unpicklable handles; size unknown
        fitted = None
    model_bytes = len(fitted) if fitted is not None else -1
    return FoldResult(
        model=config.name, fold=fold, valid_rows=valid_rows, oof=oof, test=None,
        score=score(metric, data.task, data.y[valid_rows], oof),
        fit_seconds=fit_seconds, predict_seconds=predict_seconds, model_bytes=model_bytes, fitted=fitted,
        peak_memory_bytes=memory.peak_bytes, importance=importance() if importance else None,
        training=training, started=started, ended=time.time(), best_iteration=getattr(model, "best_iteration", None),
        fold_steps=pickle.dumps(steps, protocol=pickle.HIGHEST_PROTOCOL) if steps is not None else None,
    )


class PeakMemory:
    """Peak resident memory a `with` block added over its start (one block at a time per process).

    Workers are reused between folds, and the C allocator keeps the pages an earlier fold freed
    resident: a later fold reuses them and the resident size hardly grows (a LightGBM fold read
    8 KB). So the block first hands those free pages back (glibc's `malloc_trim`, about a
    millisecond) and starts from the memory live at that point. On Linux the kernel then keeps
    the figure: the resident high-water mark is reset to the current size (`5` into
    /proc/self/clear_refs, no privileges needed) and VmHWM is read after the block, so every
    allocation counts, native ones and short spikes included, with nothing running during the
    block. Where /proc cannot be used, resident memory is sampled every 20 ms instead (short
    spikes between samples are missed, so that figure is a floor).
    """

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self.peak_bytes = -1
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> PeakMemory:
        _trim_free_memory()
        if _reset_high_water_mark():
            self._base = _proc_status_bytes("VmRSS")
            return self
        self._proc = psutil.Process(os.getpid())
        self._base = self._peak = self._proc.memory_info().rss
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self._peak = max(self._peak, self._proc.memory_info().rss)

    def __exit__(self, *exc: object) -> None:
        if self._thread is None:
            peak = _proc_status_bytes("VmHWM")
        else:
            self._stop.set()
            self._thread.join()
            peak = max(self._peak, self._proc.memory_info().rss)
        self.peak_bytes = max(0, int(peak - self._base)) if peak >= 0 and self._base >= 0 else -1


_CLEAR_REFS = "/proc/self/clear_refs"
_STATUS = "/proc/self/status"


def _reset_high_water_mark() -> bool:
    """Linux: set this process's resident high-water mark (VmHWM) to its current resident size."""
    try:
        with open(_CLEAR_REFS, "w") as f:
            f.write("5")
        return True
    except OSError:  # not Linux, or /proc read-only (some containers)
        return False


def _proc_status_bytes(field: str) -> int:
    """A `kB` line of /proc/self/status (VmRSS, VmHWM) in bytes; -1 when missing."""
    try:
        with open(_STATUS) as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return -1


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None (macOS, musl, Windows)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return getattr(ctypes.CDLL(None), "malloc_trim", None)
    except OSError:
        return None


def _trim_free_memory() -> None:
    """Give the pages the C allocator holds free back to the system, so they do not hide a fold's memory."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
