"""foldwise sweep vs what a user would write instead, same trial budget, same folds, in one run.

LightGBM (one thread per fold, 5 stratified folds) on a synthetic binary table, the same
search space for all three:
- Optuna alone: `study.optimize(objective, n_trials, n_jobs=2)`, TPE seeded, Optuna's default
  MedianPruner fed the running mean after each fold (what a careful Optuna user writes),
- a plain Ray Tune `Tuner` with default settings and `OptunaSearch` (no actor reuse, no
  scheduler, default loggers and checkpointing; console output off so the table stays readable),
- `foldwise sweep` (`run_sweep`, ASHA on folds, actors reused, every trial logged to MLflow).
All use a 2-CPU budget. Reported: wall time, best CV AUC, trials per minute, orchestration
overhead per trial ((wall x 2 slots - seconds spent inside fold fits/predicts) / trials), and
when foldwise first reaches Optuna-alone's final best score. A second part runs trivial trials
(DummyClassifier) through the three at two budgets (a third of --trivial-trials, then all of
it) to split orchestration cost into a fixed part (start-up, teardown) and a marginal cost per trial.
The MLflow store is created before the timed runs (a user's store exists already; creating
a fresh sqlite store takes a few seconds once).

Usage: python benchmarks/sweep.py [--rows 20000] [--features 30] [--trials 60] [--out benchmarks/out/sweep]
       python benchmarks/sweep.py --scale 2000   # only the scale part: thousands of trivial trials per side
Prints a markdown table; paste it into benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import yaml

FOLDS, SEED, SLOTS = 5, 0, 2
BASE = {"n_estimators": 200, "verbose": -1}
SPACE = {"learning_rate": {"loguniform": [0.01, 0.3]}, "num_leaves": {"int": [8, 128], "log": True},
         "min_child_samples": {"int": [5, 200]}, "colsample_bytree": {"uniform": [0.4, 1.0]},
         "reg_lambda": {"loguniform": [1e-3, 10.0]}}
TRIVIAL_SPACE = {"strategy": {"categorical": ["prior", "stratified", "uniform"]}}
SCALE_FOLDS = 2


def make_data(rows: int, features: int) -> pd.DataFrame:
    from sklearn.datasets import make_classification

    X, y = make_classification(n_samples=rows, n_features=features, n_informative=features // 2,
                               n_redundant=features // 4, flip_y=0.08, class_sep=0.7, random_state=SEED)
    frame = pd.DataFrame(X, columns=[f"f{i:02d}" for i in range(features)])
    frame["target"] = y
    return frame


def distributions(space: dict) -> dict:
    from foldwise.workflows.pipeline.search_space import parse_space, to_optuna

    return {d.name: to_optuna(d) for d in parse_space(space)}


def suggest(trial, name: str, dist):  # noqa: ANN001, ANN201 - optuna objects
    """The public define-by-run call for one of our distributions."""
    import optuna

    if isinstance(dist, optuna.distributions.CategoricalDistribution):
        return trial.suggest_categorical(name, dist.choices)
    if isinstance(dist, optuna.distributions.IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)
    return trial.suggest_float(name, dist.low, dist.high, step=dist.step, log=dist.log)


def fold_fit(kind: str, params: dict, X: np.ndarray, y: np.ndarray, train: np.ndarray, valid: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    if kind == "lgbm":
        import lightgbm as lgb

        model = lgb.LGBMClassifier(**BASE, **params, n_jobs=1, random_state=SEED)
    else:
        from sklearn.dummy import DummyClassifier

        model = DummyClassifier(**params, random_state=SEED)
    model.fit(X[train], y[train])
    return float(roc_auc_score(y[valid], model.predict_proba(X[valid])[:, 1]))


def optuna_alone(kind: str, space: dict, X: np.ndarray, y: np.ndarray, trials: int) -> dict:
    import optuna

    from foldwise.tasks.folds import splitter

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    splits = list(splitter("stratified", FOLDS, SEED).split(np.zeros(len(y)), y))
    dists = distributions(space)
    compute = []

    def objective(trial: optuna.Trial) -> float:
        params = {name: suggest(trial, name, dist) for name, dist in dists.items()}
        scores = []
        for k, (train, valid) in enumerate(splits):
            start = time.perf_counter()
            scores.append(fold_fit(kind, params, X, y, train, valid))
            compute.append(time.perf_counter() - start)
            trial.report(float(np.mean(scores)), k + 1)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return float(np.mean(scores))

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=SEED))
    t0 = time.time()
    start = time.perf_counter()
    study.optimize(objective, n_trials=trials, n_jobs=SLOTS)
    wall = time.perf_counter() - start
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    ends = sorted((t.datetime_complete.timestamp() - t0, t.value) for t in done)
    return {"wall": wall, "best": study.best_value, "compute": sum(compute), "completed": len(done),
            "pruned": sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials), "ends": ends}


def plain_tune(kind: str, space: dict, X: np.ndarray, y: np.ndarray, trials: int, storage: Path) -> dict:
    import ray
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    from foldwise.tasks.folds import splitter

    splits = list(splitter("stratified", FOLDS, SEED).split(np.zeros(len(y)), y))
    X_ref, y_ref = ray.put(X), ray.put(y)

    def trainable(config: dict) -> None:
        Xw, yw = ray.get(X_ref), ray.get(y_ref)
        scores, compute = [], 0.0
        for train, valid in splits:
            start = time.perf_counter()
            scores.append(fold_fit(kind, config, Xw, yw, train, valid))
            compute += time.perf_counter() - start
        tune.report({"score": float(np.mean(scores)), "compute": compute})

    search = OptunaSearch(space=distributions(space), metric="score", mode="max", seed=SEED)
    tuner = tune.Tuner(trainable, tune_config=tune.TuneConfig(search_alg=search, num_samples=trials),
                       run_config=tune.RunConfig(storage_path=str(storage), name=f"plain-{kind}", verbose=0))
    start = time.perf_counter()
    grid = tuner.fit()
    wall = time.perf_counter() - start
    df = grid.get_dataframe()
    return {"wall": wall, "best": float(df["score"].max()), "compute": float(df["compute"].sum()),
            "completed": int(len(df)), "pruned": 0}


def foldwise_sweep(kind: str, space: dict, data: Path, trials: int, out: Path, pruner: str) -> dict:
    from foldwise.workflows.commands.sweep import run_sweep

    if kind == "lgbm":
        model = {"name": "lgbm", "type": "lightgbm", "params": BASE, "resources": {"cpus": 1}}
    else:
        model = {"name": "dummy", "type": "sklearn", "estimator": "sklearn.dummy.DummyClassifier", "resources": {"cpus": 1}}
    spec = {"name": f"bench-sweep-{kind}", "data": {"train": str(data), "target": "target"}, "task": "binary",
            "metric": "roc_auc", "cv": {"scheme": "stratified", "folds": FOLDS, "seed": SEED}, "models": [model],
            "search": {"model": model["name"], "trials": trials, "space": space, "pruner": pruner}}
    path = out / f"{kind}.yaml"
    path.write_text(yaml.safe_dump(spec))
    t0 = time.time()
    result = run_sweep(path, concurrency=SLOTS, out=out / f"run-{kind}", tracking_uri=f"sqlite:///{out / 'mlflow.db'}",
                       storage=str(out / "store"), no_cache=True)
    s = result.summary
    done = [o for o in result.outcomes if o.state == "completed"]
    return {"wall": s["wall_seconds"], "tune": s["phase_seconds"]["tune"], "best": s["best"]["cv_score"],
            "compute": sum(o.compute_seconds for o in result.outcomes), "completed": s["trials"]["completed"],
            "pruned": s["trials"]["pruned"], "ends": sorted((o.ended_at - t0, o.cv_score) for o in done),
            "phases": s["phase_seconds"]}


# --------------------------------------------------------------------------- scale: thousands of trivial trials


def per_trial_ms(marks: list[tuple[float, float, float]], window: int = 100) -> dict[str, float]:
    """ms per trial over the first and the last `window` trial ends. `marks`: (end time, the driver
    process's CPU seconds then, seconds inside that trial's folds) per trial end.

    - wall: between the window's first and last trial ends, per trial;
    - orchestration: that wall x SLOTS minus the seconds inside the folds of the trials ending in
      it, per trial (the target's measure: slot time not spent fitting);
    - driver CPU: the driver's own CPU (every thread) meanwhile, per trial; other load on the machine
      barely changes it, where it changes the other two.
    Flat cost means first = last."""
    marks = sorted(marks)
    n = min(window, len(marks) // 2)
    if n < 2:
        return {}
    out = {}
    for name, i in (("first", 0), ("last", len(marks) - n)):
        (t0, c0, _), (t1, c1, _) = marks[i], marks[i + n - 1]
        inside = sum(m[2] for m in marks[i + 1:i + n])
        out[f"{name}_100_ms"] = (t1 - t0) / (n - 1) * 1000
        out[f"{name}_100_orchestration_ms"] = ((t1 - t0) * SLOTS - inside) / (n - 1) * 1000
        out[f"{name}_100_cpu_ms"] = (c1 - c0) / (n - 1) * 1000
    return out


def scale_side(side: str, trials: int, out: Path, sampler: str = "tpe") -> dict:
    """One side of the scale test, in its own process (so its peak memory is the driver's alone).

    Trivial trials (DummyClassifier, SCALE_FOLDS folds of a 400-row table), 2 at a time. Returns
    wall, seconds inside the folds, ms per trial over the first and the last hundred trials (wall
    between trial ends, and the driver's CPU: flat cost means these match), the driver's peak RSS
    and MLflow runs.
    """
    import resource

    rng = np.random.default_rng(SEED)
    frame = pd.DataFrame(rng.normal(size=(400, 4)), columns=list("abcd"))
    frame["target"] = (frame.a + rng.normal(size=400) > 0).astype(int)
    X, y = frame.drop(columns=["target"]).to_numpy(), frame["target"].to_numpy()
    out.mkdir(parents=True, exist_ok=True)
    marks: list[tuple[float, float, float]] = []  # (trial end, driver process CPU, seconds in its folds) per trial
    if side == "optuna":
        import optuna

        from foldwise.tasks.folds import splitter

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        splits = list(splitter("stratified", SCALE_FOLDS, SEED).split(np.zeros(len(y)), y))
        compute: list[float] = []
        fold_cpu: list[float] = []

        def objective(trial: optuna.Trial) -> float:
            params = {"strategy": trial.suggest_categorical("strategy", ["prior", "stratified", "uniform"])}
            start, cpu = time.perf_counter(), time.thread_time()
            score = float(np.mean([fold_fit("dummy", params, X, y, tr, va) for tr, va in splits]))
            compute.append(time.perf_counter() - start)
            fold_cpu.append(time.thread_time() - cpu)
            trial.set_user_attr("compute", compute[-1])
            return score

        def mark(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
            # the folds run in this process: their CPU is taken out, leaving Optuna's own
            marks.append((time.time(), time.process_time() - sum(fold_cpu), trial.user_attrs.get("compute", 0.0)))

        study = optuna.create_study(direction="maximize", sampler=make_sampler(sampler))
        start = time.perf_counter()
        study.optimize(objective, n_trials=trials, n_jobs=SLOTS, callbacks=[mark])
        wall = time.perf_counter() - start
        result = {"wall": wall, "compute": sum(compute), "mlflow_runs": 0}
    else:
        import ray

        ray.init(num_cpus=SLOTS, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
        if side == "tune":
            from ray import tune
            from ray.tune.search.optuna import OptunaSearch

            from foldwise.tasks.folds import splitter

            splits = list(splitter("stratified", SCALE_FOLDS, SEED).split(np.zeros(len(y)), y))

            def trainable(config: dict) -> None:
                start = time.perf_counter()
                score = float(np.mean([fold_fit("dummy", config, X, y, tr, va) for tr, va in splits]))
                tune.report({"score": score, "compute": time.perf_counter() - start, "ended": time.time()})

            class Mark(tune.Callback):
                def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:  # noqa: ANN001
                    marks.append((time.time(), time.process_time(), float(trial.last_result.get("compute", 0.0))))

            search = OptunaSearch(space=distributions(TRIVIAL_SPACE), metric="score", mode="max",
                                  sampler=make_sampler(sampler))
            tuner = tune.Tuner(trainable, tune_config=tune.TuneConfig(search_alg=search, num_samples=trials),
                               run_config=tune.RunConfig(storage_path=str(out / "tune"), name="scale", verbose=0,
                                                         callbacks=[Mark()]))
            start = time.perf_counter()
            df = tuner.fit().get_dataframe()
            wall = time.perf_counter() - start
            result = {"wall": wall, "compute": float(df["compute"].sum()), "mlflow_runs": 0}
        else:
            from foldwise.workflows.commands.sweep import run_sweep
            from foldwise.workflows.tracking.sweep_book import SweepBook
            from foldwise.workflows.tracking.tracker import RunReader, Tracker

            ending = SweepBook._end

            def marked_end(book: SweepBook, rec, state: str) -> None:  # noqa: ANN001 - the book's own record
                ending(book, rec, state)
                marks.append((time.time(), time.process_time(), sum(rec.fold_seconds.values())))

            SweepBook._end = marked_end  # the benchmark's probe: when each trial ended, and the driver's CPU by then
            data = out / "scale.csv"
            frame.to_csv(data, index=False)
            uri = f"sqlite:///{out / 'mlflow.db'}"
            Tracker(uri, "bench-setup")  # the store exists, as it would for a user
            spec = {"name": "bench-sweep-scale", "data": {"train": str(data), "target": "target"}, "task": "binary",
                    "metric": "roc_auc", "cv": {"scheme": "stratified", "folds": SCALE_FOLDS, "seed": SEED},
                    "models": [{"name": "dummy", "type": "sklearn", "estimator": "sklearn.dummy.DummyClassifier"}],
                    "search": {"trials": trials, "space": TRIVIAL_SPACE, "pruner": "none", "sampler": sampler}}
            r = run_sweep(spec, concurrency=SLOTS, out=out / "run", tracking_uri=uri, storage=str(out / "store"),
                          no_cache=True)
            s = r.summary
            result = {"wall": s["phase_seconds"]["tune"], "command_wall": s["wall_seconds"], "phases": s["phase_seconds"],
                      "compute": sum(o.compute_seconds for o in r.outcomes),
                      "mlflow_runs": len(RunReader(uri).children(s["run_id"])), "mlflow_finished": s["trials"]["total"]}
        ray.shutdown()
    return {**result, "trials": len(marks), **per_trial_ms(marks),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def make_sampler(name: str):  # noqa: ANN201 - an Optuna sampler
    import optuna

    return (optuna.samplers.TPESampler(seed=SEED) if name == "tpe" else optuna.samplers.RandomSampler(seed=SEED))


def scale(trials: int, out: Path, sides: list[str], tune_trials: int = 100, sampler: str = "tpe") -> None:
    """Each side in a subprocess, then one table."""
    import json
    import subprocess
    import sys

    results = {}
    for side in sides:
        proc = subprocess.run([sys.executable, __file__, "--scale-side", side, "--scale", str(trials), "--out", str(out),
                               "--scale-tune", str(tune_trials), "--scale-sampler", sampler],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"{side} failed: {proc.stderr[-2000:]}")
            continue
        results[side] = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"## sweep at scale ({datetime.now():%Y-%m-%d}, {platform.machine()}, {psutil.cpu_count()} cores, "
          f"{trials} trivial trials: DummyClassifier, {SCALE_FOLDS} folds, {SLOTS} at a time, sampler {sampler})\n")
    print("| what | trials | wall s | overhead ms/trial | wall ms/trial, first 100 / last 100 | "
          "orchestration ms/trial, first 100 / last 100 | driver CPU ms/trial, first 100 / last 100 | "
          "driver peak RSS MiB | MLflow runs |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    nan = float("nan")
    names = {"optuna": "Optuna alone (n_jobs=2; CPU without the folds)", "tune": "Ray Tune defaults + OptunaSearch",
             "foldwise": "foldwise sweep (tune phase)"}
    for side, r in results.items():
        print(f"| {names[side]} | {r['trials']} | {r['wall']:.1f} | {overhead_ms(r['wall'], r['compute'], r['trials']):.0f} | "
              f"{r.get('first_100_ms', nan):.0f} / {r.get('last_100_ms', nan):.0f} | "
              f"{r.get('first_100_orchestration_ms', nan):.0f} / {r.get('last_100_orchestration_ms', nan):.0f} | "
              f"{r.get('first_100_cpu_ms', nan):.1f} / {r.get('last_100_cpu_ms', nan):.1f} | "
              f"{r['peak_rss_mb']:.0f} | {r['mlflow_runs']} |")
    print(f"\nWindows: the first and the last min(100, trials / 2) trial ends of each side; Ray Tune's defaults ran "
          f"{tune_trials} trials (a new actor per trial), not {trials}.")
    if "foldwise" in results:
        f = results["foldwise"]
        print(f"\nfoldwise whole command {f['command_wall']:.1f} s; phases (s): "
              + ", ".join(f"{k}={v:.2f}" for k, v in f["phases"].items())
              + f"; MLflow trial runs {f['mlflow_runs']} for trials.total {f['mlflow_finished']}")


def time_to(target: float, ends: list[tuple[float, float]]) -> float | None:
    """Seconds until the running best first reaches target (None: never)."""
    best = -np.inf
    for t, value in ends:
        best = max(best, value)
        if best >= target - 1e-12:
            return t
    return None


def overhead_ms(wall: float, compute: float, trials: int) -> float:
    return (wall * SLOTS - compute) / trials * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--features", type=int, default=30)
    ap.add_argument("--trials", type=int, default=60)
    ap.add_argument("--trivial-trials", type=int, default=None, help="trials of the overhead part (default --trials)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/out/sweep"))
    ap.add_argument("--scale", type=int, default=None, metavar="N",
                    help="run only the scale part: N trivial trials per side (each side in its own process)")
    ap.add_argument("--scale-side", choices=["optuna", "tune", "foldwise"], help=argparse.SUPPRESS)
    ap.add_argument("--scale-sides", default="foldwise,optuna,tune", help="the sides of --scale, comma-separated")
    ap.add_argument("--scale-tune", type=int, default=100,
                    help="trials of the Ray Tune defaults side of --scale (a new actor per trial: ~4 s each here)")
    ap.add_argument("--scale-sampler", choices=["tpe", "random"], default="tpe",
                    help="the sampler of every --scale side (random: no sampler growth, to see the rest's)")
    ap.add_argument("--skip-tune-defaults", action="store_true",
                    help="leave out the Ray Tune defaults side (~13 min here; it runs no foldwise code), e.g. to "
                         "check foldwise against Optuna alone after a change to foldwise only")
    args = ap.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    if args.scale_side:
        import json

        os.chdir(out)
        n = min(args.scale, args.scale_tune) if args.scale_side == "tune" else args.scale
        result = scale_side(args.scale_side, n, out / f"scale-{args.scale_side}", args.scale_sampler)
        (out / f"scale-{args.scale_side}.json").write_text(json.dumps(result))  # kept if a later side is cut short
        print(json.dumps(result))
        return
    if args.scale:
        scale(args.scale, out, args.scale_sides.split(","), args.scale_tune, args.scale_sampler)
        return
    os.chdir(out)  # MLflow's default artifact root (./mlruns) and foldwise's cache land under --out
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    frame = make_data(args.rows, args.features)
    data = out / "bench.parquet"
    frame.to_parquet(data, index=False)
    X, y = frame.drop(columns=["target"]).to_numpy(), frame["target"].to_numpy()
    n, trivial_n = args.trials, args.trivial_trials or args.trials

    import ray

    res: dict[str, dict] = {"optuna": optuna_alone("lgbm", SPACE, X, y, n)}
    start = time.perf_counter()
    ray.init(num_cpus=SLOTS, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    ray_startup = time.perf_counter() - start
    from foldwise.workflows.tracking.tracker import Tracker

    Tracker(f"sqlite:///{out / 'mlflow.db'}", "bench-setup")  # the store exists, as it would for a user
    res["foldwise"] = foldwise_sweep("lgbm", SPACE, data, n, out, "asha")
    if not args.skip_tune_defaults:
        res["tune"] = plain_tune("lgbm", SPACE, X, y, n, out / "tune")
    small_n = max(2, trivial_n // 3)
    trivial = {}
    for size in (small_n, trivial_n):
        trivial[("foldwise", size)] = foldwise_sweep("dummy", TRIVIAL_SPACE, data, size, out, "none")
        if not args.skip_tune_defaults:
            trivial[("tune", size)] = plain_tune("dummy", TRIVIAL_SPACE, X, y, size, out / "tune")
    ray.shutdown()
    for size in (small_n, trivial_n):
        trivial[("optuna", size)] = optuna_alone("dummy", TRIVIAL_SPACE, X, y, size)

    target = res["optuna"]["best"]
    reach = time_to(target, res["foldwise"]["ends"])
    print(f"## sweep ({datetime.now():%Y-%m-%d}, {platform.machine()}, {psutil.cpu_count()} cores, "
          f"{args.rows} x {args.features}, {FOLDS} folds, LightGBM {BASE['n_estimators']} trees, 1 thread per fold, "
          f"{n} trials, {SLOTS} at a time)\n")
    print("| what | wall s | best CV AUC | trials/min | completed / pruned | slot-s outside folds per trial, ms | wall vs Optuna |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    rows = [("Optuna alone (n_jobs=2, MedianPruner)", res["optuna"], res["optuna"]["wall"]),
            ("Ray Tune defaults + OptunaSearch", res.get("tune"), res.get("tune", {}).get("wall")),
            ("foldwise sweep (ASHA, MLflow; tune phase)", res["foldwise"], res["foldwise"]["tune"]),
            ("foldwise sweep, whole command", res["foldwise"], res["foldwise"]["wall"])]
    for name, r, wall in rows:
        if r is None:
            continue
        print(f"| {name} | {wall:.1f} | {r['best']:.5f} | {n / wall * 60:.1f} | {r['completed']} / {r['pruned']} | "
              f"{overhead_ms(wall, r['compute'], n):.0f} | {wall / res['optuna']['wall']:.2f}x |")
    print()
    if reach is not None:
        print(f"foldwise reaches Optuna-alone's final best ({target:.5f}) after {reach:.1f} s = "
              f"{reach / res['optuna']['wall']:.2f}x Optuna-alone's wall time (target <= 0.6x).")
    else:
        print(f"foldwise does not reach Optuna-alone's final best ({target:.5f}); its best is "
              f"{res['foldwise']['best']:.5f} (target: reach it in <= 0.6x Optuna-alone's wall time).")
    print(f"Ray start-up (once per session, not in the walls above): {ray_startup:.1f} s.")
    print(f"foldwise phases (s): {', '.join(f'{k}={v:.2f}' for k, v in res['foldwise']['phases'].items())}")
    print(f"\n### orchestration cost on trivial trials (DummyClassifier, {FOLDS} folds; {small_n} and {trivial_n} trials; "
          "target <= 100 ms per trial)\n")
    print(f"| what | wall s ({small_n} / {trivial_n} trials) | fixed slot-s | marginal overhead ms/trial |")
    print("|---|---:|---:|---:|")
    for name, key, wall_key in (("Optuna alone (n_jobs=2)", "optuna", "wall"), ("Ray Tune defaults + OptunaSearch", "tune", "wall"),
                                ("foldwise sweep (tune phase)", "foldwise", "tune")):
        if (key, small_n) not in trivial:
            continue
        a, b = trivial[(key, small_n)], trivial[(key, trivial_n)]
        cost_a = a[wall_key] * SLOTS - a["compute"]
        cost_b = b[wall_key] * SLOTS - b["compute"]
        marginal = (cost_b - cost_a) / (trivial_n - small_n)
        print(f"| {name} | {a[wall_key]:.1f} / {b[wall_key]:.1f} | {cost_a - marginal * small_n:.1f} | {marginal * 1000:.0f} |")


if __name__ == "__main__":
    main()
