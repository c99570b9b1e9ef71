"""foldwise vs what a user would write instead, in one run, on the same data and folds.

LightGBM (one thread per fold) on a synthetic ~100k x 40 binary table, K folds:
- foldwise `run_cv` on a local Ray with 2 CPUs (Ray start-up reported separately),
- `cross_val_predict(n_jobs=2)` (joblib/loky), the usual parallel baseline,
- a sequential loop over the same folds.
The MLflow store is created before the timed runs (a user's store exists already).
Also: orchestration overhead per fold task (a model that does ~nothing, many folds), and
peak memory (PSS of this process and all its descendants: Ray/loky workers, plasma) for 2
and 8 folds, to show the dataset is held once however many folds run.

Usage: python benchmarks/cv_parallel.py [--rows 100000] [--features 40] [--folds 5] [--out benchmarks/out]
Prints a markdown table; paste it into benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import threading
import time
from pathlib import Path

import pandas as pd
import psutil
import yaml

LGBM_PARAMS = {"n_estimators": 200, "learning_rate": 0.05, "num_leaves": 31, "verbose": -1}


class PeakPSS:
    """Samples the summed PSS of this process tree every 50 ms (shared pages counted once)."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _total(self) -> int:
        me = psutil.Process()
        total = 0
        for p in [me, *me.children(recursive=True)]:
            try:
                total += p.memory_full_info().pss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._total())
            time.sleep(0.05)

    def __enter__(self) -> PeakPSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._total())


