"""New rows for a trained run (`foldwise predict`): read in bounded chunks, and their drift from
the training data measured as they stream past.

Reading only the columns the models need, a chunk at a time, keeps memory to about a chunk
whatever the file's size. Drift is the population stability index of `foldwise check`
(tasks.drift.psi) on the same bins, counted chunk by chunk against the run's reference sample.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from foldwise.tasks.data import DataError
from foldwise.tasks.drift import PSI_BINS, PSI_MAJOR, PSI_MODERATE, psi
from foldwise.tasks.predictor import Predictor


def read_chunks(source: str, columns: list[str], chunk_rows: int) -> Iterator[pd.DataFrame]:
    """`columns` of a .csv/.csv.gz/.tsv/.parquet file, `chunk_rows` rows at a time."""
    lower = source.lower()
    try:
        if lower.endswith((".parquet", ".pq")):
            yield from _parquet_chunks(source, columns, chunk_rows)
            return
        if lower.endswith((".csv", ".csv.gz", ".tsv")):
            yield from pd.read_csv(source, usecols=columns, chunksize=chunk_rows, sep="\t" if lower.endswith(".tsv") else ",")
            return
    except FileNotFoundError:
        raise DataError(f"data file {source!r} does not exist") from None
    raise DataError(f"data file {source!r}: unsupported format (use .csv, .csv.gz, .tsv or .parquet)")


def _parquet_chunks(source: str, columns: list[str], chunk_rows: int) -> Iterator[pd.DataFrame]:
    """A Parquet file row group by row group, each read a column at a time and cut in chunks.

    Arrow decodes a whole row group at once, and reading all its columns together (iter_batches)
    holds two to three times the group's decoded size at its peak; one column at a time holds the
    group once (a number column without nulls is Arrow's buffer, not copied into pandas). A chunk
    never spans two row groups. The generator holds the group only while its chunks are handed out.
    """
    import pyarrow.parquet as pq

    f = pq.ParquetFile(source, buffer_size=1 << 20)
    for group in range(f.metadata.num_row_groups):
        frame = _row_group_frame(f, group, columns)
        for start in range(0, len(frame), chunk_rows):
            yield frame.iloc[start:start + chunk_rows]
        del frame


def _row_group_frame(f: object, group: int, columns: list[str]) -> pd.DataFrame:
    parts = {}
    for c in columns:
        table = f.read_row_group(group, columns=[c], use_threads=False)  # type: ignore[attr-defined]
        parts[c] = table.to_pandas(split_blocks=True, self_destruct=True)[c]
        del table
    return pd.DataFrame(parts, copy=False)


def count_chunks(source: str, chunk_rows: int) -> int | None:
    """How many chunks `read_chunks` gives for a Parquet file (from its footer; None for text files)."""
    if source.lower().endswith((".parquet", ".pq")):
        import pyarrow.parquet as pq

        meta = pq.ParquetFile(source).metadata
        return sum(-(-meta.row_group(g).num_rows // chunk_rows) for g in range(meta.num_row_groups))
    return None


def chunk_rows_for(features: int, chunk_bytes: int) -> int:
    """Rows per chunk so a chunk's encoded rows (float64) take about `chunk_bytes`."""
    return max(1_000, chunk_bytes // (8 * max(1, features)))


@dataclass
class DriftCounter:
    """Per feature, counts of the new rows over the bins `foldwise check` uses (train quantiles +
    a missing bin; categorical levels + missing), accumulated chunk by chunk."""

    predictor: Predictor
    edges: dict[str, np.ndarray] = field(default_factory=dict)
    expected: dict[str, np.ndarray] = field(default_factory=dict)
    actual: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        ref = self.predictor.reference
        for j, col in enumerate(self.predictor.columns):
            x = ref[:, j]
            if self.predictor.kinds[col] == "categorical":
                self.edges[col] = np.empty(0)
            else:
                ok = ~np.isnan(x)
                qs = np.quantile(x[ok], np.linspace(0, 1, PSI_BINS + 1)[1:-1]) if ok.any() else np.empty(0)
                self.edges[col] = np.unique(qs)
            self.expected[col] = self._counts(col, x)
            self.actual[col] = np.zeros_like(self.expected[col])

    def _counts(self, col: str, x: np.ndarray) -> np.ndarray:
        ok = ~np.isnan(x)
        if self.predictor.kinds[col] == "categorical":
            n = len(self.predictor.categories[col]) + 1
            return np.bincount(np.where(ok, np.nan_to_num(x), n - 1).astype(np.int64), minlength=n)
        edges = self.edges[col]
        n = len(edges) + 2
        b = np.where(ok, np.searchsorted(edges, np.where(ok, x, 0.0), side="right"), n - 1)
        return np.bincount(b, minlength=n)

    def add(self, X: np.ndarray) -> None:
        for j, col in enumerate(self.predictor.columns):
            self.actual[col] += self._counts(col, X[:, j])

    def psi(self) -> dict[str, float]:
        """Feature -> PSI of the rows added so far against the training sample, largest first."""
        out = {col: psi(self.expected[col], self.actual[col]) for col in self.predictor.columns}
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))

    def warnings(self) -> list[str]:
        """One line per feature whose PSI says it moved (>= the moderate threshold of `foldwise check`)."""
        return [f"drift: feature {col!r} PSI {v:.3f} ({'major' if v >= PSI_MAJOR else 'moderate'}) against the training data"
                for col, v in self.psi().items() if v >= PSI_MODERATE]


def write_csv(frame: pd.DataFrame, path: str | Path, block_rows: int = 1_000_000) -> None:
    """`frame` as CSV without its index, with Arrow's writer (C++, ~10x pandas' to_csv on float
    columns; floats written so they read back exactly), a block of rows at a time; the header as
    pandas writes it (quoted only where needed)."""
    import csv

    import pyarrow as pa
    import pyarrow.csv as pa_csv

    with open(path, "w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerow([str(c) for c in frame.columns])
    options = pa_csv.WriteOptions(include_header=False, quoting_style="needed")
    with open(path, "ab") as f:
        for start in range(0, max(len(frame), 1), block_rows):
            part = frame.iloc[start:start + block_rows]
            if len(part):
                pa_csv.write_csv(pa.Table.from_pandas(part, preserve_index=False), f, options)
