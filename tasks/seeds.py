"""Seed averaging: a model with `seeds: [0, 1, 2]` is refitted on each fold once per seed (each
its own node), and the seeds' predictions are averaged into the one model that is scored,
ensembled and predicted.

The fold DAG sees one config per seed, named `MODEL@seedS` (spec names cannot hold '@'), with
`seed` set; after the folds, `average_seeds` folds them back into `MODEL`'s results: per split,
the mean of the seeds' OOF (and test) predictions, scored anew; fit and predict times summed;
the fitted adapters kept together (`SeedAverage`), so re-predicting (new test data, permutation
importance) averages the same seeds.
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import pandas as pd

from foldwise.tasks.metrics import score
from foldwise.tasks.models import ModelConfig
from foldwise.tasks.train import FoldResult

SEP = "@seed"


def expand_seeds(models: Sequence[ModelConfig]) -> list[ModelConfig]:
    """One config per model x seed for models with `seeds`; other models as they are."""
    out: list[ModelConfig] = []
    for m in models:
        if m.seeds:
            out += [replace(m, name=f"{m.name}{SEP}{s}", seed=int(s), seeds=()) for s in m.seeds]
        else:
            out.append(m)
    return out


def base_name(node: str) -> str:
    """The spec model a fold node belongs to ('lgbm@seed1' -> 'lgbm')."""
    return node.split(SEP, 1)[0]


def is_seed_node(node: str) -> bool:
    return SEP in node


class SeedAverage:
    """The fitted adapters of one fold, one per seed, as one model: the mean of their predictions."""

    def __init__(self, models: list) -> None:  # noqa: ANN001 - any adapter
        self.models = models
        self.takes_images = any(getattr(m, "takes_images", False) for m in models)

    def fit(self, X: pd.DataFrame, y: np.ndarray) -> None:
        for m in self.models:
            m.fit(X, y)

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        return np.mean([np.asarray(m.predict(X), dtype=np.float64) for m in self.models], axis=0)

    def feature_importance(self) -> dict[str, float] | None:
        parts = [m.feature_importance() for m in self.models if hasattr(m, "feature_importance")]
        parts = [p for p in parts if p]
        if not parts:
            return None
        columns = sorted({c for p in parts for c in p})
        return {c: float(np.mean([p.get(c, 0.0) for p in parts])) for c in columns}


def average_fold(name: str, results: Sequence[FoldResult], metric: str, task: str, y: np.ndarray) -> FoldResult:
    """One split's seed results as the averaged model's result (scored on the averaged OOF)."""
    first = results[0]
    if any(r.fold != first.fold or not np.array_equal(r.valid_rows, first.valid_rows) for r in results):
        raise ValueError(f"seed results of {name!r} are not of one split")
    oof = np.mean([r.oof for r in results], axis=0)
    tests = [r.test for r in results]
    test = None if any(t is None for t in tests) else np.mean(tests, axis=0)
    fitted = None
    if all(r.fitted is not None for r in results):
        fitted = pickle.dumps(SeedAverage([pickle.loads(r.fitted) for r in results]), protocol=pickle.HIGHEST_PROTOCOL)
    importances = [r.importance for r in results if r.importance]
    importance = None
    if importances:
        columns = sorted({c for imp in importances for c in imp})
        importance = {c: float(np.mean([imp.get(c, 0.0) for imp in importances])) for c in columns}
    best = [r.best_iteration for r in results if r.best_iteration is not None]
    return replace(first, model=name, oof=oof, test=test, score=score(metric, task, y[first.valid_rows], oof),
                   fit_seconds=sum(r.fit_seconds for r in results), predict_seconds=sum(r.predict_seconds for r in results),
                   model_bytes=sum(r.model_bytes for r in results) if all(r.model_bytes >= 0 for r in results) else -1,
                   peak_memory_bytes=max(r.peak_memory_bytes for r in results), importance=importance, fitted=fitted,
                   training=None, started=min(r.started for r in results), ended=max(r.ended for r in results),
                   best_iteration=int(round(float(np.mean(best)))) if best else None)


def average_seeds(done: dict[str, list[FoldResult]], cached: dict[str, list[bool]], metric: str, task: str,
                  y: np.ndarray) -> tuple[dict[str, list[FoldResult]], dict[str, list[bool]]]:
    """Fold the `MODEL@seedS` nodes' results into `MODEL`'s (split by split); (results, cached flags).
    A split counts as cached when every seed of it was."""
    out: dict[str, list[FoldResult]] = {}
    flags: dict[str, list[bool]] = {}
    groups: dict[str, list[str]] = {}
    for node in done:
        groups.setdefault(base_name(node), []).append(node)
    for name, nodes in groups.items():
        if nodes == [name]:
            out[name], flags[name] = done[name], cached[name]
            continue
        per_split = zip(*(done[n] for n in nodes), strict=True)
        out[name] = [average_fold(name, list(rs), metric, task, y) for rs in per_split]
        flags[name] = [all(fs) for fs in zip(*(cached[n] for n in nodes), strict=True)]
    return out, flags
