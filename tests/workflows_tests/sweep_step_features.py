"""A frame step for the step-param sweep tests: its column helps only when `level` is above 0.5.

Each call appends its `level` to the file `log` names, so a test counts how often the step really ran.
"""

from __future__ import annotations

import pandas as pd


def interaction(df: pd.DataFrame, *, level: float = 0.0, log: str = "") -> pd.DataFrame:
    """`ab = a * b` (the label's hidden rule) when level > 0.5; a useless constant otherwise."""
    if log:
        with open(log, "a") as f:
            f.write(f"{level!r}\n")
    return df.assign(ab=df["a"] * df["b"] if level > 0.5 else 0.0)
