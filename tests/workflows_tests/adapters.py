"""User model adapters for tests, plugged in by import path (`type: tests.workflows_tests.adapters:...`)."""

from __future__ import annotations

import numpy as np
import pandas as pd


class MeanOfColumn:
    """A real (if simple) user adapter: the rank of one column as the binary score."""

    def __init__(self, config, ctx) -> None:
        self.column = config.params.get("column", 0)
        self.sign = 1.0

    def fit(self, X: pd.DataFrame, y: np.ndarray) -> None:
        col = X.iloc[:, self.column].to_numpy()
        self.sign = 1.0 if np.corrcoef(col, y)[0, 1] >= 0 else -1.0
        self.lo, self.hi = np.nanmin(col), np.nanmax(col)

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        col = (X.iloc[:, self.column].to_numpy() - self.lo) / (self.hi - self.lo + 1e-12)
        return np.clip(col if self.sign > 0 else 1 - col, 0, 1)


class ExplodesOnFold:
    """Raises a user error while fitting; used to check exit 1 and a FAILED MLflow run."""

    def __init__(self, config, ctx) -> None:
        pass

    def fit(self, X: pd.DataFrame, y: np.ndarray) -> None:
        raise ValueError("matrix is singular (planted failure)")

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        raise AssertionError("never reached")


class SlowLogistic:
    """A logistic regression that sleeps in fit and logs each fit to a file: fits are counted, not timed."""

    def __init__(self, config, ctx) -> None:
        from sklearn.linear_model import LogisticRegression

        self.sleep = float(config.params.get("sleep", 0.0))
        self.log = config.params.get("log")
        self.model = LogisticRegression(C=float(config.params.get("C", 1.0)), max_iter=2000)

    def fit(self, X: pd.DataFrame, y: np.ndarray) -> None:
        import os
        import time

        if self.log:
            with open(self.log, "a") as f:
                f.write(f"{os.getpid()}\n")
        time.sleep(self.sleep)
        self.model.fit(X.to_numpy(), y)

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        return self.model.predict_proba(X.to_numpy())[:, 1]
