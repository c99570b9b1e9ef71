"""Repeated CV of the three booster families: foldwise vs a joblib loop, in one run, same data and folds.

5 folds x 3 repeats (sklearn's RepeatedStratifiedKFold, seed 0) of LightGBM + XGBoost + CatBoost
(one thread per fit, native categoricals, the same params) on a synthetic binary table with
numeric and categorical columns (NaN included):
- foldwise `run_cv` (executor auto: what a user gets; Ray start-up, if any, inside the wall),
  ensemble `mean`, no cache, a fresh MLflow sqlite store made before the timed run;
- what a user writes instead: `joblib.Parallel(n_jobs=2)` over repeats x folds x models, each
  task fitting one model on one split and returning its OOF part.
Each side runs in its own process; the wall is measured inside it from reading the data to
having every OOF prediction (foldwise also writes its outputs and MLflow runs in that time).

Usage: python benchmarks/boosters_repeated.py [--rows 20000] [--features 40] [--folds 5] [--repeats 3]
       [--trees 100] [--out benchmarks/out]
Prints a markdown table; paste it into benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

N_CATEGORICAL = 4


def params(trees: int) -> dict[str, dict]:
    return {"lightgbm": {"n_estimators": trees, "learning_rate": 0.1, "num_leaves": 31},
            "xgboost": {"n_estimators": trees, "learning_rate": 0.1, "max_depth": 6},
            "catboost": {"iterations": trees, "learning_rate": 0.1, "depth": 6}}


def make_data(rows: int, features: int, seed: int = 0) -> pd.DataFrame:
    from sklearn.datasets import make_classification

    numeric = features - N_CATEGORICAL
    X, y = make_classification(n_samples=rows, n_features=numeric, n_informative=numeric // 2,
                               n_redundant=numeric // 4, flip_y=0.05, random_state=seed)
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(X, columns=[f"f{i:02d}" for i in range(numeric)])
    frame.iloc[rng.random(rows) < 0.05, 0] = np.nan  # missing values in a numeric column
    for c in range(N_CATEGORICAL):  # categoricals that carry signal: levels shift the target's odds
        levels = rng.integers(0, 8 + 4 * c, size=rows)
        flip = rng.random(rows) < 0.15 * ((levels % 3) == 0)
        y = np.where(flip, 1 - y, y)
        frame[f"c{c}"] = np.array([f"L{v:02d}" for v in levels], dtype=object)
    frame["target"] = y
    return frame


JOBLIB_SCRIPT = """
import json, sys, time
import numpy as np, pandas as pd
from joblib import Parallel, delayed
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import RepeatedStratifiedKFold
start = time.perf_counter()
frame = pd.read_parquet(sys.argv[1])
folds, repeats, params = int(sys.argv[2]), int(sys.argv[3]), json.loads(sys.argv[4])
y = frame.pop("target").to_numpy()
cats = [c for c in frame.columns if not pd.api.types.is_numeric_dtype(frame[c])]
X = frame.astype({c: "category" for c in cats})

def fit(kind, train, valid):
    import numpy as np
    if kind == "lightgbm":
        import lightgbm as lgb
        m = lgb.LGBMClassifier(**params[kind], n_jobs=1, random_state=0, verbose=-1)
        m.fit(X.iloc[train], y[train])
    elif kind == "xgboost":
        import xgboost as xgb
        m = xgb.XGBClassifier(**params[kind], n_jobs=1, random_state=0, enable_categorical=True, tree_method="hist")
        m.fit(X.iloc[train], y[train])
    else:
        import catboost as cb
        Xc = X.astype({c: str for c in cats})
        m = cb.CatBoostClassifier(**params[kind], thread_count=1, random_seed=0, logging_level="Silent",
                                  allow_writing_files=False, cat_features=cats)
        m.fit(Xc.iloc[train], y[train])
        return kind, valid, m.predict_proba(Xc.iloc[valid])[:, 1]
    return kind, valid, m.predict_proba(X.iloc[valid])[:, 1]

