"""A nested MLflow run per fold, for models that train in epochs (torch_image).

Naming: parent run `run-...` -> model child run `<model>` (as for every model) ->
one nested run per fold, `<model>-fold<k>` (tags `foldwise.model`, `foldwise.fold`),
holding that fold's per-epoch metrics stepped by epoch (step 1 = first epoch; the
same keys on every fold, so the MLflow UI overlays the folds' curves), its held-out
`fold_score`, `best_epoch`, how the epoch was chosen, the device it trained on, and its
checkpoint as the artifact `checkpoint/best.pt`. The model's child run also gets
`best_epoch` stepped by fold. Fold tasks return all of this in their FoldResult; only
this driver-side code writes it.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from foldwise.tasks.train import FoldResult
from foldwise.workflows.tracking import tracker as tk

M_BEST_EPOCH = "best_epoch"
CHECKPOINT_DIR = "checkpoint"


def log_fold_run(tracker: tk.Tracker, model_run_id: str, result: FoldResult) -> str | None:
    """Create, fill and finish the fold's nested run; None for models without a training log."""
    log = result.training
    if log is None:
        return None
    tags = {tk.TAG_MODEL: result.model, tk.TAG_FOLD: str(result.fold), "foldwise.device": log.device,
            "foldwise.cuda_visible_devices": str(log.visible_devices)}
    if log.notes:
        tags["foldwise.notes"] = " | ".join(log.notes)
    run = tracker.start_run(f"{result.model}-fold{result.fold}", tags, parent_id=model_run_id)
    metrics = {tk.M_FOLD_SCORE: result.score, tk.M_FIT_SECONDS: result.fit_seconds,
               tk.M_PREDICT_SECONDS: result.predict_seconds}
    if log.best_epoch is not None:
        metrics[M_BEST_EPOCH] = float(log.best_epoch)
    tracker.log(run, params={"fold": result.fold, "epoch_selection": log.selection}, metrics=metrics)
    tracker.log_epochs(run, log.history, first_step=1)
    if log.checkpoint is not None:
        with tempfile.TemporaryDirectory(prefix="foldwise-ckpt-") as tmp:
            folder = Path(tmp) / CHECKPOINT_DIR
            folder.mkdir()
            (folder / log.checkpoint_name).write_bytes(log.checkpoint)
            tracker.log_artifacts(run, Path(tmp))
    if log.best_epoch is not None:
        tracker.log_step(model_run_id, M_BEST_EPOCH, float(log.best_epoch), step=result.fold)
    tracker.finish(run, ok=True)
    return run
