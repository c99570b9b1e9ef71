"""`foldwise predict RUN DATA`: a trained run's fold models (and its ensemble) on new rows.

RUN is a run id or name, a `models:/NAME/VERSION` URI or a run's outputs folder; the model is the
pyfunc every `foldwise run` logs (its Predictor). The edge checks everything a user can get wrong
before anything starts (exit 2, nothing written): the run, `--model`, the file, every feature
column and its kind. Then the file is read a chunk at a time (`--chunk-rows` bounds memory); each
chunk is encoded once, put in the object store once, and read zero-copy by one task per model x
fold (the resources the model trained with), the next chunk's tasks queued behind. The output is
Kaggle-shaped (id + a column per class, or the value) plus summary.json, and the prediction is a
child run of RUN in MLflow.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from foldwise.infra import storage
from foldwise.tasks import images
from foldwise.tasks.data import DataError, read_header
from foldwise.tasks.new_rows import DriftCounter, chunk_rows_for, count_chunks, read_chunks, write_csv
from foldwise.tasks.predictor import (
    ENSEMBLE,
    PredictInputError,
    Predictor,
    blend_predictions,
    check_output,
    mean_over_folds,
    predict_fold,
)
from foldwise.tasks.report import write_json
from foldwise.workflows.engine.executor import Slot
from foldwise.workflows.engine.lazy import LazyExecutor
from foldwise.workflows.engine.progress import FoldProgress
from foldwise.workflows.errors import InputError, RunFailed, TaskFailed
from foldwise.workflows.tracking import tracker as tk

DEFAULT_CHUNK_BYTES = 32 * 2**20  # without --chunk-rows: rows of about this many encoded bytes per chunk
TAG_MODEL_URI = "foldwise.model_uri"
TAG_OUTPUT = "foldwise.predict.output"


@dataclass(frozen=True)
class PredictResult:
    summary: dict[str, Any]
    out_dir: Path | str
    predictions: pd.DataFrame


@dataclass(frozen=True)
class _Source:
    predictor: Predictor
    run_id: str  # the run the model belongs to ("" for a registry version without one)
    experiment: str
    model_uri: str
    tracking_uri: str


def run_predict(run: str, data: str, *, out: str | Path | None = None, model: str = ENSEMBLE,
                tracking_uri: str | None = None, executor: str = "ray", address: str | None = None,
                chunk_rows: int | None = None, progress: bool = False) -> PredictResult:
    """The Python API of `foldwise predict`. Raises InputError (nothing written; a Ray this started
    is stopped) or RunFailed (a fold task failed; the predict run is marked FAILED)."""
    wall_start, started = time.perf_counter(), time.time()
    if chunk_rows is not None and chunk_rows < 1:
        raise InputError(f"--chunk-rows: at least 1 (got {chunk_rows})")
    try:
        header = read_header(data)
    except DataError as e:
        raise InputError(str(e)) from None
    ex = LazyExecutor(executor, address)
    try:
        with ThreadPoolExecutor(1, thread_name_prefix="foldwise-model") as pool:
            lookup = pool.submit(_resolve, run, tracking_uri)  # MLflow: imports, the store, the model's download
            # meanwhile Ray starts on a thread of its own (executor.expect_early) while this one checks the
            # columns and reads and encodes the first chunk; with $FOLDWISE_EARLY_RAY=0 here, beside the lookup
            if executor == "ray" and not ex.expect_early():
                ex.start()
            src = lookup.result()
        p = src.predictor
        chunk_rows = chunk_rows or chunk_rows_for(len(p.columns), DEFAULT_CHUNK_BYTES)
        try:
            check_output(p, model)
            if p.steps:
                p.check_raw_columns(header, data)
                chunks, n_chunks = _stepped_chunks(p, data, chunk_rows)
            else:
                p.check_columns(header, data)
        except (PredictInputError, DataError) as e:
            raise InputError(str(e)) from None
        id_col = p.id_column if p.id_column and p.id_column in header.columns else None
        columns = list(dict.fromkeys([*([id_col] if id_col else []), *p.columns,
                                      *([p.image_column] if p.image_column else [])]))
        if not p.steps:
            chunks, n_chunks = read_chunks(data, columns, chunk_rows), count_chunks(data, chunk_rows)
        notes = [] if id_col or not p.id_column else [f"id column {p.id_column!r} is not in {data}: rows are numbered instead"]
        names = list(p.blend.names) if model == ENSEMBLE else [model]
        base, ids, facts = _predict_chunks(ex, p, names, data, chunks, n_chunks, id_col, chunk_rows, progress)
    except TaskFailed as e:
        ex.close()
        raise RunFailed(f"{e}", None) from None
    except BaseException:
        ex.close()
        raise
    ex.close_beside()  # every task is done: Ray shuts down while predictions.csv and the MLflow run are written
    try:
        return _output(src, p, model, data, base, ids, id_col, facts, notes, out, wall_start, started, ex)
    finally:
        ex.close()  # waits for the shutdown: no Ray process outlives the command


def _output(src: _Source, p: Predictor, model: str, data: str, base: dict[str, np.ndarray], ids: np.ndarray,
            id_col: str | None, facts: dict[str, Any], notes: list[str], out: str | Path | None, wall_start: float,
            started: float, ex: LazyExecutor) -> PredictResult:
    """The blended predictions as a Kaggle-shaped table, the warnings, and `_finish`'s files and run."""
    if model != ENSEMBLE:
        pred = base[model]
    elif "" in base:  # a passthrough stack, blended chunk by chunk while each chunk's features were at hand
        pred = base.pop("")
    else:
        pred = blend_predictions(p.blend, base, p.task, p.n_classes)
    frame = output_table(p, pred, ids, id_col or "row")
    warnings = notes + [f"unknown level(s) in column {c!r}: {n} row(s), treated as missing (as in the folds)"
                        for c, n in facts["unknown_levels"].items()] + facts["drift"].warnings()
    for line in warnings:
        print(f"foldwise: warning: {line}", file=sys.stderr)
    return _finish(src, data, model, frame, facts, warnings, out, wall_start, started, ex)


