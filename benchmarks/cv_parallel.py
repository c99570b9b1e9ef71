"""foldwise vs what a user would write instead, in one run, on the same data and folds.

LightGBM (one thread per fold) on a synthetic ~100k x 40 binary table, K folds:
- foldwise `run_cv` on a local Ray with 2 CPUs (Ray start-up reported separately),
- `cross_val_predict(n_jobs=2)` (joblib/loky), the usual parallel baseline,
- Ray by hand (ray.put + one remote task per fold), what a Ray user writes instead,
- a sequential loop over the same folds.
The MLflow store is created before the timed runs (a user's store exists already).
Each side also gets its whole-process wall (interpreter, imports, Ray start-up and teardown)
and its driver's CPU seconds, and a warm loop: one process per side making repeated calls
with workers and data kept, as a notebook iterating on ideas does.
Also: orchestration overhead per fold task (a model that does ~nothing, many folds), and
peak memory (PSS of this process and all its descendants: Ray/loky workers, plasma) for 2
and 8 folds, to show the dataset is held once however many folds run.

Usage: python benchmarks/cv_parallel.py [--rows 100000] [--features 40] [--folds 5] [--repeats 3]
       [--warm-rounds 3] [--warm-calls 2] [--out benchmarks/out]
Prints a markdown table; paste it into benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
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


JOBLIB_SCRIPT = """
import json, sys, time
import lightgbm as lgb, pandas as pd
from sklearn.model_selection import StratifiedKFold, cross_val_predict
start, cpu = time.perf_counter(), time.process_time()
frame = pd.read_parquet(sys.argv[1])
X, y = frame.drop(columns=["target"]).to_numpy(), frame["target"].to_numpy()
cv = StratifiedKFold(int(sys.argv[2]), shuffle=True, random_state=0)
cross_val_predict(lgb.LGBMClassifier(**json.loads(sys.argv[3]), n_jobs=1, random_state=0), X, y, cv=cv, n_jobs=2,
                  method="predict_proba")
print(json.dumps({"wall": time.perf_counter() - start, "driver_cpu": time.process_time() - cpu}))
"""

RAY_SCRIPT = """
import json, sys, time
import lightgbm as lgb, numpy as np, pandas as pd
from sklearn.model_selection import StratifiedKFold
t, cpu = time.perf_counter(), time.process_time()
import ray
ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
startup = time.perf_counter() - t
start = time.perf_counter()
frame = pd.read_parquet(sys.argv[1])
X, y = frame.drop(columns=["target"]).to_numpy(), frame["target"].to_numpy()
X_ref, y_ref = ray.put(X), ray.put(y)

@ray.remote(num_cpus=1)
def fold(X, y, train, valid, params):
    model = lgb.LGBMClassifier(**params, n_jobs=1, random_state=0).fit(X[train], y[train])
    return valid, model.predict_proba(X[valid])[:, 1]

cv = StratifiedKFold(int(sys.argv[2]), shuffle=True, random_state=0)
oof = np.zeros(len(y))
params = json.loads(sys.argv[3])
for valid, pred in ray.get([fold.remote(X_ref, y_ref, tr, va, params) for tr, va in cv.split(X, y)]):
    oof[valid] = pred
print(json.dumps({"wall": time.perf_counter() - start, "startup": startup, "driver_cpu": time.process_time() - cpu}))
"""

FOLDWISE_SCRIPT = """
import json, os, sys, time
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
from foldwise.workflows.commands.run import run_cv
cpu = time.process_time()
s = run_cv(sys.argv[1], out=sys.argv[2], tracking_uri=sys.argv[3], no_cache=True,
           cache_root=os.path.join(os.path.dirname(sys.argv[2]), "cache")).summary
