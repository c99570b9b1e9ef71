"""Warnings carry their code (a spec silences them by it) and give advice that fits the column."""

from __future__ import annotations

import numpy as np
import pandas as pd

from foldwise.tasks.checks import WARNING_CODES, Finding, frame_warnings
from foldwise.tasks.data import DataConfig


def _sorted_by_target(n: int = 400) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    y = np.sort(rng.integers(0, 2, size=n))  # the file is sorted by the target
    return pd.DataFrame({"id": np.arange(n), "row_no": np.arange(n) + 1000, "a": rng.normal(size=n), "y": y})


def test_an_excluded_id_column_is_not_advised_out_of_the_features() -> None:
    train = _sorted_by_target()
    found = frame_warnings(train, DataConfig(train="t.csv", target="y", id="id"), "binary", train.y.to_numpy())
    by_column = {f.column: f for f in found if f.code == "id_tracks_target"}
    assert set(by_column) == {"id", "row_no"}
    excluded = by_column["id"].message
    assert "keep it out of the features" not in excluded and "not a feature" in excluded
    assert "sorted by the target" in excluded and "time scheme" in excluded
    assert "keep it out of the features" in by_column["row_no"].message  # a feature: the advice stands
    dropped = frame_warnings(train, DataConfig(train="t.csv", target="y", id="id", drop=("row_no",)), "binary",
                             train.y.to_numpy())
    assert not any(f.column == "row_no" for f in dropped)  # features.drop columns are not scanned as features


def test_each_warning_line_names_its_code() -> None:
    f = Finding("warning", "leak", "x", "column 'x' alone predicts the target")
    assert f.line == "column 'x' alone predicts the target [leak]"
    assert "id_tracks_target" in WARNING_CODES and "leak" in WARNING_CODES