def _resolve(run: str, tracking_uri: str | None) -> _Source:
    """RUN -> its Predictor; an outputs folder names its run and tracking store in summary.json."""
    from foldwise.workflows.tracking.logged_model import ModelNotFound, find_model

    ref, uri = run, tracking_uri
    folder = Path(run)
    if not run.startswith("models:/") and folder.is_dir():
        summary = folder / "summary.json"
        if not summary.exists():
            raise InputError(f"RUN {run!r} is a folder without summary.json (expected a `foldwise run` outputs folder)")
        facts = json.loads(summary.read_text())
        if facts.get("command") != "run" or "model" not in facts:
            raise InputError(f"RUN {run!r}: its summary.json is of `foldwise {facts.get('command', '?')}`, not of a "
                             "`foldwise run` that logged a model")
        ref, uri = facts["run_id"], tracking_uri or facts.get("tracking_uri")
    uri = tk.resolve_uri(uri)
    problem = tk.server_unreachable(uri) or tk.store_missing(uri)
    if problem:
        raise InputError(problem)
    try:
        predictor, where = find_model(uri, ref)
    except ModelNotFound as e:
        raise InputError(str(e)) from None
    return _Source(predictor, where["run_id"], where["experiment"] or "foldwise-predict", where["model_uri"], uri)


