"""Frame steps for the breast-cancer example (`breast_cancer_steps.yaml`): plain pandas functions."""

from __future__ import annotations

import pandas as pd


def shape_ratios(df: pd.DataFrame) -> pd.DataFrame:
    """How far each cell is from a circle: area over radius squared, perimeter over radius."""
    return df.assign(roundness=df["mean area"] / df["mean radius"] ** 2,
                     perimeter_ratio=df["mean perimeter"] / df["mean radius"])


def worst_over_mean(df: pd.DataFrame, *, eps: float = 1e-9) -> pd.DataFrame:
    """The worst value of each measurement relative to its mean."""
    names = [c.removeprefix("mean ") for c in df.columns if c.startswith("mean ")]
    return df.assign(**{f"{n} worst/mean": df[f"worst {n}"] / (df[f"mean {n}"] + eps) for n in names})


def roundness_x_texture(df: pd.DataFrame) -> pd.DataFrame:
    """Uses a column of `shape_ratios` (its input)."""
    return df.assign(roundness_x_texture=df["roundness"] * df["mean texture"])
