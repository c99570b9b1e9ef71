"""What the result cache buys on a rerun and costs on a first run, beside joblib.Memory, in one run.

Data: a synthetic binary table (rows x features, parquet); spec: logistic regression +
LightGBM (one thread per fold), K stratified folds, a `weights` ensemble.

1. As a user runs it: `foldwise run` in a fresh process, first with an empty cache, then
   again unchanged. Reported: the process wall (Python start, imports, Ray start-up
   included) and the summary's `wall_seconds` (in-process) minus `startup_seconds` (Ray
   start-up). Target: a rerun without start-up <= 10% of the first run.
2. The cache's cost on a first run, in this process on one Ray started up front (start-up
   out of every number), repeated and alternated, median taken:
   - `no cache at all`: run_cv with a Cache that never reads nor writes (a benchmark-only
     stand-in: the CLI has no such mode, `--no-cache` still writes);
   - `cache on, empty`: the normal first run (every read misses, every node is written);
   - `--no-cache`: skips the reads, still writes.
   Plus the driver's own seconds in cache reads/writes (summary `phase_seconds.cache_*`)
   and the bytes written.
3. What a user would use instead: `joblib.Memory` around the same two models'
   `cross_val_predict` (n_jobs=2): first call vs the cached second call.

Usage: python benchmarks/cache.py [--rows 200000] [--features 40] [--folds 5] [--repeats 3] [--out benchmarks/out/cache]
Prints a markdown table; paste it into benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
LGBM_PARAMS = {"n_estimators": 300, "learning_rate": 0.05, "num_leaves": 31, "verbose": -1}


def make_data(rows: int, features: int, seed: int = 0) -> pd.DataFrame:
    from sklearn.datasets import make_classification

    X, y = make_classification(n_samples=rows, n_features=features, n_informative=features // 2,
                               n_redundant=features // 4, flip_y=0.05, random_state=seed)
    frame = pd.DataFrame(X, columns=[f"f{i:02d}" for i in range(features)])
    frame["target"] = y
    return frame


def write_spec(path: Path, data: Path, folds: int) -> Path:
    spec = {"name": "bench-cache", "data": {"train": str(data), "target": "target"}, "task": "binary",
            "metric": "roc_auc", "cv": {"scheme": "stratified", "folds": folds, "seed": 0},
            "models": [{"name": "logreg", "type": "sklearn", "estimator": "sklearn.linear_model.LogisticRegression",
                        "params": {"max_iter": 1000}, "preprocess": ["standard_scaler"]},
                       {"name": "lgbm", "type": "lightgbm", "params": LGBM_PARAMS}],
            "ensemble": {"method": "weights"}}
    path.write_text(yaml.safe_dump(spec))
    return path


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def cli_run(spec: Path, cache: Path, uri: str, out: Path) -> tuple[float, dict]:
    """`foldwise run` in a fresh process: (process wall seconds, its summary.json)."""
    exe = Path(sys.executable).with_name("foldwise")
    env = os.environ | {"FOLDWISE_CACHE": str(cache)}
    env.pop("RAY_ADDRESS", None)
    start = time.perf_counter()
    proc = subprocess.run([str(exe), "run", str(spec), "--tracking-uri", uri, "--out", str(out), "--no-progress"],
                          cwd=REPO, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"foldwise run failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return wall, json.loads(Path(proc.stdout.strip().splitlines()[-1]).read_text())


def in_process(spec: Path, uri: str, out: Path, cache: Path, mode: str) -> dict:
    """One first run in this process: mode 'none' (no cache at all), 'empty' or 'no-cache'."""
    import foldwise.workflows.pipeline.cross_validation as cv
    from foldwise import run_cv
    from foldwise.workflows.engine.cache import Cache

    class NoCacheAtAll(Cache):
        def get(self, kind: str, key: str) -> None:
            return None

        def put(self, kind: str, key: str, value: object) -> None:
            pass

    shutil.rmtree(cache, ignore_errors=True)
    real = cv.Cache
    cv.Cache = NoCacheAtAll if mode == "none" else real
    try:
        summary = run_cv(spec, out=out, tracking_uri=uri, cache_root=str(cache), no_cache=mode == "no-cache").summary
    finally:
        cv.Cache = real
    assert not any(any(m["cached"]) for m in summary["models"].values()), "a first run must fit every fold"
    summary["cache_bytes"] = dir_bytes(cache)
    return summary


def joblib_memory(frame: pd.DataFrame, folds: int, location: Path) -> tuple[float, float]:
    """cross_val_predict of both models under joblib.Memory: (first call s, cached second call s)."""
    import lightgbm as lgb
    from joblib import Memory
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    shutil.rmtree(location, ignore_errors=True)
    memory = Memory(location, verbose=0)

    @memory.cache
    def oof(X: np.ndarray, y: np.ndarray, k: int) -> dict[str, np.ndarray]:
        cv = StratifiedKFold(k, shuffle=True, random_state=0)
        return {"logreg": cross_val_predict(make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)), X, y,
                                            cv=cv, n_jobs=2, method="predict_proba")[:, 1],
                "lgbm": cross_val_predict(lgb.LGBMClassifier(**LGBM_PARAMS, n_jobs=1, random_state=0), X, y, cv=cv,
                                          n_jobs=2, method="predict_proba")[:, 1]}

    X, y = frame.drop(columns=["target"]).to_numpy(), frame["target"].to_numpy()
    times = []
    for _ in range(2):
        start = time.perf_counter()
        oof(X, y, folds)
        times.append(time.perf_counter() - start)
    shutil.rmtree(location, ignore_errors=True)
    return times[0], times[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--features", type=int, default=40)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3, help="first runs per cache mode (alternated; median)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/out/cache"))
    args = ap.parse_args()
    out = args.out.resolve()
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    uri = f"sqlite:///{out / 'mlflow.db'}"
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    frame = make_data(args.rows, args.features)
    data = out / "bench.parquet"
    frame.to_parquet(data, index=False)
    spec = write_spec(out / "spec.yaml", data, args.folds)

    # 1. as a user runs it: fresh processes, empty cache then unchanged rerun
    proc_first, first = cli_run(spec, out / "cache-cli", uri, out / "cli-first")
    proc_rerun, rerun = cli_run(spec, out / "cache-cli", uri, out / "cli-rerun")
    assert all(all(m["cached"]) for m in rerun["models"].values()) and rerun["ensemble"]["cached"]
    first_core = first["wall_seconds"] - first["startup_seconds"]
    rerun_core = rerun["wall_seconds"] - rerun["startup_seconds"]

    # 2. first-run cost of the cache, one Ray for all (start-up excluded everywhere)
    import ray

    ray.init(num_cpus=psutil.cpu_count(), include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    runs: dict[str, list[dict]] = {"none": [], "empty": [], "no-cache": []}
    in_process(spec, uri, out / "warm", out / "cache-warm", "none")  # warm the workers' imports once, not timed
    for i in range(args.repeats):
        for mode in (("none", "empty", "no-cache") if i % 2 == 0 else ("no-cache", "empty", "none")):
            runs[mode].append(in_process(spec, uri, out / f"{mode}-{i}", out / f"cache-{mode}", mode))
    ray.shutdown()
    wall = {mode: statistics.median(s["wall_seconds"] for s in ss) for mode, ss in runs.items()}
    io = {k: statistics.median(s["phase_seconds"][k] for s in runs["empty"]) for k in ("cache_read", "cache_write")}
    written = statistics.median(s["cache_bytes"] for s in runs["empty"])

    # 3. joblib.Memory, the usual alternative
    jl_first, jl_second = joblib_memory(frame, args.folds, out / "joblib-memory")

    from foldwise.workflows.units import human_size

    print(f"## cache ({time.strftime('%Y-%m-%d')}, {platform.machine()}, {psutil.cpu_count()} cores, "
          f"{args.rows} x {args.features}, {args.folds} folds, logreg + LightGBM {LGBM_PARAMS['n_estimators']} trees, "
          f"weights ensemble)\n")
    print("| rerun of an unchanged spec | first run s | rerun s | rerun / first |")
    print("|---|---:|---:|---:|")
    print(f"| foldwise, without Ray start-up (summary wall - startup) | {first_core:.2f} | {rerun_core:.2f} | "
          f"**{rerun_core / first_core:.1%}** (target <= 10%) |")
    print(f"| foldwise, summary wall (first run includes Ray start-up {first['startup_seconds']:.2f} s; "
          f"the rerun starts no Ray) | {first['wall_seconds']:.2f} | {rerun['wall_seconds']:.2f} | "
          f"{rerun['wall_seconds'] / first['wall_seconds']:.1%} |")
    print(f"| foldwise, whole process (Python start and imports included) | {proc_first:.2f} | {proc_rerun:.2f} | "
          f"{proc_rerun / proc_first:.1%} |")
    print(f"| joblib.Memory(cross_val_predict x 2 models, n_jobs=2) | {jl_first:.2f} | {jl_second:.2f} | "
          f"{jl_second / jl_first:.1%} |")
    print()
    print(f"| first run, Ray up front (median of {args.repeats}) | wall s | vs no cache at all |")
    print("|---|---:|---:|")
    for mode, label in (("none", "no cache at all (reads and writes stubbed out)"), ("empty", "cache on, empty cache"),
                        ("no-cache", "`--no-cache` (no reads, still writes)")):
        print(f"| {label} | {wall[mode]:.2f} | {wall[mode] / wall['none']:.3f}x |")
    print()
    print(f"cache I/O on the driver in a first run: reads {io['cache_read']:.3f} s, writes {io['cache_write']:.3f} s "
          f"({(io['cache_read'] + io['cache_write']) / wall['empty']:.1%} of its wall; writes overlap folds still "
          f"running), {human_size(written)} written (data {human_size(frame.memory_usage().sum())} in memory). "
          f"Rerun phases (s): {', '.join(f'{k}={v:.3f}' for k, v in rerun['phase_seconds'].items())}.")


if __name__ == "__main__":
    main()