def _stepped_chunks(p: Predictor, data: str, chunk_rows: int) -> tuple[Iterator[pd.DataFrame], int]:
    """A run with frame steps: the whole file read, the steps replayed on it as the run replayed them
    on its test file (a step may read every row: counts, ranks), then cut in chunks for the folds.
    PredictInputError for a bad step result or a step module that cannot be imported, RunFailed
    when a step's function raises (nothing is written either way: no run has started)."""
    from foldwise.tasks.data import read_table
    from foldwise.tasks.steps import StepRaised

    frame = read_table(data)
    try:
        stepped = p.stepped(frame, data)
    except StepRaised as e:
        raise RunFailed(str(e), None) from None
    del frame
    return (stepped.iloc[i:i + chunk_rows] for i in range(0, len(stepped), chunk_rows)), -(-len(stepped) // chunk_rows)


def _predict_chunks(ex: LazyExecutor, p: Predictor, names: list[str], data: str, chunks: Iterable[pd.DataFrame],
                    n_chunks: int | None, id_col: str | None, chunk_rows: int, progress: bool
                    ) -> tuple[dict[str, np.ndarray], np.ndarray, dict[str, Any]]:
    """Every chunk: encode once, put once, one task per model x fold; two chunks in flight at most."""
    drift, unknown, digest = DriftCounter(p), {}, hashlib.sha256()
    per_chunk = sum(len(p.models[n]) for n in names)
    total = n_chunks * per_chunk if n_chunks is not None else None
    done_chunks = 0
    shell = folds = None
    image_folder = images.table_folder(data) if p.image_column else None
    parts: dict[str, list[np.ndarray]] = {n: [] for n in names}
    id_parts: list[np.ndarray] = []
    pending: deque[tuple[dict[str, list[Any]], np.ndarray | None]] = deque()
    blended: list[np.ndarray] = []  # a passthrough stack's ensemble, per chunk (it needs the chunk's features)
    passthrough = p.blend.passthrough and len(p.blend.names) > 1 and names == list(p.blend.names)
    seen = 0
    tick = time.perf_counter()

    def collect(bar: FoldProgress) -> None:
        handles, X_kept = pending.popleft()
        for n in names:
            values = []
            for h in handles[n]:
                values.append(ex.get(h))
                bar.advance(n)
            parts[n].append(mean_over_folds(values))
        if X_kept is not None:
            blended.append(blend_predictions(p.blend, {n: parts[n][-1] for n in names}, p.task, p.n_classes, X_kept))

    with FoldProgress(progress, total) as bar:  # type: ignore[arg-type] - None: rows unknown (text file)
        for chunk in chunks:
            try:
                p.check_columns(chunk, f"{data} (rows {seen}-{seen + len(chunk) - 1})")
                enc = p.encode(chunk, image_folder)
            except (PredictInputError, ValueError, TypeError) as e:
                raise InputError(str(e)) from None
            id_parts.append(chunk[id_col].to_numpy() if id_col else np.arange(seen, seen + len(chunk)))
            first, seen, done_chunks = seen, seen + len(chunk), done_chunks + 1
            del chunk  # the encoded rows are all that is needed from here
            drift.add(enc.X)
            digest.update(enc.X)  # C-contiguous: hashed in place (no bytes copy)
            for c, n in enc.unknown_levels.items():
                unknown[c] = unknown.get(c, 0) + n
            if shell is None:
                shell = ex.put(p.shell())
                folds = {n: [ex.put(f) for f in p.models[n]] for n in names}
            X = ex.put(enc.X)
            imgs = ex.put(enc.images) if enc.images is not None else None
            handles: dict[str, list[Any]] = {}
            for n in names:
                cpus, gpus = p.slots.get(n, (1.0, 0.0))
                handles[n] = [ex.submit(predict_fold, shell, f, X, imgs, slot=Slot(cpus, gpus),
                                        name=f"predict[model={n}, fold={k}, rows={first}-{seen - 1}]")
                              for k, f in enumerate(folds[n])]
            pending.append((handles, enc.X if passthrough else None))
            del X, imgs, enc
            if len(pending) > 1:
                collect(bar)
        while pending:
            collect(bar)
    if not seen:
        raise InputError(f"{data} has no rows")
    digest.update("\x1f".join(p.columns).encode())
    base = {n: np.concatenate(parts[n]) for n in names} | ({"": np.concatenate(blended)} if passthrough else {})
    facts = {"rows": seen, "unknown_levels": unknown, "drift": drift, "fingerprint": digest.hexdigest()[:16],
             "predict_seconds": time.perf_counter() - tick, "chunks": done_chunks, "tasks_per_chunk": per_chunk,
             "chunk_rows": chunk_rows}
    return base, np.concatenate(id_parts), facts


def output_table(p: Predictor, pred: np.ndarray, ids: np.ndarray, id_name: str) -> pd.DataFrame:
    """Kaggle shape: the id, then a column per class (named after it; binary too) or the target's value."""
    cols: dict[str, Any] = {id_name: ids}
    if p.task == "binary":
        cols |= {str(p.classes[0]): 1.0 - pred, str(p.classes[1]): pred}
    elif p.task == "multiclass":
        cols |= {str(c): pred[:, i] for i, c in enumerate(p.classes)}
    else:
        cols[p.target] = pred
    return pd.DataFrame(cols)


def _finish(src: _Source, data: str, model: str, frame: pd.DataFrame, facts: dict[str, Any], warnings: list[str],
            out: str | Path | None, wall_start: float, started: float, ex: LazyExecutor) -> PredictResult:
    """predictions.csv + summary.json, and the child run of RUN that records them."""
    tracker = tk.Tracker(src.tracking_uri, src.experiment)
    stem = Path(data).name.split(".")[0]
    run_id = tracker.start_run(f"predict-{stem}", {tk.TAG_COMMAND: "predict", tk.TAG_DATA: facts["fingerprint"],
                                                   TAG_MODEL_URI: src.model_uri, TAG_OUTPUT: model} | tk.process_tags(),
                               parent_id=src.run_id or None, start_time=started)
    ok = False
    try:
        target = str(out) if out else storage.join(storage.outputs_root(), src.experiment, src.run_id or "registry",
                                                     f"predict-{run_id}")
        out_dir = storage.staging_folder(target)
        write_csv(frame, out_dir / "predictions.csv")
        psi = facts["drift"].psi()
        summary = {
            "command": "predict", "run_id": run_id, "source_run_id": src.run_id, "model_uri": src.model_uri,
            "tracking_uri": src.tracking_uri, "experiment": src.experiment, "data": str(data), "output": model,
            "task": src.predictor.task, "classes": list(src.predictor.classes),
            "rows": facts["rows"], "data_fingerprint": facts["fingerprint"], "chunks": facts["chunks"],
            "chunk_rows": facts["chunk_rows"],
            "tasks": facts["chunks"] * facts["tasks_per_chunk"], "executor": ex.chosen,
            "unknown_levels": facts["unknown_levels"], "drift": [{"feature": f, "psi": v} for f, v in psi.items()],
            "warnings": warnings, "wall_seconds": time.perf_counter() - wall_start,
            "startup_seconds": ex.startup_seconds, "ray_start_seconds": ex.start_seconds,
            "timeline": ex.timeline(wall_start), "predict_seconds": facts["predict_seconds"],
            "outputs": {"predictions": storage.relocate(out_dir / "predictions.csv", out_dir, target)},
        }
        write_json(out_dir / "summary.json", summary)
        tracker.log(run_id, params={"data": str(data), "output": model, "model_uri": src.model_uri},
                    metrics={"rows": float(facts["rows"]), tk.M_WALL_SECONDS: summary["wall_seconds"],
                             "unknown_level_rows": float(sum(facts["unknown_levels"].values())),
                             "max_psi": float(max(psi.values(), default=0.0))},
                    tags={"foldwise.data_warnings": str(len(warnings))})
        tracker.log_file(run_id, out_dir / "summary.json")  # not the predictions: they can be large (their path is in it)
        storage.publish_folder(out_dir, target)
        ok = True
    finally:
        tracker.finish(run_id, ok)
    return PredictResult(summary=summary, out_dir=out_dir if not storage.is_uri(target) else target, predictions=frame)

