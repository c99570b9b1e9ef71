"""The torch MLP's parameters and defaults, kept torch-free so specs are checked without importing torch."""

from __future__ import annotations

from typing import Any

from foldwise.tasks.models import did_you_mean

DEFAULTS: dict[str, Any] = {
    "hidden": [128, 64],
    "dropout": 0.1,
    "lr": 1e-3,
    "weight_decay": 1e-5,
    "epochs": 50,
    "batch_size": 256,
    "patience": 5,
}


def check_params(params: dict) -> str | None:
    unknown = sorted(set(params) - set(DEFAULTS))
    if unknown:
        hint = did_you_mean(unknown[0], DEFAULTS).removeprefix("; ")
        return f"torch_mlp has no parameter(s) {', '.join(unknown)} ({hint + ' ' if hint else ''}valid: {', '.join(DEFAULTS)})"
    return None
