"""torch_image's parameters and defaults, torch-free so a spec is checked without importing torch."""

from __future__ import annotations

from typing import Any

from foldwise.tasks.models import did_you_mean

DEFAULTS: dict[str, Any] = {
    "arch": "cnn",  # built-in small CNN, or timm:NAME (timm must be installed; never downloads)
    "weights": None,  # local path of a state_dict (or a checkpoint foldwise wrote) to start from
    "width": 32,  # built-in CNN: channels of the first block (doubled per block)
    "blocks": 3,  # built-in CNN: conv blocks (each halves the resolution but the last)
    "dropout": 0.1,
    "channels": 3,  # 1 = read grayscale, 3 = RGB
    "image_size": 64,  # int or [height, width]; every image is resized to it before augmentation
    "epochs": 10,
    "batch_size": 64,
    "lr": 1e-3,
    "weight_decay": 1e-4,
    "momentum": 0.9,  # sgd only
    "optimizer": "adamw",  # adamw | adam | sgd
    "scheduler": "cosine",  # none | cosine | onecycle | step
    "step_size": 5,  # scheduler step: epochs between decays
    "gamma": 0.1,  # scheduler step: decay factor
    "label_smoothing": 0.0,  # multiclass / binary
    "select_epoch": "inner",  # inner: best epoch on an inner split of the training folds; last: fixed epochs
    "valid_fraction": 0.1,  # size of that inner split
    "amp": True,  # mixed precision on CUDA (bf16 where supported, else fp16 + grad scaling)
    "num_workers": None,  # DataLoader workers; None -> the fold's cpus - 1
    "checkpoint": True,  # return the best weights as an MLflow artifact of the fold's run
    "checkpoint_max_mb": 100.0,  # larger checkpoints are not logged (the fold run says so)
}

CHOICES: dict[str, tuple[str, ...]] = {
    "optimizer": ("adamw", "adam", "sgd"),
    "scheduler": ("none", "cosine", "onecycle", "step"),
    "select_epoch": ("inner", "last"),
}


def image_size(value: Any) -> tuple[int, int]:
    if isinstance(value, int | float):
        return int(value), int(value)
    h, w = value
    return int(h), int(w)


def check_params(params: dict) -> str | None:
    """One line naming the first bad parameter, or None."""
    unknown = sorted(set(params) - set(DEFAULTS))
    if unknown:
        hint = did_you_mean(unknown[0], DEFAULTS).removeprefix("; ")
        return f"torch_image has no parameter(s) {', '.join(unknown)} ({hint + ' ' if hint else ''}valid: {', '.join(DEFAULTS)})"
    p = {**DEFAULTS, **params}
    for key, options in CHOICES.items():
        if p[key] not in options:
            return f"{key}: {p[key]!r} is not one of {', '.join(options)}"
    arch = str(p["arch"])
    if arch != "cnn" and not arch.startswith("timm:"):
        return f"arch: {arch!r} is not 'cnn' or 'timm:NAME' (a timm architecture, e.g. timm:resnet18)"
    if arch.startswith("timm:"):
        try:
            import timm
        except ImportError:
            return f"arch: {arch!r} needs timm installed (pip install timm)"
        if not timm.is_model(arch.removeprefix("timm:")):
            return f"arch: timm has no architecture {arch.removeprefix('timm:')!r}"
    size = p["image_size"]
    ok_size = (isinstance(size, int) and size > 0) or (
        isinstance(size, list | tuple) and len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size))
    if not ok_size:
        return f"image_size: {size!r} is not a positive int or [height, width]"
    if p["channels"] not in (1, 3):
        return f"channels: {p['channels']!r} must be 1 (grayscale) or 3 (RGB)"
    for key in ("epochs", "batch_size", "width", "blocks", "step_size"):
        if not isinstance(p[key], int) or p[key] < 1:
            return f"{key}: {p[key]!r} must be an integer >= 1"
    for key in ("lr", "checkpoint_max_mb"):
        if not isinstance(p[key], int | float) or p[key] <= 0:
            return f"{key}: {p[key]!r} must be > 0"
    if not 0 < float(p["valid_fraction"]) < 1:
        return f"valid_fraction: {p['valid_fraction']!r} must be between 0 and 1"
    if not 0 <= float(p["dropout"]) < 1 or not 0 <= float(p["label_smoothing"]) < 1:
        return "dropout and label_smoothing must be in [0, 1)"
    if p["num_workers"] is not None and (not isinstance(p["num_workers"], int) or p["num_workers"] < 0):
        return f"num_workers: {p['num_workers']!r} must be null or an integer >= 0"
    if p["weights"] is not None:
        from pathlib import Path

        if "://" not in str(p["weights"]) and not Path(str(p["weights"])).is_file():
            return f"weights: file {p['weights']!r} does not exist (a local state_dict; nothing is downloaded)"
    return None


def check_model(params: dict, augment: dict | None, tta: list[str]) -> str | None:
    """Params, then both pipelines run on a dummy image of the model's size, then TTA vs the size."""
    problem = check_params(params)
    if problem:
        return problem
    from foldwise.tasks.augment import check_pipeline_output, tta_problem

    p = {**DEFAULTS, **params}
    h, w = image_size(p["image_size"])
    for part in ("train", "valid"):
        value = (augment or {}).get(part)
        if value:
            problem = check_pipeline_output(value, h, w, int(p["channels"]), f"augment.{part}")
            if problem:
                return problem
    return tta_problem(list(tta), h, w)
