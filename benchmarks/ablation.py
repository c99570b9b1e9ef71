"""foldwise ablate vs what a user would write instead, in one run, on the same data and folds.

LightGBM (one thread per fit) on a synthetic binary table whose columns form G equal
groups; the baseline plus one variant per group dropped, K folds each:
- joblib, the usual way: for each variant, `cross_val_score(..., n_jobs=2)` (folds in
  parallel, variants one after the other),
- joblib, the best a user could do by hand: one `Parallel(n_jobs=2)` over every variant x fold,
  alone and followed by the same paired bootstrap intervals (foldwise's numpy code on its OOF),
- foldwise `run_ablation` on a 2-CPU local Ray, cold (`no_cache`): the same fits as one DAG,
  plus what the loops do not give (paired bootstrap intervals, permutation importance,
  report, chart, MLflow),
- foldwise after `foldwise run`: the baseline comes from the cache (fits saved, counted).
Peak memory is the summed PSS of this process and all its descendants (workers, plasma).
Each joblib measurement starts its own worker processes, as a user's script does (joblib's
executor is shut down before it; earlier versions of this script let later measurements reuse
the workers, with lightgbm already imported, that the first one started), and foldwise's Ray
workers are fresh too (Ray is started, outside the wall, just before).

Usage: python benchmarks/ablation.py [--rows 50000] [--features 40] [--groups 8] [--folds 5] [--out benchmarks/out]
Prints a markdown table; paste it into benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cv_parallel import PeakPSS, make_data  # noqa: E402 - the shared helpers of the CV benchmark

LGBM_PARAMS = {"n_estimators": 200, "learning_rate": 0.05, "num_leaves": 31, "verbose": -1}


def _fit_score(X: np.ndarray, y: np.ndarray, keep: np.ndarray, train: np.ndarray, valid: np.ndarray) -> float:
    import lightgbm as lgb
    from sklearn.metrics import roc_auc_score

    model = lgb.LGBMClassifier(**LGBM_PARAMS, n_jobs=1, random_state=0).fit(X[train][:, keep], y[train])
    return float(roc_auc_score(y[valid], model.predict_proba(X[valid][:, keep])[:, 1]))


def _fit_predict(X: np.ndarray, y: np.ndarray, keep: np.ndarray, train: np.ndarray, valid: np.ndarray) -> np.ndarray:
    import lightgbm as lgb

    model = lgb.LGBMClassifier(**LGBM_PARAMS, n_jobs=1, random_state=0).fit(X[train][:, keep], y[train])
    return model.predict_proba(X[valid][:, keep])[:, 1]


def _with_intervals(X: np.ndarray, y: np.ndarray, variants: dict, splits: list, n_boot: int) -> dict:
    """One Parallel over variants x folds, OOF per variant, then the paired bootstrap intervals of
    every variant against the baseline with foldwise's own numpy code (the same statistics)."""
    from joblib import Parallel, delayed

    from foldwise.tasks.ablation import paired_deltas
    from foldwise.tasks.folds import FoldPlan

    jobs = [(name, k) for name in variants for k in range(len(splits))]
    preds = Parallel(n_jobs=2)(delayed(_fit_predict)(X, y, variants[name], *splits[k]) for name, k in jobs)
    oof = {name: np.empty(len(y)) for name in variants}
    fold_of_row = np.empty(len(y), np.int32)
    for (name, k), p in zip(jobs, preds):
        oof[name][splits[k][1]] = p
        fold_of_row[splits[k][1]] = k
    plan = FoldPlan(fold_of_row=fold_of_row, n_folds=len(splits), scheme="stratified", seed=0, hash="")
    base = oof.pop("baseline")
    return paired_deltas("roc_auc", "binary", y, plan, base, oof, n_boot, 0)


