"""User adapters that misbehave on purpose, for the fault tests (plugged in by import path).

A fold is told apart by its model's name and a hash of its training matrix (adapters are
not told their fold number): TAG = `model-hash`. Every fit attempt appends `start TAG PID`
and `end TAG PID` lines to a log, so tests count attempts and retries instead of timing.
"""

from __future__ import annotations

import hashlib
import os
import signal
import time

import numpy as np
import pandas as pd


def fold_tag(X: pd.DataFrame) -> str:
    return hashlib.sha1(np.ascontiguousarray(X.to_numpy(dtype=float)).tobytes()).hexdigest()[:10]


def attempts(log: str) -> list[tuple[str, str, int]]:
    """(event, tag, pid) for every line of an attempts log."""
    if not os.path.exists(log):
        return []
    rows = [line.split() for line in open(log).read().splitlines() if line.strip()]
    return [(event, tag, int(pid)) for event, tag, pid in rows]


class LoggedLogistic:
    """A logistic regression that logs each fit attempt and sleeps `sleep` seconds inside fit."""

    def __init__(self, config, ctx) -> None:
        from sklearn.linear_model import LogisticRegression

        self.params, self.name = config.params, config.name
        self.model = LogisticRegression(C=float(self.params.get("C", 1.0)), max_iter=2000)

    def _log(self, event: str, tag: str) -> None:
        with open(self.params["log"], "a") as f:
            f.write(f"{event} {tag} {os.getpid()}\n")

    def fit(self, X: pd.DataFrame, y: np.ndarray) -> None:
        tag = f"{self.name}-{fold_tag(X)}"
        self._log("start", tag)
        self.misbehave(X, tag)
        if not os.environ.get("FAULT_ADAPTERS_NO_SLEEP"):  # a reference run need not wait
            time.sleep(float(self.params.get("sleep", 0.0)))
        self.model.fit(X.to_numpy(), y)
        self._log("end", tag)

    def misbehave(self, X: pd.DataFrame, tag: str) -> None:
        pass

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        return self.model.predict_proba(X.to_numpy())[:, 1]


class DiesOnce(LoggedLogistic):
    """The first fit attempt anywhere SIGKILLs its own worker process (a crashed worker), once."""

    def misbehave(self, X: pd.DataFrame, tag: str) -> None:
        try:
            fd = os.open(self.params["marker"], os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.write(fd, f"{tag}\n".encode())
        os.close(fd)
        os.kill(os.getpid(), signal.SIGKILL)


class RaisesOnHeldOutRow(LoggedLogistic):
    """Raises a user error, after `delay` seconds, in the one fold whose held-out rows hold the row
    with `column == value`, while the file `switch` exists (delete it to 'fix the bug' without
    changing the config)."""

    def misbehave(self, X: pd.DataFrame, tag: str) -> None:
        held_out = not np.isclose(X[self.params["column"]].to_numpy(dtype=float), float(self.params["value"])).any()
        if held_out and os.path.exists(self.params["switch"]):
            time.sleep(float(self.params.get("delay", 0.0)))
            raise ValueError("Input contains a planted bad value\nin the held-out fold (planted user error)")


class MemoryHog:
    """Allocates and touches `mb` MiB (bounded), holds it `hold` seconds, then fits a constant."""

    def __init__(self, config, ctx) -> None:
        self.mb = min(int(config.params.get("mb", 256)), 2048)  # never more than 2 GiB: the machine is shared
        self.hold = float(config.params.get("hold", 10.0))
        self.log = config.params.get("log")

    def fit(self, X: pd.DataFrame, y: np.ndarray) -> None:
        if self.log:
            with open(self.log, "a") as f:
                f.write(f"start hog-{fold_tag(X)} {os.getpid()}\n")
        block = np.ones(self.mb * 1024 * 1024 // 8)  # np.ones writes every page: really resident
        deadline = time.time() + self.hold
        while time.time() < deadline:
            block[:: 4096] += 1.0  # stay resident and busy until the memory monitor acts
            time.sleep(0.05)
        self.rate = float(np.mean(y))

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        return np.full(len(X), self.rate)


class AssignedResources(LoggedLogistic):
    """Writes the Ray resources its task was granted (tests only: adapters in tasks/ never import ray)."""

    def misbehave(self, X: pd.DataFrame, tag: str) -> None:
        import json

        import ray

        with open(self.params["resources_log"], "a") as f:
            f.write(json.dumps(ray.get_runtime_context().get_assigned_resources()) + "\n")
