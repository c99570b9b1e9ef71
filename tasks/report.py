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
    """One column per model (binary P(positive class), regression value); one per class for multiclass,
    named `MODEL__CLASS`. Which class a binary column is the probability of is in `class_facts`."""
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


def submission_frame(data: PreparedData, pred: np.ndarray, kind: str = "proba", column: str = "target") -> pd.DataFrame:
    """Kaggle shape: id + P(positive class) (binary), one column per class named after it
    (multiclass), the value (regression); `kind="label"`: id + the predicted class (classification).
    Binary's probability column is named after the target (what Kaggle's sample submissions
    expect) or, with `column="class"`, after the positive class it is the probability of."""
    n = len(pred)
    out = pd.DataFrame({data.id_column or "id": data.test_ids if data.test_ids is not None else np.arange(n)})
    if kind == "label" and data.classes:
        from foldwise.tasks.metrics import labels_of

        out[data.target] = np.asarray(data.classes, dtype=object)[labels_of(pred, data.task)]
    elif pred.ndim == 2:
        for i, c in enumerate(data.classes):
            out[str(c)] = pred[:, i]
    else:
        out[_binary_column(data, column)] = pred
    return out


def _binary_column(data: PreparedData, column: str) -> str:
    return str(data.classes[1]) if column == "class" and data.task == "binary" else data.target


def class_facts(data: PreparedData) -> dict[str, Any]:
    """The class order every probability follows: `classes` (code order: multiclass columns, and
    binary's 0 and 1) and, for binary, `positive_class`, the class its one probability is of."""
    if not data.classes:
        return {"classes": []}
    facts: dict[str, Any] = {"classes": list(data.classes)}
    if data.task == "binary":
        facts["positive_class"] = data.classes[1]
    return facts


def submission_facts(data: PreparedData, kind: str, column: str = "target") -> dict[str, Any]:
    """What submission.csv's prediction column(s) hold, in words (summary.json `submission`)."""
    if kind == "label" and data.classes:
        return {"kind": "label", "columns": [data.target], "holds": f"the predicted class of {data.target!r}"}
    if data.task == "multiclass":
        return {"kind": "proba", "columns": [str(c) for c in data.classes], "holds": "P(the column's class), per class"}
    if data.task == "binary":
        return {"kind": "proba", "columns": [_binary_column(data, column)],
                "holds": f"P({data.target} == {data.classes[1]!r})"}
    return {"kind": "value", "columns": [data.target], "holds": f"the predicted {data.target!r}"}


def write_predictions(frame: pd.DataFrame, path: Path, data: PreparedData) -> Path:
    """`frame` as Parquet whose schema metadata names the class order (`foldwise.classes`,
    `foldwise.positive_class`, JSON): a binary column holds P(positive class)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(frame, preserve_index=False)
    extra = {f"foldwise.{k}".encode(): json.dumps(v, default=_plain).encode() for k, v in class_facts(data).items()}
    pq.write_table(table.replace_schema_metadata({**(table.schema.metadata or {}), **extra}), path)
    return path


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
