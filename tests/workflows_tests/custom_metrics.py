"""A user's own metric, plugged in by import path (`metric: tests.workflows_tests.custom_metrics:weighted_mae`)."""

from __future__ import annotations

import numpy as np


def weighted_mae(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """MAE where rows above the median target count twice (a competition-style weighting)."""
    y_true = np.asarray(y_true, dtype=float)
    w = 1.0 + (y_true > np.median(y_true))
    return float(np.sum(w * np.abs(y_true - y_pred)) / np.sum(w))


weighted_mae.greater_is_better = False
weighted_mae.needs = "value"