print(json.dumps(s | {"driver_cpu": time.process_time() - cpu}))
"""


# The loop a user iterates in (a notebook: data in memory, workers kept, one idea per call):
# every side makes one untimed warm-up call, then `n` timed calls, each with a new reg_lambda
# (a changed param, so every fold is refitted; compute is unchanged). foldwise keeps its cache on,
# as a user's does: the data, checks and fold plan come from it after the first call.
WARM_JOBLIB_SCRIPT = """
import json, sys, time
import lightgbm as lgb, pandas as pd
from sklearn.model_selection import StratifiedKFold, cross_val_predict
frame = pd.read_parquet(sys.argv[1])
X, y = frame.drop(columns=["target"]).to_numpy(), frame["target"].to_numpy()
cv = StratifiedKFold(int(sys.argv[2]), shuffle=True, random_state=0)
walls = []
for i in range(1 + int(sys.argv[4])):
    start = time.perf_counter()
    model = lgb.LGBMClassifier(**json.loads(sys.argv[3]), reg_lambda=i * 1e-6, n_jobs=1, random_state=0)
    cross_val_predict(model, X, y, cv=cv, n_jobs=2, method="predict_proba")
    walls.append(time.perf_counter() - start)
print(json.dumps(walls[1:]))
"""

WARM_RAY_SCRIPT = """
import json, sys, time
import lightgbm as lgb, numpy as np, pandas as pd
from sklearn.model_selection import StratifiedKFold
import ray
ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
frame = pd.read_parquet(sys.argv[1])
X, y = frame.drop(columns=["target"]).to_numpy(), frame["target"].to_numpy()
X_ref, y_ref = ray.put(X), ray.put(y)

@ray.remote(num_cpus=1)
def fold(X, y, train, valid, params):
    model = lgb.LGBMClassifier(**params, n_jobs=1, random_state=0).fit(X[train], y[train])
    return valid, model.predict_proba(X[valid])[:, 1]

splits = list(StratifiedKFold(int(sys.argv[2]), shuffle=True, random_state=0).split(X, y))
walls = []
for i in range(1 + int(sys.argv[4])):
    start = time.perf_counter()
    params = json.loads(sys.argv[3]) | {"reg_lambda": i * 1e-6}
    oof = np.zeros(len(y))
    for valid, pred in ray.get([fold.remote(X_ref, y_ref, tr, va, params) for tr, va in splits]):
        oof[valid] = pred
    walls.append(time.perf_counter() - start)
print(json.dumps(walls[1:]))
"""

WARM_FOLDWISE_SCRIPT = """
import json, os, sys, time
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
import ray
from foldwise.workflows.commands.run import run_cv
ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
walls = []
for i in range(1 + int(sys.argv[4])):
    start = time.perf_counter()
    run_cv(sys.argv[1], overrides=[f"models.0.params.reg_lambda={i * 1e-6}"], out=f"{sys.argv[2]}-{i}",
           tracking_uri=sys.argv[3], cache_root=sys.argv[2] + "-cache")
    walls.append(time.perf_counter() - start)
print(json.dumps(walls[1:]))
"""


def _fresh_process(script: str, *argv: str) -> tuple[str, float]:
    """Run `script` in a new Python (as a user's own run would be): its last stdout line, and the
    whole process's wall seconds (interpreter start, imports, Ray start-up and teardown included)."""
    import subprocess
    import sys

    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", script, *argv], capture_output=True, text=True, check=True,
                          cwd=Path(__file__).resolve().parents[1])
    return done.stdout.strip().splitlines()[-1], time.perf_counter() - start