def _fresh_workers() -> None:
    """Shut joblib's reusable executor down: the next Parallel starts (and imports in) new workers."""
    from joblib.externals.loky import get_reusable_executor

    get_reusable_executor().shutdown(wait=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=50_000)
    ap.add_argument("--features", type=int, default=40)
    ap.add_argument("--groups", type=int, default=8)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/out"))
    args = ap.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    uri = f"sqlite:///{out / 'mlflow-ablation.db'}"

    frame = make_data(args.rows, args.features)
    features = [c for c in frame.columns if c != "target"]
    size = len(features) // args.groups
    groups = {f"g{i}": features[i * size:(i + 1) * size] for i in range(args.groups)}
    data_path = out / "ablation.parquet"
    frame.to_parquet(data_path, index=False)
    X, y = frame[features].to_numpy(), frame["target"].to_numpy()
    variants = {"baseline": np.arange(len(features))} | {
        g: np.array([j for j, c in enumerate(features) if c not in set(cols)]) for g, cols in groups.items()}
    n_fits = len(variants) * args.folds

    import lightgbm as lgb
    from joblib import Parallel, delayed
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    cv = StratifiedKFold(args.folds, shuffle=True, random_state=0)
    splits = list(cv.split(X, y))
    results: dict[str, float] = {}
    memory: dict[str, int] = {}

    _fresh_workers()
    with PeakPSS() as m:
        start = time.perf_counter()
        for keep in variants.values():
            cross_val_score(lgb.LGBMClassifier(**LGBM_PARAMS, n_jobs=1, random_state=0), X[:, keep], y, cv=cv,
                            scoring="roc_auc", n_jobs=2)
        results["joblib: cross_val_score per variant"] = time.perf_counter() - start
    memory["joblib: cross_val_score per variant"] = m.peak

    _fresh_workers()
    with PeakPSS() as m:
        start = time.perf_counter()
        Parallel(n_jobs=2)(delayed(_fit_score)(X, y, keep, tr, va) for keep in variants.values() for tr, va in splits)
        results["joblib: one Parallel over variants x folds"] = time.perf_counter() - start
    memory["joblib: one Parallel over variants x folds"] = m.peak

    _fresh_workers()
    with PeakPSS() as m:
        start = time.perf_counter()
        _with_intervals(X, y, variants, splits, 1000)
        results["joblib: one Parallel + the same bootstrap intervals"] = time.perf_counter() - start
    memory["joblib: one Parallel + the same bootstrap intervals"] = m.peak

    import ray

    from foldwise.workflows.commands.ablate import run_ablation
    from foldwise.workflows.commands.run import run_cv

    start = time.perf_counter()
    # address="local": a new 2-CPU Ray even when another cluster on this machine is in /tmp/ray/ray_current_cluster
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    ray_startup = time.perf_counter() - start
    spec = {"name": "bench-ablation", "data": {"train": str(data_path), "target": "target"}, "task": "binary",
            "metric": "roc_auc", "cv": {"scheme": "stratified", "folds": args.folds, "seed": 0},
            "features": {"groups": {g: cols for g, cols in groups.items()}},
            "models": [{"name": "lgbm", "type": "lightgbm", "params": LGBM_PARAMS, "resources": {"cpus": 1}}]}
    spec_path = out / "ablation.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    cache = str(out / "ablation-cache")
    with PeakPSS() as m:
        cold = run_ablation(spec_path, out=out / "ablate-cold", tracking_uri=uri, cache_root=cache, no_cache=True).summary
    results["foldwise ablate (cold)"] = cold["wall_seconds"]
    memory["foldwise ablate (cold)"] = m.peak
    run_cv(spec_path, out=out / "run", tracking_uri=uri, cache_root=cache + "-2")  # a user's earlier foldwise run
    with PeakPSS() as m:
        warm = run_ablation(spec_path, out=out / "ablate-after-run", tracking_uri=uri, cache_root=cache + "-2").summary
    results["foldwise ablate after foldwise run"] = warm["wall_seconds"]
    memory["foldwise ablate after foldwise run"] = m.peak
    ray.shutdown()

    ref = results["joblib: one Parallel + the same bootstrap intervals"]
    print(f"\n### Ablation: {args.rows} rows x {len(features)} features, {args.groups} groups, {args.folds} folds, "
          f"LightGBM {LGBM_PARAMS['n_estimators']} trees ({platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, 2 worker slots)\n")
    print("| how | wall s | vs one Parallel + the same intervals | fits | peak memory MiB |")
    print("|---|---:|---:|---:|---:|")
    fitted = {"foldwise ablate (cold)": n_fits - cold["dag"]["fits"]["cached"],
              "foldwise ablate after foldwise run": n_fits - warm["dag"]["fits"]["cached"]}
    for name, secs in results.items():
        print(f"| {name} | {secs:.2f} | {secs / ref:.2f}x | {fitted.get(name, n_fits)} | {memory[name] / 2**20:.0f} |")
    phases = cold["phase_seconds"]
    print(f"\nfoldwise cold: Ray start-up {ray_startup:.1f} s (not in wall); phases "
          + ", ".join(f"{k} {v:.2f}" for k, v in phases.items())
          + f"; nodes run {cold['dag']['nodes_run']}. Its wall time also covers {cold['bootstrap_resamples']} "
          "bootstrap resamples per comparison, permutation importance and MLflow logging, which the loops do not do.")
    after = phases.get("ensembles", 0.0) + phases.get("statistics_and_importance", 0.0)
    print(f"\nfoldwise cold, the split: fits {phases['train_folds']:.2f} s (the importance and per-model bootstrap "
          f"tasks run beside them: importance tasks ran {cold['dag'].get('importance_task_seconds', float('nan')):.2f} "
          f"slot-seconds in all); after the last fit: ensembles {phases.get('ensembles', 0.0):.2f} s (they queue behind "
          f"the last fold's bootstrap tasks), statistics {phases.get('statistics', float('nan')):.2f} s, importance "
          f"still running {phases.get('importance_after_statistics', float('nan')):.2f} s: {after:.2f} s after the fits "
          f"= {100 * after / cold['wall_seconds']:.1f}% of the wall (issue 22: statistics + importance <= 5%).")


if __name__ == "__main__":
    main()
