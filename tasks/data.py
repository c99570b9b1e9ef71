"""Reading and preparing the training (and test) data.

`inspect_data` is the cheap read the driver does before any compute, to refuse bad input
with one clear line. `prepare_data` is the full read done once per command (a Ray task),
and `prepare_frames` the same on frames already read (the driver's data checks read them):
either returns a `PreparedData` whose arrays are plain numpy, so fold tasks read them
zero-copy from the object store. Categorical columns are stored as integer codes into a
global level list (a lossless relabelling, not a fit); encoders that learn anything are
fitted inside each fold (see tasks.features).
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from foldwise.tasks import images
from foldwise.tasks.images import IMAGE_DATASETS, builtin_table

SKLEARN_DATASETS = ("breast_cancer", "iris", "wine", "digits", "diabetes")


class DataError(ValueError):
    """A user mistake in the data (missing column, bad target...): one line, exit code 2."""


@dataclass(frozen=True)
class DataConfig:
    train: str
    test: str | None = None
    target: str = "target"
    id: str | None = None
    groups: str | None = None
    drop: tuple[str, ...] = ()
    categorical: tuple[str, ...] = ()
    task: str | None = None  # None -> inferred from the target
    image: str | None = None  # column of image paths (relative to the table's folder); not a feature
    positive_class: object = None  # binary: the label encoded 1 (None: the last in sorted order)


@dataclass(frozen=True)
class DataSummary:
    """What the driver learns from the cheap read: enough to validate folds and metric."""

    task: str
    n_rows: int
    n_classes: int
    classes: tuple  # original labels in code order; () for regression
    y: np.ndarray  # encoded target
    groups: np.ndarray | None
    columns: tuple[str, ...]  # feature columns
    test_rows: int | None
    image_stamp: str | None = None  # paths + sizes + mtimes of the training images, for cache keys
    test_image_stamp: str | None = None  # the same of the test images (test predictions' keys only)


@dataclass(frozen=True)
class PreparedData:
    X: np.ndarray  # (n, p) float64; categorical columns hold codes into `categories`, NaN = missing
    y: np.ndarray  # (n,) int64 class codes, or float64 for regression
    columns: tuple[str, ...]
    categories: dict[str, tuple[str, ...]]  # level lists of the categorical columns
    task: str
    classes: tuple  # original class labels in code order; () for regression
    fingerprint: str
    groups: np.ndarray | None = None
    ids: np.ndarray | None = None
    X_test: np.ndarray | None = None
    test_ids: np.ndarray | None = None
    id_column: str | None = None
    target: str = "target"
    meta: dict[str, object] = field(default_factory=dict)
    image_column: str | None = None  # data.image: its paths are in `images`, not in X
    images: np.ndarray | None = None  # (n,) absolute image paths / URIs of the training rows
    test_images: np.ndarray | None = None

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def categorical(self) -> tuple[str, ...]:
        return tuple(c for c in self.columns if c in self.categories)


def drop_columns(data: PreparedData, drop: tuple[str, ...]) -> PreparedData:
    """The same data without the `drop` feature columns (an ablation variant's view).

    Rows, target, ids and category levels of the kept columns are unchanged; the
    fingerprint stays the source's, since it names where the data came from.
    """
    unknown = [c for c in drop if c not in data.columns]
    if unknown:
        raise ValueError(f"cannot drop {unknown}: not feature columns (columns: {_preview(list(data.columns))})")
    keep = [j for j, c in enumerate(data.columns) if c not in set(drop)]
    if not keep:
        raise ValueError("dropping every feature column leaves nothing to fit")
    columns = tuple(data.columns[j] for j in keep)
    return replace(data, X=np.ascontiguousarray(data.X[:, keep]),
                   X_test=np.ascontiguousarray(data.X_test[:, keep]) if data.X_test is not None else None,
                   columns=columns, categories={c: v for c, v in data.categories.items() if c in columns})


# --------------------------------------------------------------------------- reading


def read_table(source: str, columns: list[str] | None = None) -> pd.DataFrame:
    """CSV or Parquet from a local path or an fsspec/pyarrow URI, or `sklearn:NAME`."""
    if source.startswith("sklearn:"):
        name = source.removeprefix("sklearn:")
        if name in IMAGE_DATASETS:
            try:
                return pd.read_csv(builtin_table(name), usecols=columns)
            except ImportError as e:
                raise DataError(str(e)) from None
        frame = _sklearn_frame(name)
        return frame[columns] if columns is not None else frame
    lower = source.lower()
    _check_local_file(source)
    try:
        if lower.endswith((".parquet", ".pq")):
            return pd.read_parquet(source, columns=columns)
        if lower.endswith((".csv", ".csv.gz", ".tsv")):
            _check_unique_header(source)
            return pd.read_csv(source, usecols=columns, sep="\t" if lower.endswith(".tsv") else ",")
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"data file {source!r} does not exist") from None
    except _READ_ERRORS as e:
        raise DataError(_cannot_read(source, e)) from None
    raise DataError(f"data file {source!r}: unsupported format (use .csv, .csv.gz, .tsv, .parquet, or sklearn:NAME)")


# What reading a damaged, unreachable or mislabelled file raises (a .csv.gz that is not gzip: OSError;
# an http:// URI nothing answers: URLError, an OSError; a truncated gzip: EOFError).
_READ_ERRORS = (OSError, EOFError, ValueError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError)


def _cannot_read(source: str, e: BaseException) -> str:
    reason = getattr(e, "reason", None) or getattr(e, "strerror", None) or str(e).strip().splitlines()[0:1]
    reason = reason[0] if isinstance(reason, list) and reason else reason or type(e).__name__
    return f"cannot read {source!r}: {reason}"


def _check_local_file(source: str) -> None:
    """A local data path names a readable file (not a folder, not a symlink loop): DataError otherwise."""
    if "://" in source:
        return
    try:
        st = os.stat(source)
    except FileNotFoundError:
        raise DataError(f"data file {source!r} does not exist") from None
    except OSError as e:  # ELOOP (a symlink loop), EACCES, ENOTDIR, ...
        raise DataError(f"data file {source!r} cannot be opened: {e.strerror or e}") from None
    if stat.S_ISDIR(st.st_mode):
        raise DataError(f"data file {source!r} is a folder; name a .csv, .csv.gz, .tsv or .parquet file")


def _check_unique_header(source: str) -> None:
    """pandas renames a repeated CSV column `f1` to `f1.1` silently; refuse instead (which column is meant?)."""
    head = pd.read_csv(source, nrows=1, header=None, dtype=str, keep_default_na=False,
                       sep="\t" if source.lower().endswith(".tsv") else ",")
    names = [str(v) for v in head.iloc[0]] if len(head) else []
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise DataError(f"data file {source!r} repeats column name(s) {', '.join(map(repr, dupes))}; "
                        "column names must be unique")


def read_header(source: str) -> pd.DataFrame:
    """A few rows (all rows for built-in data) to learn the columns and their kinds cheaply."""
    if source.startswith("sklearn:"):
        return read_table(source)
    _check_local_file(source)
    if source.lower().endswith((".parquet", ".pq")):
        import pyarrow.parquet as pq

        try:
            return pq.ParquetFile(source).schema_arrow.empty_table().to_pandas()
        except (OSError, ValueError):
            return read_table(source).head(0)
    try:
        _check_unique_header(source)
        return pd.read_csv(source, nrows=1000, sep="\t" if source.lower().endswith(".tsv") else ",")
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"data file {source!r} does not exist") from None
    except _READ_ERRORS as e:
        raise DataError(_cannot_read(source, e)) from None


def _sklearn_frame(name: str) -> pd.DataFrame:
    import sklearn.datasets as ds

    if name not in SKLEARN_DATASETS:
        valid = ", ".join("sklearn:" + n for n in SKLEARN_DATASETS + IMAGE_DATASETS)
        raise DataError(f"unknown built-in dataset 'sklearn:{name}' (valid: {valid})")
    bunch = getattr(ds, f"load_{name}")(as_frame=True)
    frame = bunch.frame.copy()
    if "target" not in frame.columns:
        frame["target"] = bunch.target
    return frame


# --------------------------------------------------------------------------- the cheap check


def inspect_data(config: DataConfig) -> DataSummary:
    """Validate columns and target with the cheapest read that can; raise DataError."""
    header = read_header(config.train)
    names = list(header.columns)
    for key, col in (("data.target", config.target), ("data.id", config.id), ("data.groups", config.groups),
                     ("data.image", config.image)):
        if col is not None and col not in names:
            raise DataError(f"{key}: column {col!r} is not in {config.train!r} (columns: {_preview(names)})")
    for col in config.drop + config.categorical:
        if col not in names:
            raise DataError(f"features: column {col!r} is not in {config.train!r} (columns: {_preview(names)})")
    needed = [c for c in (config.target, config.id, config.groups, config.image) if c is not None]
    frame = header if config.train.startswith("sklearn:") else read_table(config.train, columns=needed)
    if len(frame) == 0:
        raise DataError(f"{config.train!r} has no rows")
    task = config.task or infer_task(frame[config.target])
    y, classes = encode_target(frame[config.target], task, config.target, config.positive_class)
    if config.id is not None and frame[config.id].duplicated().any():
        dup = frame[config.id][frame[config.id].duplicated()].iloc[0]
        dup = dup.item() if hasattr(dup, "item") else dup
        raise DataError(f"data.id: column {config.id!r} has duplicate value {dup!r}; ids must be unique")
    groups = frame[config.groups].to_numpy() if config.groups else None
    if groups is not None and pd.isna(groups).any():
        raise DataError(f"data.groups: column {config.groups!r} has missing values")
    features = feature_columns(names, config)
    if not features and config.image is None:
        raise DataError(f"{config.train!r} has no feature columns left after target/id/groups/drop")
    image_stamp = _check_images(frame[config.image], config.train, "data.image") if config.image else None
    test_rows = test_image_stamp = None
    if config.test is not None:
        test_header = read_header(config.test)
        _check_test_columns(header, test_header, features, config)
        test_rows = None  # counted by prepare; the header read is deliberately partial
        if config.image is not None:
            if config.image not in test_header.columns:
                raise DataError(f"data.test: image column {config.image!r} is missing from the test file")
            test_images = read_table(config.test, columns=[config.image])[config.image]
            test_image_stamp = _check_images(test_images, config.test, "data.test")
    return DataSummary(task=task, n_rows=len(frame), n_classes=len(classes), classes=classes, y=y, groups=groups,
                       columns=tuple(features), test_rows=test_rows, image_stamp=image_stamp,
                       test_image_stamp=test_image_stamp)


def _check_images(values: pd.Series, source: str, key: str) -> str:
    """Every image path present (local files), the first one decodable; returns their stamp."""
    if values.isna().any():
        raise DataError(f"{key}: image column {values.name!r} has {int(values.isna().sum())} missing path(s)")
    folder = images.table_folder(source)
    paths = images.resolve_paths(values, folder)
    missing = images.missing_paths(paths)
    if missing:
        i = missing[0]
        raise DataError(f"{key}: image column {values.name!r} row {i}: file {str(values.iloc[i])!r} does not exist "
                        f"({len(missing)} missing; relative paths are read from {folder})")
    if len(paths) and "://" not in paths[0]:
        try:
            images.read_image(paths[0], 3)
        except (images.ImageReadError, ImportError) as e:
            raise DataError(f"{key}: {e}") from None
    return images.stamp(paths)


def _check_test_columns(train: pd.DataFrame, test: pd.DataFrame, features: list[str], config: DataConfig) -> None:
    missing = [c for c in features if c not in test.columns]
    allowed = set(features) | {c for c in (config.id, config.target, config.groups, config.image) if c} | set(config.drop)
    extra = [c for c in test.columns if c not in allowed]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {_preview(missing)}")
        if extra:
            parts.append(f"not in train {_preview(extra)}")
        raise DataError(f"data.test: test columns differ from train: {'; '.join(parts)}")
    if config.id is not None and config.id not in test.columns:
        raise DataError(f"data.test: id column {config.id!r} is missing from the test file (needed for the submission)")
    for col in features:
        if len(train) and len(test) and _kind(train[col]) != _kind(test[col]) and not (
            test[col].isna().all() or train[col].isna().all()
        ):
            raise DataError(f"data.test: column {col!r} is {_kind(train[col])} in train but {_kind(test[col])} in test")


def _kind(s: pd.Series) -> str:
    return "numeric" if pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s) else "text/categorical"


def _preview(items: list[str], n: int = 8) -> str:
    shown = ", ".join(map(str, items[:n]))
    return shown + (f", ... ({len(items)} in all)" if len(items) > n else "")


def feature_columns(names: list[str], config: DataConfig) -> list[str]:
    skip = {c for c in (config.target, config.id, config.groups, config.image) if c} | set(config.drop)
    return [c for c in names if c not in skip]


def infer_task(target: pd.Series) -> str:
    values = target.dropna()
    n_unique = values.nunique()
    if n_unique <= 2:
        return "binary"
    if not pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
        return "multiclass"
    with np.errstate(invalid="ignore"):  # inf % 1 is NaN: not integral (an inf target is refused later)
        integral = bool(np.all(np.equal(np.mod(values.to_numpy(dtype=float), 1), 0)))
    return "multiclass" if integral and n_unique <= 20 else "regression"


def encode_target(target: pd.Series, task: str, name: str, positive_class: object = None) -> tuple[np.ndarray, tuple]:
    """Class codes in sorted label order (as LabelEncoder), or float values.

    Binary: `positive_class` (data.positive_class) is the label coded 1, so the probability
    foldwise writes is P(target == positive_class); by default the last label in sorted order
    ('yes' of no/yes, 1 of 0/1). `classes` is always in code order."""
    if target.isna().any():
        raise DataError(f"data.target: column {name!r} has {int(target.isna().sum())} missing value(s); "
                        "drop those rows or fill them")
    if positive_class is not None and task != "binary":
        raise DataError(f"data.positive_class is for binary tasks (this task is {task}); remove it")
    if task == "regression":
        if not pd.api.types.is_numeric_dtype(target):
            raise DataError(f"data.target: column {name!r} is not numeric, but the task is regression")
        y = target.to_numpy(dtype=np.float64)
        if not np.isfinite(y).all():
            raise DataError(f"data.target: column {name!r} has infinite value(s)")
        return y, ()
    if pd.api.types.is_numeric_dtype(target) and not np.isfinite(target.to_numpy(dtype=float)).all():
        raise DataError(f"data.target: column {name!r} has infinite value(s)")
    classes, codes = np.unique(target.to_numpy(), return_inverse=True)
    if len(classes) < 2:
        raise DataError(f"data.target: column {name!r} is constant ({classes[0]!r}); nothing to learn")
    if task == "binary" and len(classes) != 2:
        raise DataError(f"task: binary, but data.target {name!r} has {len(classes)} classes (use multiclass)")
    labels = tuple(c.item() if hasattr(c, "item") else c for c in classes)
    codes = codes.astype(np.int64)
    if positive_class is not None:
        positive = class_index(positive_class, labels)
        if positive is None:
            raise DataError(f"data.positive_class: {positive_class!r} is not a class of {name!r} "
                            f"(classes: {', '.join(repr(c) for c in labels)})")
        if positive == 0:
            return 1 - codes, (labels[1], labels[0])
    return codes, labels


_YAML_BOOLS = {True: ("true", "yes", "y", "on"), False: ("false", "no", "n", "off")}


def class_index(value: object, classes: tuple) -> int | None:
    """The position of `value` among `classes`, matched as written: equal, equal as text, or a YAML
    boolean (an unquoted `no` in a spec is False) spelled as one of the labels; None if none is."""
    for match in (lambda c: type(c) is type(value) and c == value, lambda c: str(c) == str(value),
                  lambda c: isinstance(value, bool) and str(c).lower() in _YAML_BOOLS[value]):
        found = [i for i, c in enumerate(classes) if match(c)]
        if len(found) == 1:
            return found[0]
    return None


# --------------------------------------------------------------------------- the full read


def prepare_data(config: DataConfig) -> PreparedData:
    """Read train (+ test) once and turn them into numpy arrays fold tasks can share."""
    train = read_table(config.train)
    test = read_table(config.test) if config.test else None
    return prepare_frames(config, train, test)


def prepare_frames(config: DataConfig, train: pd.DataFrame, test: pd.DataFrame | None) -> PreparedData:
    """`prepare_data` on frames already read (the driver's data checks read them: no second read)."""
    task = config.task or infer_task(train[config.target])
    y, classes = encode_target(train[config.target], task, config.target, config.positive_class)
    features = feature_columns(list(train.columns), config)
    categories: dict[str, tuple[str, ...]] = {}
    X = np.empty((len(train), len(features)), dtype=np.float64, order="F")
    X_test = np.empty((len(test), len(features)), dtype=np.float64, order="F") if test is not None else None
    for j, col in enumerate(features):
        is_cat = col in config.categorical or not (
            pd.api.types.is_numeric_dtype(train[col]) or pd.api.types.is_bool_dtype(train[col])
            or pd.api.types.is_datetime64_any_dtype(train[col])
        )
        if is_cat:
            both = pd.concat([train[col], test[col]]) if test is not None else train[col]
            levels = sorted({str(v) for v in both.dropna().unique()})
            categories[col] = tuple(levels)
            lookup = {v: i for i, v in enumerate(levels)}
            X[:, j] = _codes(train[col], lookup)
            if X_test is not None:
                X_test[:, j] = _codes(test[col], lookup)
        else:
            X[:, j] = _numeric(train[col])
            if X_test is not None:
                X_test[:, j] = _numeric(test[col])
    X = np.ascontiguousarray(X)
    X_test = np.ascontiguousarray(X_test) if X_test is not None else None
    groups = train[config.groups].to_numpy() if config.groups else None
    ids = train[config.id].to_numpy() if config.id else None
    test_ids = test[config.id].to_numpy() if (test is not None and config.id) else None
    train_images = test_images = None
    if config.image:
        train_images = images.resolve_paths(train[config.image], images.table_folder(config.train))
        if test is not None:
            test_images = images.resolve_paths(test[config.image], images.table_folder(config.test))
    return PreparedData(
        X=X, y=y, columns=tuple(features), categories=categories, task=task, classes=classes,
        fingerprint=fingerprint(X, y, features, X_test, train_images, test_images), groups=groups, ids=ids,
        X_test=X_test, test_ids=test_ids, id_column=config.id, target=config.target, image_column=config.image,
        images=train_images, test_images=test_images,
    )


def _codes(values: pd.Series, lookup: dict[str, int]) -> np.ndarray:
    return values.map(lambda v: np.nan if pd.isna(v) else lookup[str(v)]).to_numpy(dtype=np.float64)


def _numeric(values: pd.Series) -> np.ndarray:
    if pd.api.types.is_datetime64_any_dtype(values):
        return (values.astype("int64") / 1e9).to_numpy(dtype=np.float64)
    out = values.to_numpy(dtype=np.float64, na_value=np.nan)
    if np.isinf(out).any():
        out = np.where(np.isinf(out), np.nan, out)  # inf in a feature is treated as missing
    return out


def fingerprint(X: np.ndarray, y: np.ndarray, columns: list[str], X_test: np.ndarray | None,
                train_images: np.ndarray | None = None, test_images: np.ndarray | None = None) -> str:
    h = hashlib.sha256()
    for part in (X, y, X_test if X_test is not None else np.empty(0)):
        h.update(np.ascontiguousarray(part).tobytes())
    h.update("\x1f".join(columns).encode())
    for paths in (train_images, test_images):
        if paths is not None:  # which image files, and their sizes and mtimes
            h.update(images.stamp(paths).encode())
    return h.hexdigest()[:16]
