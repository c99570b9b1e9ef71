"""Writes a small synthetic churn dataset (train + test CSV with an id column) for the CSV example.

Generated, not committed: `python -m foldwise.workflows.examples.demo_data` writes
workflows/examples/data/churn_train.csv and churn_test.csv (or into --out).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

DEFAULT_DIR = Path(__file__).parent / "data"


def churn_frames(n_train: int = 4000, n_test: int = 1500, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Customers with a plan (categorical), a region (categorical, with missing), usage with NaN."""
    rng = np.random.default_rng(seed)
    n = n_train + n_test
    plan = rng.choice(["basic", "plus", "pro", "family"], size=n, p=[0.45, 0.3, 0.15, 0.1])
    region = rng.choice(["north", "south", "east", "west", None], size=n, p=[0.3, 0.3, 0.2, 0.15, 0.05])
    tenure = rng.gamma(2.0, 12.0, size=n).round(1)
    monthly = (rng.normal(40, 12, size=n) + np.select([plan == "pro", plan == "family"], [25, 15], 0)).round(2)
    calls = rng.poisson(2, size=n).astype(float)
    usage = rng.lognormal(3, 0.6, size=n).round(2)
    usage[rng.uniform(size=n) < 0.08] = np.nan
    logit = (-1.0 + 0.35 * calls - 0.04 * tenure + 0.02 * (monthly - 40)
             + np.select([plan == "basic", plan == "pro"], [0.6, -0.5], 0) + np.where(np.isnan(usage), 0.8, -0.01 * np.nan_to_num(usage)))
    churned = np.where(rng.uniform(size=n) < 1 / (1 + np.exp(-logit)), "yes", "no")
    frame = pd.DataFrame({"customer_id": [f"C{i:06d}" for i in range(n)], "plan": plan, "region": region,
                          "tenure_months": tenure, "monthly_charge": monthly, "support_calls": calls,
                          "data_usage_gb": usage, "churned": churned})
    train = frame.iloc[:n_train].reset_index(drop=True)
    test = frame.iloc[n_train:].drop(columns=["churned"]).reset_index(drop=True)
    return train, test


def write_churn(out: Path = DEFAULT_DIR) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    train, test = churn_frames()
    paths = out / "churn_train.csv", out / "churn_test.csv"
    train.to_csv(paths[0], index=False)
    test.to_csv(paths[1], index=False)
    return paths


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_DIR)
    for p in write_churn(parser.parse_args().out):
        print(p)
