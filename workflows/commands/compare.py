"""`foldwise compare RUN_A RUN_B`: a model-change write-up, logged on B's run as its description.

Reads both runs back from MLflow (their tags, stepped metrics and the parent run's
artifacts: oof.parquet, spec.yaml, summary.json), re-reads the training table for slices,
and hands plain data to `tasks.compare`. Everything that can be wrong with the input
(unknown run, different metric or task) is found before anything is written.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from foldwise.infra import storage

if TYPE_CHECKING:  # heavy imports stay inside the functions so `foldwise --help` stays instant
    import pandas as pd

    from foldwise.tasks.compare import Comparison, PairedRows, RunFacts
    from foldwise.workflows.tracking import tracker as tk


class CompareInputError(ValueError):
    """Unknown run, or runs that cannot be compared (exit 2, nothing written)."""


@dataclass(frozen=True)
class LoadedRun:
    facts: RunFacts
    oof: pd.DataFrame | None
    spec: dict[str, Any]  # the effective spec as logged (raw YAML mapping)
    record: tk.RunRecord


@dataclass(frozen=True)
class CompareResult:
    summary: dict[str, Any]
    comparison: Comparison
    out_dir: Path | str  # a local folder, or the URI the files were uploaded to
    markdown: str


def compare(run_a: str, run_b: str, *, out: str | Path | None = None, tracking_uri: str | None = None,
            n_boot: int = 200, log: bool = True, seed: int = 0) -> CompareResult:
    """The Python API of `foldwise compare`. Raises CompareInputError before writing anything."""
    from foldwise.tasks.compare import compare_runs
    from foldwise.tasks.compare_report import (
        note_markdown,
        plot_fold_deltas,
        plot_slice_grid,
        sections,
        to_html,
        to_markdown,
    )
    from foldwise.tasks.report import write_json
    from foldwise.tasks.slices import SliceError
    from foldwise.workflows.tracking import tracker as tk

    start = time.perf_counter()
    uri = tk.resolve_uri(tracking_uri)
    problem = tk.store_missing(uri)
    if problem:
        raise CompareInputError(problem)
    reader = tk.RunReader(uri)
    try:
        rec_a, rec_b = reader.find(run_a), reader.find(run_b)
    except tk.RunNotFound as e:
        raise CompareInputError(str(e)) from None
    if rec_a.run_id == rec_b.run_id:
        raise CompareInputError(f"RUN_A and RUN_B are the same run ({rec_a.run_id}); nothing to compare")
    with tempfile.TemporaryDirectory(prefix="foldwise-compare-") as tmp:
        a = load_run(reader, rec_a, run_a, Path(tmp) / "a")
        b = load_run(reader, rec_b, run_b, Path(tmp) / "b")
    if a.facts.metric != b.facts.metric:
        raise CompareInputError(f"the runs use different metrics (A: {a.facts.metric}, B: {b.facts.metric}); "
                                "a delta between them means nothing")
    if a.facts.task != b.facts.task:
        raise CompareInputError(f"the runs solve different tasks (A: {a.facts.task}, B: {b.facts.task})")

    rows, rows_note = paired_rows(a, b)
    slices = {**(a.spec.get("slices") or {}), **(b.spec.get("slices") or {})}
    try:
        comparison = compare_runs(a.facts, b.facts, rows, rows_note, slices, n_boot=n_boot, seed=seed)
    except SliceError as e:  # a spec slice pandas cannot evaluate on this data
        comparison = compare_runs(a.facts, b.facts, rows, rows_note, {}, n_boot=n_boot, seed=seed)
        comparison = _with_slice_note(comparison, str(e))

    target = str(out) if out else storage.join(storage.outputs_root(), b.facts.experiment,
                                               f"compare-{rec_a.run_id[:8]}-vs-{rec_b.run_id[:8]}")
    out_dir = storage.staging_folder(target)  # `target` itself, or a local folder uploaded to it at the end
    plots = {"fold_deltas": plot_fold_deltas(comparison, out_dir / "fold_deltas.png").name}
    grid = plot_slice_grid(comparison, out_dir / "slice_grid.png")
    if grid is not None:
        plots["slice_grid"] = grid.name
    secs = sections(comparison, plots)
    markdown = to_markdown(secs)
    (out_dir / "writeup.md").write_text(markdown)
    (out_dir / "writeup.html").write_text(to_html(secs, out_dir))
    artifact_dir = f"{tk.COMPARE_ARTIFACT_DIR}/{rec_a.run_id}"
    note = note_markdown(secs, f"{artifact_dir}/writeup.md")
    summary = {
        "command": "compare",
        "run_a": rec_a.run_id, "run_b": rec_b.run_id,
        "run_a_name": rec_a.name, "run_b_name": rec_b.name,
        "experiment": b.facts.experiment, "tracking_uri": uri,
        **comparison.summary(),
        "logged_to": {"run_id": rec_b.run_id, "artifacts": artifact_dir, "description_chars": len(note)} if log else None,
        "wall_seconds": 0.0,
        "outputs": {k: storage.relocate(out_dir / v, out_dir, target)
                    for k, v in {"writeup": "writeup.md", "html": "writeup.html", **plots}.items()},
    }
    summary["wall_seconds"] = time.perf_counter() - start
    write_json(out_dir / "summary.json", summary)
    if log:
        reader.log_artifacts(rec_b.run_id, out_dir, artifact_dir)
        reader.set_description(rec_b.run_id, note, {tk.TAG_COMPARED_WITH: rec_a.run_id})
    storage.publish_folder(out_dir, target)
    return CompareResult(summary=summary, comparison=comparison, out_dir=target if storage.is_uri(target) else out_dir,
                         markdown=markdown)


def _with_slice_note(c: Comparison, note: str) -> Comparison:
    from dataclasses import replace

    return replace(c, slice_note=note)


# --------------------------------------------------------------------------- reading a run back


def load_run(reader: tk.RunReader, rec: tk.RunRecord, ref: str, tmp: Path) -> LoadedRun:
    """RunFacts for a `run` parent (its ensemble) or a model's child run (that model's OOF column)."""
    import numpy as np
    import pandas as pd
    import yaml

    from foldwise.tasks.compare import RunFacts
    from foldwise.workflows.tracking import tracker as tk

    model = rec.tags.get(tk.TAG_MODEL)
    if model and rec.parent_id:
        parent = reader.get(rec.parent_id)
        kind, prediction = "model", model
    elif rec.tags.get(tk.TAG_COMMAND) == "run":
        parent, kind, prediction = rec, "run", "ensemble"
    else:
        what = rec.tags.get(tk.TAG_COMMAND) or "not made by foldwise"
        raise CompareInputError(f"run {ref!r} ({rec.run_id}) is not a `foldwise run` parent or model run ({what})")
    names = reader.artifact_names(parent.run_id)
    summary = _read_json(reader, parent.run_id, "summary.json", tmp) if "summary.json" in names else {}
    spec_path = reader.download(parent.run_id, "spec.yaml", tmp) if "spec.yaml" in names else None
    spec = yaml.safe_load(spec_path.read_text()) if spec_path else {}
    oof_path = reader.download(parent.run_id, "oof.parquet", tmp) if "oof.parquet" in names else None
    oof = pd.read_parquet(oof_path) if oof_path else None
    importances = _read_json(reader, parent.run_id, "feature_importance.json", tmp) \
        if "feature_importance.json" in names else {}

    metric = rec.params.get("metric") or summary.get("metric") or parent.params.get("metric") or "?"
    task = summary.get("task") or parent.params.get("task") or spec.get("task") or "?"
    folds = summary.get("folds") or {}
    folds_text = (f"{folds.get('scheme') or parent.params.get('cv.scheme')} x{folds.get('n') or parent.params.get('cv.folds')}, "
                  f"seed {folds.get('seed') or parent.params.get('cv.seed')}")
    repeats = int(folds.get("repeats") or parent.params.get("cv.repeats") or 1)
    folds_text += f", {repeats} repeats" if repeats > 1 else ""
    n_folds = folds.get("n") or parent.params.get("cv.folds")
    models = summary.get("models") or {}
    if kind == "run":
        fold_scores = reader.history(rec.run_id, tk.M_FOLD_SCORE) or list(summary.get("ensemble", {}).get("fold_scores", []))
        cv_score = rec.metrics.get(tk.M_CV_SCORE, summary.get("ensemble", {}).get("cv_score", float("nan")))
        used = list(models)
        fit = _sum_folds([models[m].get("fit_seconds", []) for m in used])
        pred = _sum_folds([models[m].get("predict_seconds", []) for m in used])
        sizes = [float(np.mean(models[m]["model_bytes"])) for m in used if models[m].get("model_bytes")]
        model_bytes = float(sum(sizes)) if sizes else None
        peak = [max(models[m][tk.M_PEAK_MEMORY]) for m in used if models[m].get(tk.M_PEAK_MEMORY)]
        params = dict(rec.params)
        imp = _sum_importances([importances.get(m, {}) for m in used])
    else:
        fold_scores = reader.history(rec.run_id, tk.M_FOLD_SCORE)
        cv_score = rec.metrics.get(tk.M_CV_SCORE, float(np.mean(fold_scores)) if fold_scores else float("nan"))
        used = [model]
        fit = reader.history(rec.run_id, tk.M_FIT_SECONDS)
        pred = reader.history(rec.run_id, tk.M_PREDICT_SECONDS)
        model_bytes = rec.metrics.get(tk.M_MODEL_BYTES)
        peak = reader.history(rec.run_id, tk.M_PEAK_MEMORY)
        # the model's own params plus the run-wide ones (data, features, cv, slices) from the parent
        params = {k: v for k, v in parent.params.items() if not k.startswith(("models.", "ensemble."))} | dict(rec.params)
        imp = importances.get(model) or None
    oof_rows = int((oof["fold"] >= 0).sum()) if oof is not None and "fold" in oof.columns else \
        (summary.get("rows") or {}).get("train")
    facts = RunFacts(
        ref=ref, run_id=rec.run_id, name=rec.name if kind == "run" else f"{parent.name}/{model}", kind=kind,
        experiment=rec.experiment, prediction=prediction, metric=metric, task=task, cv_score=float(cv_score),
        fold_scores=tuple(float(x) for x in fold_scores), folds_hash=rec.tags.get(tk.TAG_FOLDS_HASH) or folds.get("hash"),
        folds=folds_text, n_folds=int(n_folds) if n_folds else None, data_fingerprint=rec.tags.get(tk.TAG_DATA) or summary.get("data_fingerprint"),
        git_commit=rec.tags.get(tk.TAG_GIT), code_version=rec.tags.get(tk.TAG_CODE),
        started=datetime.fromtimestamp(rec.start_time_ms / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        status=rec.status, params=params, features=feature_set(spec), models=tuple(used),
        fit_seconds=tuple(fit), predict_seconds=tuple(pred), model_bytes=model_bytes,
        peak_memory_bytes=float(max(peak)) if peak else None,
        wall_seconds=summary.get("wall_seconds") if kind == "run" else None, oof_rows=oof_rows, importances=imp,
    )
    return LoadedRun(facts=facts, oof=oof, spec=spec, record=rec)


def feature_set(spec: dict[str, Any]) -> tuple[str, ...]:
    """The feature columns the spec trained on (train columns minus target/id/groups/drop)."""
    from foldwise.tasks.data import DataConfig, DataError, feature_columns, read_header

    data = spec.get("data") or {}
    if not data.get("train"):
        return ()
    try:
        names = list(read_header(data["train"]).columns)
    except (DataError, OSError, ValueError):
        return ()
    config = DataConfig(train=data["train"], target=data.get("target", "target"), id=data.get("id"),
                        groups=data.get("groups"), drop=tuple((spec.get("features") or {}).get("drop") or ()))
    return tuple(feature_columns(names, config))


def paired_rows(a: LoadedRun, b: LoadedRun) -> tuple[PairedRows | None, str]:
    """Both runs' OOF on the same rows, with B's training table for slices."""
    from foldwise.tasks.compare import pair_rows

    if a.oof is None or b.oof is None:
        return None, "a run has no oof.parquet artifact; row-level comparisons skipped"
    data = b.spec.get("data") or {}
    target = data.get("target", "target")
    positive = data.get("positive_class")
    if (a.spec.get("data") or {}).get("positive_class") != positive:
        return None, ("the runs' probabilities are of different classes (data.positive_class differs); "
                      "row-level comparisons skipped")
    frame, note = None, ""
    try:
        from foldwise.tasks.data import read_table

        frame = read_table(data["train"])
    except Exception as e:  # noqa: BLE001 - moved file, no credentials...: slices are skipped, said why
        note = f"cannot re-read the training data {data.get('train')!r} ({type(e).__name__}: {e}); slices skipped"
    return pair_rows(a.oof, b.oof, a.facts.prediction, b.facts.prediction, target, b.facts.task, frame, note,
                     id_column=data.get("id"), positive_class=positive)


def _read_json(reader: tk.RunReader, run_id: str, name: str, tmp: Path) -> dict[str, Any]:
    path = reader.download(run_id, name, tmp)
    return json.loads(path.read_text()) if path else {}


def _sum_folds(per_model: list[list[float]]) -> list[float]:
    per_model = [m for m in per_model if m]
    if not per_model:
        return []
    k = min(len(m) for m in per_model)
    return [float(sum(m[i] for m in per_model)) for i in range(k)]


def _sum_importances(per_model: list[dict[str, float]]) -> dict[str, float] | None:
    out: dict[str, float] = {}
    for imp in per_model:
        total = sum(abs(v) for v in imp.values()) or 1.0
        for f, v in imp.items():
            out[f] = out.get(f, 0.0) + abs(v) / total
    return out or None

