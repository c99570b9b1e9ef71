"""The prediction files and the submission say which class a probability is of."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from foldwise.tasks.data import DataConfig, prepare_data
from foldwise.tasks.report import class_facts, submission_facts, submission_frame, write_predictions


def _data(tmp_path: Path, **kw):
    train = pd.DataFrame({"id": range(6), "x": np.arange(6.0), "label": ["no", "yes"] * 3})
    test = train.drop(columns="label").assign(id=range(6, 12))
    train.to_csv(tmp_path / "t.csv", index=False)
    test.to_csv(tmp_path / "s.csv", index=False)
    return prepare_data(DataConfig(train=str(tmp_path / "t.csv"), test=str(tmp_path / "s.csv"), target="label", id="id", **kw))


def test_binary_facts_label_submission_and_parquet_metadata(tmp_path: Path) -> None:
    data = _data(tmp_path)
    assert class_facts(data) == {"classes": ["no", "yes"], "positive_class": "yes"}
    assert submission_facts(data, "proba")["holds"] == "P(label == 'yes')"
    pred = np.array([0.9, 0.2, 0.6, 0.4, 0.51, 0.49])
    labels = submission_frame(data, pred, "label")
    assert labels.columns.tolist() == ["id", "label"] and labels["label"].tolist() == ["yes", "no", "yes", "no", "yes", "no"]
    assert submission_frame(data, pred)["label"].tolist() == pred.tolist()
    named = submission_frame(data, pred, "proba", column="class")  # binary column named after the positive class
    assert named.columns.tolist() == ["id", "yes"] and named["yes"].tolist() == pred.tolist()
    assert submission_facts(data, "proba", "class")["columns"] == ["yes"]
    path = write_predictions(pd.DataFrame({"id": range(6), "m": pred}), tmp_path / "p.parquet", data)
    meta = pq.read_schema(path).metadata
    assert json.loads(meta[b"foldwise.classes"]) == ["no", "yes"] and json.loads(meta[b"foldwise.positive_class"]) == "yes"
    assert pd.read_parquet(path)["m"].tolist() == pred.tolist()
    flipped = _data(tmp_path, positive_class="no")
    assert class_facts(flipped) == {"classes": ["yes", "no"], "positive_class": "no"}
    assert submission_frame(flipped, pred, "label")["label"].tolist() == ["no", "yes", "no", "yes", "no", "yes"]
