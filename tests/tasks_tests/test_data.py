"""Reading data: CSV/Parquet/sklearn, categoricals as codes, in-fold vocabularies, task inference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from foldwise.tasks.data import DataConfig, DataError, infer_task, inspect_data, prepare_data
from foldwise.tasks.features import fit_vocabulary, frame


@pytest.fixture()
def mixed_csv(tmp_path: Path) -> tuple[Path, Path]:
    train = pd.DataFrame({"id": [f"r{i}" for i in range(8)], "color": ["red", "blue", None, "red", "green", "blue", "red", "blue"],
                          "x": [1.0, np.nan, 3.0, 4.0, 5.0, np.inf, 7.0, 8.0], "y": ["no", "yes"] * 4})
    test = train.drop(columns=["y"]).assign(color=["purple", "red", "blue", None, "red", "red", "green", "blue"])
    paths = tmp_path / "train.csv", tmp_path / "test.parquet"
    train.to_csv(paths[0], index=False)
    test.to_parquet(paths[1], index=False)
    return paths


def test_sklearn_builtin_datasets_load() -> None:
    for name, task, rows in (("breast_cancer", "binary", 569), ("iris", "multiclass", 150), ("wine", "multiclass", 178),
                             ("digits", "multiclass", 1797), ("diabetes", "regression", 442)):
        data = prepare_data(DataConfig(train=f"sklearn:{name}"))
        assert (data.task, len(data.y)) == (task, rows)
        assert data.X.dtype == np.float64 and data.X.flags.c_contiguous


def test_mixed_types_csv_and_parquet(mixed_csv) -> None:
    train, test = mixed_csv
    data = prepare_data(DataConfig(train=str(train), test=str(test), target="y", id="id"))
    assert data.task == "binary" and data.classes == ("no", "yes")
    assert data.columns == ("color", "x") and data.categorical == ("color",)
    # levels span train and test (a relabelling); learning happens per fold
    assert data.categories["color"] == ("blue", "green", "purple", "red")
    assert np.isnan(data.X[2, 0]) and np.isnan(data.X[1, 1]) and np.isnan(data.X[5, 1])  # missing, NaN, inf
    assert list(data.test_ids[:2]) == ["r0", "r1"]


def test_vocabulary_comes_from_training_rows_only(mixed_csv) -> None:
    train, test = mixed_csv
    data = prepare_data(DataConfig(train=str(train), test=str(test), target="y", id="id"))
    rows = np.array([0, 1, 3])  # red, blue, red: green and purple are unseen
    vocab = fit_vocabulary(data, rows)
    f = frame(data, data.X_test, vocab)
    assert list(f["color"].cat.categories) == ["blue", "red"]
    assert f["color"].isna().tolist() == [True, False, False, True, False, False, True, False]


def test_inspect_refuses_duplicate_ids(tmp_path: Path) -> None:
    p = tmp_path / "d.csv"
    pd.DataFrame({"id": [1, 1, 2, 3], "x": [1, 2, 3, 4], "y": [0, 1, 0, 1]}).to_csv(p, index=False)
    with pytest.raises(DataError, match="data.id: column 'id' has duplicate value 1"):
        inspect_data(DataConfig(train=str(p), target="y", id="id"))


def test_unknown_builtin_and_format(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="unknown built-in dataset 'sklearn:titanic'"):
        inspect_data(DataConfig(train="sklearn:titanic"))
    p = tmp_path / "d.xlsx"
    p.write_text("x")
    with pytest.raises(DataError, match="unsupported format"):
        prepare_data(DataConfig(train=str(p)))


@pytest.mark.parametrize(("values", "task"), [
    ([0, 1, 1, 0], "binary"), (["a", "b", "c", "a"], "multiclass"), ([1, 2, 3, 4, 5, 3], "multiclass"),
    (list(np.linspace(0, 1, 50)), "regression"), (list(range(100)), "regression"),
])
def test_task_inference(values: list, task: str) -> None:
    assert infer_task(pd.Series(values)) == task


def test_uri_sources_go_through_fsspec(mixed_csv) -> None:
    train, test = mixed_csv
    data = prepare_data(DataConfig(train=train.resolve().as_uri(), test=test.resolve().as_uri(), target="y", id="id"))
    summary = inspect_data(DataConfig(train=train.resolve().as_uri(), test=test.resolve().as_uri(), target="y", id="id"))
    assert len(data.y) == summary.n_rows == 8 and data.X_test.shape == (8, 2)


def _yes_no(tmp_path: Path) -> Path:
    path = tmp_path / "yn.csv"
    pd.DataFrame({"x": np.arange(10.0), "label": ["yes", "no"] * 5}).to_csv(path, index=False)
    return path


def test_the_positive_class_is_the_last_sorted_label_unless_the_spec_names_one(tmp_path: Path) -> None:
    path = _yes_no(tmp_path)
    default = prepare_data(DataConfig(train=str(path), target="label"))
    assert default.classes == ("no", "yes") and default.y.tolist() == [1, 0] * 5
    for given in ("no", False):  # YAML reads an unquoted `no` as False
        flipped = prepare_data(DataConfig(train=str(path), target="label", positive_class=given))
        assert flipped.classes == ("yes", "no") and flipped.y.tolist() == [0, 1] * 5
        summary = inspect_data(DataConfig(train=str(path), target="label", positive_class=given))
        assert summary.classes == ("yes", "no") and summary.y.tolist() == [0, 1] * 5


def test_a_positive_class_that_is_not_a_class_names_the_classes(tmp_path: Path) -> None:
    path = _yes_no(tmp_path)
    with pytest.raises(DataError, match=r"data.positive_class: 'maybe' is not a class of 'label' \(classes: 'no', 'yes'\)"):
        inspect_data(DataConfig(train=str(path), target="label", positive_class="maybe"))
    with pytest.raises(DataError, match="data.positive_class is for binary tasks"):
        inspect_data(DataConfig(train="sklearn:iris", positive_class=1))