def run_foldwise(spec: Path, out: Path, uri: str) -> dict:
    from foldwise.workflows.commands.run import run_cv

    # no_cache: every run computes (results are still written to the cache, as a user's first run does);
    # the cache root is the benchmark's own folder, so nothing from an earlier run is read either way.
    return run_cv(spec, out=out, tracking_uri=uri, no_cache=True, cache_root=str(out.parent / "cache")).summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--features", type=int, default=40)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3, help="rounds of joblib, Ray by hand and foldwise, alternated; medians reported")
    ap.add_argument("--warm-rounds", type=int, default=3,
                    help="rounds of the warm loop (each side: one process, a warm-up call, then --warm-calls timed calls); 0 skips it")
    ap.add_argument("--warm-calls", type=int, default=2)
    ap.add_argument("--trees", type=int, default=LGBM_PARAMS["n_estimators"],
                    help="LightGBM trees per fold (more trees: a workload whose fits take a minute or more)")
    ap.add_argument("--cold-only", action="store_true",
                    help="only the alternated cold rounds and whole processes (no sequential loop, warm loop, "
                         "overhead or memory parts)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/out"))
    args = ap.parse_args()
    LGBM_PARAMS["n_estimators"] = args.trees  # every side reads the same dict
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{out / 'mlflow.db'}"
    # A user's MLflow store exists already: create it (tables, experiment) in another process before
    # the timed runs, so its one-off creation (~5 s of schema migrations) is not counted, while
    # importing mlflow and opening the store, which every run pays, still are.
    import subprocess
    import sys

    subprocess.run([sys.executable, "-c", f"from foldwise.workflows.tracking.tracker import Tracker; Tracker({uri!r}, 'bench-lgbm')"],
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
    from sklearn.model_selection import StratifiedKFold

    cv = StratifiedKFold(args.folds, shuffle=True, random_state=0)
    results: dict[str, float] = {}

    # --- sequential loop
    start = time.perf_counter()
    for train, valid in ([] if args.cold_only else cv.split(X, y)):
        model = lgb.LGBMClassifier(**LGBM_PARAMS, n_jobs=1, random_state=0).fit(X[train], y[train])
        model.predict_proba(X[valid])
    results["sequential"] = time.perf_counter() - start

    # --- joblib vs foldwise, each in a fresh process as a user runs them (a script; `foldwise run`),
    # alternated `--repeats` times (this machine's speed drifts between minutes; alternating exposes
    # both to the same drift); medians reported. joblib: data read + cross_val_predict, imports
    # excluded. foldwise: summary wall_seconds - startup_seconds (Ray start-up excluded; data read,
    # checks, importing MLflow, tracking and outputs included).
    # Ray by hand: what a Ray user writes instead (ray.put, one remote task per fold), timed like
    # foldwise (imports of the libraries and Ray start-up excluded): the floor foldwise adds to.
    joblib_walls, fw_walls, fw_runs, ray_walls, ray_startups = [], [], [], [], []
    whole: dict[str, list[float]] = {"joblib": [], "ray": [], "foldwise": []}  # whole-process walls
    cpu: dict[str, list[float]] = {"joblib": [], "ray": [], "foldwise": []}  # driver CPU seconds
    fw_spec = write_spec(out / "lgbm.yaml", data_path, args.folds, lgbm, "bench-lgbm")
    for r in range(args.repeats):
        line, seconds = _fresh_process(JOBLIB_SCRIPT, str(data_path), str(args.folds), json.dumps(LGBM_PARAMS))
        joblib_walls.append(json.loads(line)["wall"])
        whole["joblib"].append(seconds)
        cpu["joblib"].append(json.loads(line)["driver_cpu"])
        line, seconds = _fresh_process(RAY_SCRIPT, str(data_path), str(args.folds), json.dumps(LGBM_PARAMS))
        by_hand = json.loads(line)
        ray_walls.append(by_hand["wall"])
        ray_startups.append(by_hand["startup"])
        whole["ray"].append(seconds)
        cpu["ray"].append(by_hand["driver_cpu"])
        line, seconds = _fresh_process(FOLDWISE_SCRIPT, str(fw_spec), str(out / f"run-lgbm-{r}"), uri)
        summary = json.loads(line)
        fw_runs.append(summary)
        fw_walls.append(summary["wall_seconds"] - summary["startup_seconds"])
        whole["foldwise"].append(seconds)
        cpu["foldwise"].append(summary["driver_cpu"])
    results["joblib"] = statistics.median(joblib_walls)
    results["ray_by_hand"] = statistics.median(ray_walls)
    fw_wall = statistics.median(fw_walls)
    s = fw_runs[fw_walls.index(sorted(fw_walls)[(len(fw_walls) - 1) // 2])]  # the median run's phases
    fw_compute = sum(s["models"]["lgbm"]["fit_seconds"]) + sum(s["models"]["lgbm"]["predict_seconds"])
    ratios = [f / j for f, j in zip(fw_walls, joblib_walls, strict=True)]
    if args.cold_only:
        print_cold(args, results, fw_wall, s, whole_median := {k: statistics.median(v) for k, v in whole.items()},
                   {k: statistics.median(v) for k, v in cpu.items()}, joblib_walls, fw_walls, ratios, fw_compute)
        return
    with PeakPSS() as mem_joblib:
        _fresh_process(JOBLIB_SCRIPT, str(data_path), str(args.folds), json.dumps(LGBM_PARAMS))
    whole_median = {k: statistics.median(v) for k, v in whole.items()}
    cpu_median = {k: statistics.median(v) for k, v in cpu.items()}

    # --- the warm loop, sides alternated by round
    warm: dict[str, list[list[float]]] = {"joblib": [], "ray": [], "foldwise": []}
    for r in range(args.warm_rounds):
        common = (str(args.folds), json.dumps(LGBM_PARAMS), str(args.warm_calls))
        warm["joblib"].append(json.loads(_fresh_process(WARM_JOBLIB_SCRIPT, str(data_path), *common)[0]))
        warm["ray"].append(json.loads(_fresh_process(WARM_RAY_SCRIPT, str(data_path), *common)[0]))
        warm["foldwise"].append(json.loads(_fresh_process(WARM_FOLDWISE_SCRIPT, str(fw_spec), str(out / f"warm-{r}"), uri,
                                                          str(args.warm_calls))[0]))

    # --- in this process from here on: a 2-CPU local Ray for the overhead and memory figures
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    with PeakPSS() as mem_fw:
        run_foldwise(fw_spec, out / "run-lgbm-mem", uri)

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
    print(f"| Ray by hand (ray.put + a remote task per fold), start-up excluded | {results['ray_by_hand']:.2f} | "
          f"{results['ray_by_hand'] / results['joblib']:.2f}x |")
    print(f"| foldwise run, start-up excluded (incl. data checks, MLflow logging, outputs) | {fw_wall:.2f} | {fw_wall / results['joblib']:.2f}x |")
    print(f"| Ray start-up (import ray + ray.init; foldwise's median run, excluded above) | {s['startup_seconds']:.2f} | |")
    print()
    print("| whole process (interpreter start, imports, Ray start-up and teardown included) | wall s | vs joblib | driver CPU s |")
    print("|---|---:|---:|---:|")
    for key, label in (("joblib", "cross_val_predict script"), ("ray", "Ray by hand script"), ("foldwise", "run_cv script")):
        print(f"| {label} | {whole_median[key]:.2f} | {whole_median[key] / whole_median['joblib']:.2f}x | {cpu_median[key]:.2f} |")
    print()
    print("driver CPU: the parent process's user+system seconds over its timed part (Ray by hand and foldwise "
          "include their Ray start-up's share); the fold work runs in worker processes and is not counted.")
    print()
    if args.warm_rounds:
        per_round = {k: [statistics.median(calls) for calls in v] for k, v in warm.items()}
        med = {k: statistics.median([w for calls in v for w in calls]) for k, v in warm.items()}
        print(f"warm loop ({args.warm_rounds} alternated rounds; each side one process: a warm-up call, then "
              f"{args.warm_calls} timed calls with a changed reg_lambda, every fold refitted; foldwise's cache on)\n")
        print("| each call, workers and data kept | wall s | vs joblib |")
        print("|---|---:|---:|")
        for key, label in (("joblib", "cross_val_predict(n_jobs=2), loky workers reused"),
                           ("ray", "Ray by hand, data put once"), ("foldwise", "run_cv on a running Ray (checks, MLflow, outputs)")):
            print(f"| {label} | {med[key]:.2f} | {med[key] / med['joblib']:.2f}x |")
        print()
        print("calls per round (s): " + "; ".join(f"{k} " + " / ".join(", ".join(f"{w:.2f}" for w in calls) for calls in v)
                                             for k, v in warm.items())
              + "; foldwise / joblib per round " + ", ".join(f"{f / j:.2f}" for f, j in zip(per_round["foldwise"], per_round["joblib"], strict=True)))
        print()
    print(f"{args.repeats} alternated rounds: joblib {', '.join(f'{w:.2f}' for w in joblib_walls)} s; Ray by hand "
          f"{', '.join(f'{w:.2f}' for w in ray_walls)} s (start-up {', '.join(f'{w:.2f}' for w in ray_startups)} s); foldwise "
          f"{', '.join(f'{w:.2f}' for w in fw_walls)} s; foldwise / joblib per round {', '.join(f'{x:.2f}' for x in ratios)} "
          f"(median {statistics.median(ratios):.2f}x); foldwise / Ray by hand per round "
          f"{', '.join(f'{f / h:.2f}' for f, h in zip(fw_walls, ray_walls, strict=True))}")
    print()
    print(f"foldwise phases (s): {', '.join(f'{k}={v:.2f}' for k, v in s['phase_seconds'].items())}; "
          f"fit+predict inside fold tasks: {fw_compute:.2f} s; cv_score {s['models']['lgbm']['cv_score']:.5f}")
    print(f"\norchestration overhead per fold task: {overhead_ms:.1f} ms "
          f"({n_tasks} DummyClassifier fold tasks on 2 slots, train phase {train_phase:.2f} s, in-task compute {dummy_compute:.2f} s)")
    print(f"\npeak memory (PSS, process tree; dataset {data_mb:.1f} MiB): joblib {args.folds} folds {mem_joblib.peak / 2**20:.0f} MiB; "
          f"foldwise {args.folds} folds {mem_fw.peak / 2**20:.0f} MiB; foldwise 2 folds {mem_folds[2]:.0f} MiB; "
          f"8 folds {mem_folds[8]:.0f} MiB")


def print_cold(args: argparse.Namespace, results: dict[str, float], fw_wall: float, s: dict, whole: dict[str, float],
               cpu: dict[str, float], joblib_walls: list[float], fw_walls: list[float], ratios: list[float],
               fw_compute: float) -> None:
    """`--cold-only`: the start-up-excluded and the whole-process tables of the alternated cold rounds."""
    print(f"## cv_parallel --cold-only ({time.strftime('%Y-%m-%d')}, {platform.machine()}, {psutil.cpu_count()} cores, "
          f"{args.rows} x {args.features}, {args.folds} folds, LightGBM {LGBM_PARAMS['n_estimators']} trees, "
          f"1 thread per fold, {args.repeats} alternated rounds, medians)\n")
    print("| what | wall s | vs joblib |\n|---|---:|---:|")
    print(f"| cross_val_predict(n_jobs=2) | {results['joblib']:.2f} | 1.00x |")
    print(f"| Ray by hand, start-up excluded | {results['ray_by_hand']:.2f} | {results['ray_by_hand'] / results['joblib']:.2f}x |")
    print(f"| foldwise run, start-up excluded | {fw_wall:.2f} | {fw_wall / results['joblib']:.2f}x |")
    print(f"| Ray start-up (foldwise's median run) | {s['startup_seconds']:.2f} | |\n")
    print("| whole process | wall s | vs joblib | driver CPU s |\n|---|---:|---:|---:|")
    for key, label in (("joblib", "cross_val_predict script"), ("ray", "Ray by hand script"), ("foldwise", "run_cv script")):
        print(f"| {label} | {whole[key]:.2f} | {whole[key] / whole['joblib']:.2f}x | {cpu[key]:.2f} |")
    print(f"\nrounds: joblib {', '.join(f'{w:.2f}' for w in joblib_walls)} s; foldwise (start-up excluded) "
          f"{', '.join(f'{w:.2f}' for w in fw_walls)} s; per round {', '.join(f'{x:.2f}' for x in ratios)}")
    print(f"foldwise phases (s): {', '.join(f'{k}={v:.2f}' for k, v in s['phase_seconds'].items())}; "
          f"fit+predict inside fold tasks: {fw_compute:.2f} s")


if __name__ == "__main__":
    main()
