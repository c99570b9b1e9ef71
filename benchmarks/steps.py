"""Frame steps as cached DAG nodes vs the same pandas + sklearn code as a plain sequential script.

A 200k-row table, 4 independent feature functions (each a module of a user package, the kind of
pandas work a Kaggle notebook does: group statistics, string features, binning, row-wise
interactions), a target encoder fitted inside each of 5 folds, and LightGBM. Both sides run the
same functions and the same folds:
- the script: read, apply the 4 functions one after the other, then a loop over the folds
  (TargetEncoder fitted on the training rows, LightGBM on 2 threads, the held-out rows and the test
  rows predicted, OOF and submission written: the outputs `foldwise run` makes): what a user writes instead;
- `foldwise run` of a spec with those 4 `steps:` and `preprocess: [target_encoding]`.
Each side is timed cold (a fresh process, an empty cache) and after editing one step's module
(a constant changed: that step's output changes). The script recomputes everything; foldwise
recomputes the edited step, the data node and the folds. Both whole-process walls (interpreter,
imports, Ray start-up) and, as a notebook iterating on ideas would see it, calls in one process
with Ray kept running.

Usage: python benchmarks/steps.py [--rows 200000] [--folds 5] [--out benchmarks/out/steps]
Prints a markdown table; paste it into benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
LGBM = {"n_estimators": 100, "learning_rate": 0.1, "num_leaves": 31, "verbose": -1}

STEPS = {
    "group_stats": '''import pandas as pd
SCALE = 1.0

def group_stats(df: pd.DataFrame) -> pd.DataFrame:
    """Per-city statistics of the numeric columns, and each row against its city."""
    out = {}
    for col in ["a", "b", "c", "d"]:
        g = df.groupby("city")[col]
        out[f"{col}_city_mean"] = g.transform("mean") * SCALE
        out[f"{col}_city_std"] = g.transform("std")
        out[f"{col}_city_rank"] = g.rank(pct=True)
        out[f"{col}_city_dev"] = df[col] - out[f"{col}_city_mean"]
    return df.assign(**out)
''',
    "text_feats": '''import pandas as pd

def text_feats(df: pd.DataFrame) -> pd.DataFrame:
    """String features of the name column (Python-level work per row, as text features often are)."""
    name = df["name"].astype(str)
    return df.assign(name_len=name.str.len(), name_vowels=name.map(lambda s: sum(ch in "aeiou" for ch in s)),
                     name_words=name.str.count(" ") + 1, name_digits=name.map(lambda s: sum(ch.isdigit() for ch in s)),
                     name_first=name.str[0].map(ord), name_hash=name.map(lambda s: hash(s) % 997))
''',
    "bins": '''import numpy as np
import pandas as pd

def bins(df: pd.DataFrame, *, n_bins: int = 20) -> pd.DataFrame:
    """Quantile bins and their pairwise crosses, counted over all rows."""
    out = {}
    for col in ["a", "b", "c", "d"]:
        out[f"{col}_bin"] = pd.qcut(df[col], n_bins, labels=False, duplicates="drop").astype(float)
    for x, y in [("a", "b"), ("c", "d"), ("a", "d")]:
        cross = out[f"{x}_bin"] * 100 + out[f"{y}_bin"]
        out[f"{x}{y}_cross_count"] = cross.map(cross.value_counts()).astype(float)
    return df.assign(**out)
''',
    "interactions": '''import numpy as np
import pandas as pd

def interactions(df: pd.DataFrame, *, eps: float = 1e-6) -> pd.DataFrame:
    """Row-wise ratios, products and rolling means of the numeric columns."""
    out = {}
    cols = ["a", "b", "c", "d"]
    for i, x in enumerate(cols):
        for y in cols[i + 1:]:
            out[f"{x}_over_{y}"] = df[x] / (df[y].abs() + eps)
            out[f"{x}_times_{y}"] = df[x] * df[y]
    out["row_max"] = df[cols].max(axis=1)
    out["row_argmax"] = df[cols].apply(lambda r: int(np.argmax(r.to_numpy())), axis=1).astype(float)
    return df.assign(**out)
''',
}

SCRIPT = '''"""The plain script: the same functions and folds, one after the other."""
import json, sys, time
import numpy as np, pandas as pd, lightgbm as lgb
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold
from sklearn.preprocessing import TargetEncoder
from benchfeats.group_stats import group_stats
from benchfeats.text_feats import text_feats
from benchfeats.bins import bins
from benchfeats.interactions import interactions

start = time.perf_counter()
train, test = pd.read_csv("train.csv"), pd.read_csv("test.csv")
read_s = time.perf_counter() - start
y = train.pop("target").to_numpy()
both = pd.concat([train, test], ignore_index=True)
step_s = {{}}
parts = []
for name, f, kw in (("group_stats", group_stats, {{}}), ("text_feats", text_feats, {{}}), ("bins", bins, {{}}),
                    ("interactions", interactions, {{"eps": 1e-6}})):
    t = time.perf_counter()
    parts.append(f(both, **kw))
    step_s[name] = time.perf_counter() - t
for part in parts:
    both = both.assign(**{{c: part[c] for c in part.columns if c not in both.columns}})
steps_s = time.perf_counter() - start
X_all = both.drop(columns=["id", "name"])
X_all["city"] = X_all["city"].astype("category")
X, X_test = X_all.iloc[: len(train)].reset_index(drop=True), X_all.iloc[len(train):].reset_index(drop=True)
oof, pred = np.zeros(len(y)), np.zeros(len(X_test))
t = time.perf_counter()
for tr, va in StratifiedKFold({folds}, shuffle=True, random_state=0).split(X, y):
    enc = TargetEncoder(target_type="binary", cv=StratifiedKFold(5, shuffle=True, random_state=0))
    Xtr, Xva, Xte = X.iloc[tr].copy(), X.iloc[va].copy(), X_test.copy()
    Xtr["city"] = enc.fit_transform(Xtr[["city"]].astype(object), y[tr])[:, 0]
    Xva["city"] = enc.transform(Xva[["city"]].astype(object))[:, 0]
    Xte["city"] = enc.transform(Xte[["city"]].astype(object))[:, 0]
    model = lgb.LGBMClassifier(**{lgbm}, n_jobs=2).fit(Xtr, y[tr])
    oof[va] = model.predict_proba(Xva)[:, 1]
    pred += model.predict_proba(Xte)[:, 1] / {folds}
folds_s = time.perf_counter() - t
pd.DataFrame({{"id": train["id"], "oof": oof}}).to_csv("script_oof.csv", index=False)
pd.DataFrame({{"id": test["id"], "target": pred}}).to_csv("script_submission.csv", index=False)
print(json.dumps({{"read": read_s, "steps": steps_s - read_s, "step": step_s, "folds": folds_s,
                  "total": time.perf_counter() - start, "auc": roc_auc_score(y, oof)}}))
'''


def make_project(root: Path, rows: int, folds: int) -> Path:
    shutil.rmtree(root, ignore_errors=True)
    pkg = root / "benchfeats"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    for name, source in STEPS.items():
        (pkg / f"{name}.py").write_text(source)
    rng = np.random.default_rng(0)
    n = rows + rows // 10
    syll = np.array(["ka", "lo", "mi", "ne", "su", "ta", "ri", "po", "an", "el"])
    names = [" ".join("".join(rng.choice(syll, 3)) for _ in range(rng.integers(1, 4))) + str(i % 97) for i in range(n)]
    city = rng.integers(0, 1000, n)
    city_effect = rng.normal(0, 1, 1000)[city]
    frame = pd.DataFrame({"id": np.arange(n), "a": rng.normal(size=n), "b": rng.normal(size=n),
                          "c": rng.exponential(size=n), "d": rng.normal(size=n), "city": [f"c{c}" for c in city],
                          "name": names})
    logit = frame["a"] * frame["b"] + 0.5 * city_effect + 0.3 * frame["c"] + rng.normal(0, 1, n)
    frame["target"] = (logit > 0).astype(int)
    frame.iloc[:rows].to_csv(root / "train.csv", index=False)
    frame.iloc[rows:].drop(columns="target").to_csv(root / "test.csv", index=False)
    spec = {"name": "steps-bench", "data": {"train": "train.csv", "test": "test.csv", "target": "target", "id": "id"},
            "task": "binary", "metric": "roc_auc", "cv": {"scheme": "stratified", "folds": folds, "seed": 0},
            "features": {"drop": ["name"]},
            "steps": [{"name": "group_stats", "fn": "benchfeats.group_stats:group_stats"},
                      {"name": "text_feats", "fn": "benchfeats.text_feats:text_feats"},
                      {"name": "bins", "fn": "benchfeats.bins:bins"},
                      {"name": "interactions", "fn": "benchfeats.interactions:interactions", "params": {"eps": 1e-6}}],
            "models": [{"name": "lgbm", "type": "lightgbm", "params": LGBM, "preprocess": ["target_encoding"],
                        "resources": {"cpus": 1}}]}
    (root / "spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    (root / "plain_script.py").write_text(SCRIPT.format(folds=folds, lgbm=LGBM))
    return root


def timed(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return wall, proc.stdout


def edit(root: Path, scale: float) -> None:
    """Change one step's module (its output changes): group_stats' SCALE."""
    path = root / "benchfeats" / "group_stats.py"
    path.write_text(path.read_text().replace(path.read_text().split("\n")[1], f"SCALE = {scale}"))


def warm_session(root: Path, uri: str) -> dict[str, float]:
    """One process with Ray kept running: run_cv cold, then after an edit (a notebook iterating)."""
    code = f'''
import json, os, sys, time
sys.path.insert(0, {str(root)!r}); os.chdir({str(root)!r})
import ray
ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
from foldwise import run_cv
out = {{}}
for label, scale in (("cold", 1.0), ("edit", 3.0)):
    if label == "edit":
        p = "benchfeats/group_stats.py"; src = open(p).read().split("\\n"); src[1] = f"SCALE = {{scale}}"
        open(p, "w").write("\\n".join(src))
    t = time.perf_counter()
    s = run_cv("spec.yaml", tracking_uri={uri!r}, out=f"warm-{{label}}", executor="ray").summary
    out[label] = time.perf_counter() - t
    out[label + "_steps_run"] = sum(not f["cached"] for f in s["steps"].values())
    out[label + "_folds_run"] = sum(not c for c in s["models"]["lgbm"]["cached"])
    out[label + "_phases"] = s["phase_seconds"]
print(json.dumps(out))
'''
    env = os.environ | {"FOLDWISE_CACHE": str(root / "cache-warm")}
    _, stdout = timed([sys.executable, "-c", code], root, env)
    return json.loads(stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "out" / "steps"))
    args = ap.parse_args()
    root = make_project(Path(args.out).resolve(), args.rows, args.folds)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    env = os.environ | {"FOLDWISE_CACHE": str(root / "cache"), "PYTHONPATH": str(root)}
    env.pop("RAY_ADDRESS", None)
    foldwise = [str(Path(sys.executable).with_name("foldwise")), "run", "spec.yaml", "--tracking-uri", uri,
                "--no-progress", "--executor", "ray"]
    script = [sys.executable, "plain_script.py"]
    subprocess.run(foldwise[:1] + ["--help"], capture_output=True, check=False)  # page cache, .pyc: for both sides
    results = {}
    results["script_cold"], out = timed(script, root, env)
    sc = json.loads(out.strip().splitlines()[-1])
    results["foldwise_cold"], out = timed(foldwise + ["--out", "cold"], root, env)
    cold = json.loads((root / "cold" / "summary.json").read_text())
    edit(root, 2.0)
    results["script_edit"], out = timed(script, root, env)
    se = json.loads(out.strip().splitlines()[-1])
    results["foldwise_edit"], out = timed(foldwise + ["--out", "edit"], root, env)
    after = json.loads((root / "edit" / "summary.json").read_text())
    edit(root, 1.0)
    warm = warm_session(root, uri)
    s = results

    def ran(summary: dict) -> str:
        steps = sum(not f["cached"] for f in summary["steps"].values())
        folds = sum(not c for c in summary["models"]["lgbm"]["cached"])
        return f"steps run {steps} of 4, folds run {folds} of {args.folds}"

    print(f"\n## Frame steps (`python benchmarks/steps.py --rows {args.rows} --folds {args.folds}`), issue 18\n")
    print(f"{platform.machine()}, {os.cpu_count()} cores; {args.rows} train rows + {args.rows // 10} test rows, "
          f"4 independent frame steps, target encoding inside {args.folds} folds, LightGBM {LGBM['n_estimators']} trees; "
          "both sides predict the held-out and the test rows and write OOF and a submission\n")
    print("| what | wall s | vs the script |\n|---|---:|---:|")
    print(f"| plain script, cold (AUC {sc['auc']:.5f}) | {s['script_cold']:.2f} | 1.00x |")
    print(f"| foldwise run, cold (whole process; Ray start-up {cold.get('ray_start_seconds', 0):.1f} s, of which "
          f"{cold['startup_seconds']:.1f} s waited for; {ran(cold)}) | "
          f"{s['foldwise_cold']:.2f} | {s['foldwise_cold'] / s['script_cold']:.2f}x |")
    print(f"| plain script after editing one step | {s['script_edit']:.2f} | 1.00x |")
    print(f"| foldwise run after editing one step (whole process; {ran(after)}) | {s['foldwise_edit']:.2f} | "
          f"{s['foldwise_edit'] / s['script_edit']:.2f}x |")
    print(f"| foldwise, one process with Ray kept running: cold call (steps run {warm['cold_steps_run']} of 4, "
          f"folds run {warm['cold_folds_run']}) | {warm['cold']:.2f} | {warm['cold'] / s['script_cold']:.2f}x |")
    print(f"| foldwise, one process with Ray kept running: call after editing one step (steps run "
          f"{warm['edit_steps_run']} of 4, folds run {warm['edit_folds_run']}) | {warm['edit']:.2f} | "
          f"{warm['edit'] / s['script_edit']:.2f}x |")
    # what any tool must redo after the edit: the edited step and every fold (its columns changed)
    floor = se["step"]["group_stats"] + se["folds"]
    print(f"\nThe script's own seconds after the edit: read {se['read']:.2f}, steps {se['steps']:.2f} ("
          + ", ".join(f"{n} {v:.2f}" for n, v in se["step"].items()) + f"), folds {se['folds']:.2f}, "
          f"in-process total {se['total']:.2f} (whole process {s['script_edit']:.2f}). Work that must be redone after "
          f"editing group_stats (that step + every fold, in the script's own seconds): {floor:.2f} s = "
          f"{floor / s['script_edit']:.2f}x the script: no cache can bring the edit-one-step rerun below that "
          "(except by fitting folds in parallel, which the script's 2-thread LightGBM already does).")
    print(f"\nfoldwise cold: cv_score {cold['ensemble']['cv_score']:.5f}; step seconds "
          + ", ".join(f"{n} {f['seconds']:.2f}" for n, f in cold["steps"].items())
          + "; phases " + ", ".join(f"{k}={v:.2f}" for k, v in cold["phase_seconds"].items()))
    print("after the edit: phases " + ", ".join(f"{k}={v:.2f}" for k, v in after["phase_seconds"].items()))
    print("warm edit call: phases " + ", ".join(f"{k}={v:.2f}" for k, v in warm["edit_phases"].items()))

if __name__ == "__main__":
    main()
