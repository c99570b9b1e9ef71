"""Output tables: OOF and test predictions, the Kaggle-shaped submission, the leaderboard."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from foldwise.tasks.data import PreparedData
from foldwise.tasks.folds import FoldPlan


@dataclass(frozen=True)
class LeaderboardRow:
    name: str
    cv_score: float
    fold_scores: tuple[float, ...]
    fit_seconds: float  # summed over folds
    note: str = ""


def prediction_columns(name: str, pred: np.ndarray, data: PreparedData) -> dict[str, np.ndarray]:
    """One column per model (binary P(class 1), regression value); one per class for multiclass."""
    if pred.ndim == 2:
        return {f"{name}__{c}": pred[:, i] for i, c in enumerate(data.classes)}
    return {name: pred}


def oof_frame(data: PreparedData, plan: FoldPlan, preds: dict[str, np.ndarray]) -> pd.DataFrame:
    """Every training row once: id, fold, target and each model's out-of-fold prediction."""
    cols: dict[str, np.ndarray] = {"row": np.arange(len(data.y))}
    if data.ids is not None:
        cols[data.id_column or "id"] = data.ids
    cols["fold"] = plan.fold_of_row
    cols[data.target] = np.asarray(data.classes, dtype=object)[data.y] if data.classes else data.y
    for name, pred in preds.items():
        cols.update(prediction_columns(name, pred, data))
    return pd.DataFrame(cols)


def test_frame(data: PreparedData, preds: dict[str, np.ndarray]) -> pd.DataFrame:
    n = len(data.X_test) if data.X_test is not None else 0
    cols: dict[str, np.ndarray] = {data.id_column or "id": data.test_ids if data.test_ids is not None else np.arange(n)}
    for name, pred in preds.items():
        cols.update(prediction_columns(name, pred, data))
    return pd.DataFrame(cols)


def submission_frame(data: PreparedData, pred: np.ndarray) -> pd.DataFrame:
    """Kaggle shape: id + probability (binary), one column per class (multiclass), value (regression)."""
    n = len(pred)
    out = pd.DataFrame({data.id_column or "id": data.test_ids if data.test_ids is not None else np.arange(n)})
    if pred.ndim == 2:
        for i, c in enumerate(data.classes):
            out[str(c)] = pred[:, i]
    else:
        out[data.target] = pred
    return out


def leaderboard_markdown(rows: list[LeaderboardRow], metric: str) -> str:
    """Best first (scores are greater-is-better), with fold spread and fit time."""
    lines = [f"| rank | model | {metric} (mean of folds) | std | min fold | fit s (all folds) | note |",
             "|---:|---|---:|---:|---:|---:|---|"]
    for i, r in enumerate(sorted(rows, key=lambda r: -r.cv_score), 1):
        scores = np.asarray(r.fold_scores)
        lines.append(f"| {i} | {r.name} | {r.cv_score:.5f} | {scores.std(ddof=1) if len(scores) > 1 else 0:.5f} | "
                     f"{scores.min():.5f} | {r.fit_seconds:.2f} | {r.note} |")
    return "\n".join(lines) + "\n"


def write_json(path: Path, value: Any) -> Path:
    """`value` as indented JSON, numpy scalars and arrays as plain numbers and lists (summary.json)."""
    path.write_text(json.dumps(value, indent=2, default=_plain))
    return path


def _plain(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
