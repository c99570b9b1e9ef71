"""What a run leaves in its output folder besides summary.json: OOF, test predictions,
submission, leaderboard, feature importance, per-slice scores."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from foldwise.tasks.data import PreparedData
from foldwise.tasks.folds import FoldPlan
from foldwise.tasks.repeats import oof_by_repeat
from foldwise.tasks.report import (
    oof_frame,
    submission_frame,
    test_frame,
    write_predictions,
)
from foldwise.tasks.slices import feature_frame, slice_scores
from foldwise.tasks.train import FoldResult
from foldwise.workflows.pipeline.dag import DagOutput, assemble_oof, average_test
from foldwise.workflows.pipeline.spec import WorkflowSpec, to_yaml


def mean_importance(results: list[FoldResult]) -> dict[str, float]:
    """A model's per-column importance averaged over folds ({} when its adapter reports none)."""
    per_fold = [r.importance for r in results if r.importance]
    if not per_fold:
        return {}
    columns = sorted({c for imp in per_fold for c in imp})
    return {c: float(np.mean([imp.get(c, 0.0) for imp in per_fold])) for c in columns}


def slice_summary(slices: dict[str, str], data: PreparedData, plan: FoldPlan, oof: dict[str, np.ndarray],
                  metric: str) -> dict[str, dict[str, Any]]:
    """Each spec slice's OOF score per model and the ensemble: {name: {query, rows, scores{model: score}}}."""
    if not slices:
        return {}
    frame = feature_frame(data.X, data.columns, data.categories).assign(fold=plan.fold_of_row)
    table = slice_scores(frame, slices, data.y, oof, metric, data.task)
    return {name: {"query": slices[name], "rows": int(row.pop("rows")), "scores": row} for name, row in table.items()}



def repeats_frame(data: PreparedData, plan: FoldPlan, folds: dict[str, list[FoldResult]],
                  ensemble_oof: tuple[np.ndarray, ...]) -> pd.DataFrame:
    """Repeated CV: every row once per repeat (`repeat` column), with that repeat's fold and OOF."""
    per_model = {n: oof_by_repeat(rs, plan, len(data.y)) for n, rs in folds.items()}
    frames = []
    for r in range(plan.repeats):
        preds = {n: oofs[r] for n, oofs in per_model.items()}
        if ensemble_oof:
            preds["ensemble"] = ensemble_oof[r]
        frame = oof_frame(data, plan.repeat(r), preds)
        frame.insert(0, "repeat", r)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def write_run_files(out_dir: Path, spec: WorkflowSpec, dag: DagOutput, leaderboard: str
                    ) -> tuple[dict[str, np.ndarray], pd.DataFrame, dict[str, Path | None]]:
    """A run's files in `out_dir`: OOF of every model and the ensemble, the leaderboard, the spec,
    test predictions and the submission (with a test set), feature importance (when models report
    it). Returns the OOF predictions by name, the OOF frame and the paths written (None: not made)."""
    data, plan, ens = dag.data, dag.plan, dag.ensemble
    oof_preds = {n: assemble_oof(rs, len(data.y), plan) for n, rs in dag.folds.items()} | {"ensemble": ens.oof}
    oof = oof_frame(data, plan, oof_preds)
    outputs: dict[str, Path | None] = {"oof": out_dir / "oof.parquet", "test_predictions": None,
                                       "submission": None, "leaderboard": out_dir / "leaderboard.md",
                                       "feature_importance": None}
    write_predictions(oof, outputs["oof"], data)
    if plan.repeats > 1:  # oof.parquet holds the mean over repeats; each repeat's OOF is kept here
        outputs["oof_repeats"] = out_dir / "oof_repeats.parquet"
        write_predictions(repeats_frame(data, plan, dag.folds, ens.repeat_oof), outputs["oof_repeats"], data)
    outputs["leaderboard"].write_text(f"# {spec.name}: cross-validation leaderboard\n\n{leaderboard}")
    if data.X_test is not None and ens.test is not None:
        test_preds = {n: average_test(rs) for n, rs in dag.folds.items()} | {"ensemble": ens.test}
        outputs["test_predictions"] = out_dir / "test_predictions.parquet"
        outputs["submission"] = out_dir / "submission.csv"
        write_predictions(test_frame(data, test_preds), outputs["test_predictions"], data)
        submission_frame(data, ens.test, spec.submission.kind, spec.submission.column).to_csv(outputs["submission"], index=False)
    (out_dir / "spec.yaml").write_text(to_yaml(spec))
    importances = {n: imp for n, rs in dag.folds.items() if (imp := mean_importance(rs))}
    if importances:
        outputs["feature_importance"] = out_dir / "feature_importance.json"
        outputs["feature_importance"].write_text(json.dumps(importances, indent=1))
    return oof_preds, oof, outputs