def make_data(rows: int, features: int, seed: int = 0) -> pd.DataFrame:
    from sklearn.datasets import make_classification

    X, y = make_classification(n_samples=rows, n_features=features, n_informative=features // 2,
                               n_redundant=features // 4, flip_y=0.05, random_state=seed)
    frame = pd.DataFrame(X, columns=[f"f{i:02d}" for i in range(features)])
    frame["target"] = y
    return frame


def write_spec(path: Path, data: Path, folds: int, model: dict, name: str) -> Path:
    spec = {"name": name, "data": {"train": str(data), "target": "target"}, "task": "binary", "metric": "roc_auc",
            "cv": {"scheme": "stratified", "folds": folds, "seed": 0}, "models": [model]}
    path.write_text(yaml.safe_dump(spec))
    return path


def run_foldwise(spec: Path, out: Path, uri: str) -> dict:
    from workflows.cv import run_cv

    # no_cache: every run computes (results are still written to the cache, as a user's first run does);
    # the cache root is the benchmark's own folder, so nothing from an earlier run is read either way.
    return run_cv(spec, out=out, tracking_uri=uri, no_cache=True, cache_root=str(out.parent / "cache")).summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--features", type=int, default=40)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/out"))
    args = ap.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{out / 'mlflow.db'}"
    # A user's MLflow store exists already: create it (tables, experiment) in another process before
    # the timed runs, so its one-off creation (~5 s of schema migrations) is not counted, while
    # importing mlflow and opening the store, which every run pays, still are.
    import subprocess
    import sys

    subprocess.run([sys.executable, "-c", f"from workflows.tracking import Tracker; Tracker({uri!r}, 'bench-lgbm')"],
                   check=True, capture_output=True)
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")

    frame = make_data(args.rows, args.features)
    data_path = out / "bench.parquet"
    frame.to_parquet(data_path, index=False)
    X, y = frame.drop(columns=["target"]).to_numpy(), frame["target"].to_numpy()
    data_mb = X.nbytes / 2**20
    lgbm = {"name": "lgbm", "type": "lightgbm", "params": LGBM_PARAMS, "resources": {"cpus": 1}}
    dummy = {"name": "dummy", "type": "sklearn", "estimator": "sklearn.dummy.DummyClassifier", "resources": {"cpus": 1}}

    import lightgbm as lgb
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    cv = StratifiedKFold(args.folds, shuffle=True, random_state=0)
    results: dict[str, float] = {}

    # --- sequential loop
    start = time.perf_counter()
    for train, valid in cv.split(X, y):
        model = lgb.LGBMClassifier(**LGBM_PARAMS, n_jobs=1, random_state=0).fit(X[train], y[train])
        model.predict_proba(X[valid])
    results["sequential"] = time.perf_counter() - start

    # --- joblib: cross_val_predict(n_jobs=2)
    with PeakPSS() as mem_joblib:
        start = time.perf_counter()
        cross_val_predict(lgb.LGBMClassifier(**LGBM_PARAMS, n_jobs=1, random_state=0), X, y, cv=cv, n_jobs=2,
                          method="predict_proba")
        results["joblib"] = time.perf_counter() - start

    # --- foldwise on a 2-CPU local Ray (start-up measured by run_cv: first call starts Ray)
    import ray

    start = time.perf_counter()
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    ray_startup = time.perf_counter() - start
    with PeakPSS() as mem_fw:
        s = run_foldwise(write_spec(out / "lgbm.yaml", data_path, args.folds, lgbm, "bench-lgbm"), out / "run-lgbm", uri)
    fw_wall = s["wall_seconds"]
    fw_compute = sum(s["models"]["lgbm"]["fit_seconds"]) + sum(s["models"]["lgbm"]["predict_seconds"])

    # --- orchestration overhead: a model that does nothing, 40 fold tasks on 2 slots
    n_tasks = 40
    s_dummy = run_foldwise(write_spec(out / "dummy.yaml", data_path, n_tasks, dummy, "bench-overhead"), out / "run-dummy", uri)
    dummy_compute = sum(s_dummy["models"]["dummy"]["fit_seconds"]) + sum(s_dummy["models"]["dummy"]["predict_seconds"])
    train_phase = s_dummy["phase_seconds"]["train_folds"]
    overhead_ms = (train_phase * 2 - dummy_compute) / n_tasks * 1000  # slot-seconds not spent in fit/predict

    # --- memory: 2 vs 8 folds of the same data
    mem_folds = {}
    for k in (2, 8):
        with PeakPSS() as m:
            run_foldwise(write_spec(out / f"mem{k}.yaml", data_path, k, lgbm, f"bench-mem{k}"), out / f"run-mem{k}", uri)
        mem_folds[k] = m.peak / 2**20
    ray.shutdown()

    print(f"## cv_parallel ({time.strftime('%Y-%m-%d')}, {platform.machine()}, {psutil.cpu_count()} cores, "
          f"{args.rows} x {args.features}, {args.folds} folds, LightGBM {LGBM_PARAMS['n_estimators']} trees, 1 thread per fold)\n")
    print("| what | wall s | vs joblib |")
    print("|---|---:|---:|")
    print(f"| sequential loop | {results['sequential']:.2f} | {results['sequential'] / results['joblib']:.2f}x |")
    print(f"| cross_val_predict(n_jobs=2) | {results['joblib']:.2f} | 1.00x |")
    print(f"| foldwise run, start-up excluded (incl. MLflow logging, outputs) | {fw_wall:.2f} | {fw_wall / results['joblib']:.2f}x |")
    print(f"| foldwise train phase only | {s['phase_seconds']['train_folds']:.2f} | {s['phase_seconds']['train_folds'] / results['joblib']:.2f}x |")
    print(f"| Ray start-up (ray.init, once per session) | {ray_startup:.2f} | |")
    print()
    print(f"foldwise phases (s): {', '.join(f'{k}={v:.2f}' for k, v in s['phase_seconds'].items())}; "
          f"fit+predict inside fold tasks: {fw_compute:.2f} s; cv_score {s['models']['lgbm']['cv_score']:.5f}")
    print(f"\norchestration overhead per fold task: {overhead_ms:.1f} ms "
          f"({n_tasks} DummyClassifier fold tasks on 2 slots, train phase {train_phase:.2f} s, in-task compute {dummy_compute:.2f} s)")
    print(f"\npeak memory (PSS, process tree; dataset {data_mb:.1f} MiB): joblib {args.folds} folds {mem_joblib.peak / 2**20:.0f} MiB; "
          f"foldwise {args.folds} folds {mem_fw.peak / 2**20:.0f} MiB; foldwise 2 folds {mem_folds[2]:.0f} MiB; "
          f"8 folds {mem_folds[8]:.0f} MiB")


if __name__ == "__main__":
    main()