splits = list(RepeatedStratifiedKFold(n_splits=folds, n_repeats=repeats, random_state=0).split(X, y))
out = Parallel(n_jobs=2)(delayed(fit)(kind, tr, va) for tr, va in splits for kind in params)
wall = time.perf_counter() - start
scores = {}
for i, (kind, valid, pred) in enumerate(out):
    scores.setdefault(kind, []).append(roc_auc_score(y[valid], pred))
print(json.dumps({"wall": wall, "cv": {k: float(np.mean(v)) for k, v in scores.items()}}))
"""

FOLDWISE_SCRIPT = """
import json, os, sys, time
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
from foldwise.workflows.commands.run import run_cv
s = run_cv(sys.argv[1], out=sys.argv[2], tracking_uri=sys.argv[3], no_cache=True,
           cache_root=os.path.join(os.path.dirname(sys.argv[2]), "cache")).summary
print(json.dumps({"wall": s["wall_seconds"], "startup": s["startup_seconds"],
                  "cv": {k: v["cv_score"] for k, v in s["models"].items()}, "splits": len(s["models"]["lightgbm"]["fold_scores"])}))
"""


def last_json(text: str) -> dict:
    return json.loads([line for line in text.splitlines() if line.startswith("{")][-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=20000)
    ap.add_argument("--features", type=int, default=40)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--trees", type=int, default=100)
    ap.add_argument("--out", default="benchmarks/out")
    a = ap.parse_args()
    out = Path(a.out) / "boosters_repeated"
    out.mkdir(parents=True, exist_ok=True)
    data = out / "data.parquet"
    make_data(a.rows, a.features).to_parquet(data)
    p = params(a.trees)
    spec = {"name": "bench-boosters", "data": {"train": str(data.resolve()), "target": "target"}, "task": "binary",
            "metric": "roc_auc", "cv": {"scheme": "stratified", "folds": a.folds, "repeats": a.repeats, "seed": 0},
            "models": [{"name": kind, "type": kind, "params": p[kind]} for kind in p], "ensemble": {"method": "mean"},
            "checks": {"ignore": []}}
    spec_path = out / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    db = out / "mlflow.db"
    db.unlink(missing_ok=True)
    uri = f"sqlite:///{db.resolve()}"
    from foldwise.workflows.tracking import tracker as tk  # the store exists before the timed run, as a user's does

    tk.Tracker(uri, "bench-boosters")
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    joblib = last_json(subprocess.run([sys.executable, "-c", JOBLIB_SCRIPT, str(data), str(a.folds), str(a.repeats),
                                       json.dumps(p)], capture_output=True, text=True, check=True, env=env).stdout)
    fw = last_json(subprocess.run([sys.executable, "-c", FOLDWISE_SCRIPT, str(spec_path), str(out / "run"), uri],
                                  capture_output=True, text=True, check=True, env=env).stdout)
    assert fw["splits"] == a.folds * a.repeats
    fits = a.folds * a.repeats * 3
    print(f"`benchmarks/boosters_repeated.py --rows {a.rows} --features {a.features} --folds {a.folds} "
          f"--repeats {a.repeats} --trees {a.trees}` on {platform.node()} ({os.cpu_count()} cores), {fits} fits\n")
    print("| side | wall s | vs joblib | cv lightgbm | cv xgboost | cv catboost |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, r in (("joblib Parallel(n_jobs=2) over repeats x folds x models", joblib),
                    (f"foldwise run ({a.folds}x{a.repeats} repeated, 3 boosters, mean ensemble)", fw)):
        cv = r["cv"]
        print(f"| {name} | {r['wall']:.1f} | {r['wall'] / joblib['wall']:.2f}x | {cv['lightgbm']:.4f} | "
              f"{cv['xgboost']:.4f} | {cv['catboost']:.4f} |")
    print(f"\nfoldwise start-up inside its wall: {fw['startup']:.1f} s")


if __name__ == "__main__":
    main()
