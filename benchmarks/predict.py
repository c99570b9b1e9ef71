"""`foldwise predict` against the loop a user would write: unpickle the same fold models, predict,
average, blend; one process.

A run (5 stratified folds of a scaled logistic regression and LightGBM, `weights` ensemble) is
trained on `--train-rows` x `--features`; then `--rows` new rows (Parquet) are predicted by

* the loop: one Python process reads the file, then for each model and fold unpickles the fold's
  fitted adapter (the very bytes the run logged) and predicts all rows; fold mean; weighted blend;
* `foldwise predict RUN DATA` (whole process: interpreter, imports, Ray start-up included), its
  in-command figures (`wall_seconds`, `startup_seconds`) beside it.

Both outputs are checked equal (to 1e-12) before any figure is reported. Wall times come from
rounds with nothing else watching the processes. Memory comes from separate rounds (one per side
and file), sampled every 0.05 s over the whole process tree (the command and every process it
starts: for foldwise, Ray's GCS, raylet and workers):

* summed PSS (proportional set size: a page shared by several processes, such as Ray's object
  store, is split between them, so it counts once): the figure the target is about;
* summed VmHWM (each process's own RSS high-water mark, from /proc, the largest seen per process,
  summed): an upper bound, since the processes peak at different moments and shared pages count
  in every process that touched them.

The new rows' Parquet file is written with row groups of `--row-group-rows` rows (100,000 by
default): Arrow decodes a whole row group at a time, so a reader's memory is a row group's
whatever the batch size (`--row-group-rows 0`, pyarrow's default of one group up to 1Mi rows, shows
that case: its reader then holds the whole file decoded).

"From the data" is a peak minus the same command's peak on a 1,000-row file (interpreter,
libraries, Ray's processes and workers with the models loaded), against one copy of the data
(rows x features x 8 bytes).

Usage: python benchmarks/predict.py [--rows 1000000] [--features 40] [--train-rows 50000] [--repeats 2]
       [--row-group-rows 100000]
       [--out DIR] [--fw-args --chunk-rows N ...]   (--fw-args last: the rest goes to foldwise predict)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import psutil

REPO = Path(__file__).resolve().parents[1]

LOOP = """
import pickle, sys, time
import numpy as np, pandas as pd
start = time.perf_counter()
models, weights = pickle.load(open(sys.argv[1], "rb"))   # {name: [fitted adapter bytes per fold]}, {name: weight}
X = pd.read_parquet(sys.argv[2]).drop(columns=["id"]).astype("float64")
preds = {}
for name, folds in models.items():
    preds[name] = np.mean([pickle.loads(b).predict(X) for b in folds], axis=0)
ens = sum(w * preds[n] for n, w in weights.items() if w > 0)
np.save(sys.argv[3], ens)
print(time.perf_counter() - start)
"""


def make_data(folder: Path, rows: int, train_rows: int, features: int, row_group_rows: int | None,
              seed: int = 0) -> tuple[Path, Path, Path]:
    rng = np.random.default_rng(seed)
    beta = rng.normal(size=features) * (rng.uniform(size=features) < 0.5)

    def frame(n: int, with_target: bool) -> pd.DataFrame:
        X = rng.normal(size=(n, features))
        f = pd.DataFrame(X, columns=[f"f{j:02d}" for j in range(features)])
        f.insert(0, "id", np.arange(n))
        if with_target:
            f["y"] = (X @ beta + rng.normal(size=n) > 0).astype(int)
        return f

    folder.mkdir(parents=True, exist_ok=True)
    train, big, small = folder / "train.parquet", folder / "new.parquet", folder / "new_small.parquet"
    frame(train_rows, True).to_parquet(train, index=False)
    new = frame(rows, False)
    new.to_parquet(big, index=False, **({"row_group_size": row_group_rows} if row_group_rows else {}))
    new.head(1000).to_parquet(small, index=False)
    return train, big, small


def tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def vm_hwm(pid: int) -> int:
    """The process's RSS high-water mark (bytes), 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


@dataclass
class Peaks:
    pss: int = 0  # the largest summed PSS of the tree seen
    hwm: dict[int, int] = field(default_factory=dict)  # pid -> its largest VmHWM seen

    @property
    def hwm_sum(self) -> int:
        return sum(self.hwm.values())


def timed(cmd: list[str], cwd: Path, sample: bool) -> tuple[float, Peaks, str]:
    """(wall seconds, memory peaks of the process tree when `sample`, stdout) of one whole process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=os.environ | {"PYTHONPATH": str(REPO)})
    peaks = Peaks()

    def watch() -> None:
        while proc.poll() is None:
            total = 0
            for p in tree(proc.pid):
                try:
                    total += p.memory_full_info().pss
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
                peaks.hwm[p.pid] = max(peaks.hwm.get(p.pid, 0), vm_hwm(p.pid))
            peaks.pss = max(peaks.pss, total)
            time.sleep(0.05)

    t = threading.Thread(target=watch, daemon=True)
    if sample:
        t.start()
    out, err = proc.communicate()
    wall = time.perf_counter() - start
    if sample:
        t.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[:4]} failed: {err[-2000:]}")
    return wall, peaks, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--features", type=int, default=40)
    ap.add_argument("--train-rows", type=int, default=50_000)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--row-group-rows", type=int, default=100_000,
                    help="Parquet row groups of the new rows' file (0: pyarrow's default, one group up to 1Mi rows)")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out" / "predict")
    ap.add_argument("--fw-args", nargs=argparse.REMAINDER, default=[],
                    help="extra flags for foldwise predict (e.g. --chunk-rows 250000), last on the line")
    args = ap.parse_args()
    out = args.out.resolve()
    train, big, small = make_data(out, args.rows, args.train_rows, args.features, args.row_group_rows or None)
    uri = f"sqlite:///{out / 'mlflow.db'}"
    spec = {"name": "bench-predict", "data": {"train": str(train), "target": "y", "id": "id"},
            "cv": {"scheme": "stratified", "folds": 5, "seed": 0}, "ensemble": {"method": "weights"},
            "models": [{"name": "logreg", "type": "sklearn", "estimator": "sklearn.linear_model.LogisticRegression",
                        "params": {"max_iter": 1000}, "preprocess": ["standard_scaler"]},
                       {"name": "lgbm", "type": "lightgbm", "params": {"n_estimators": 200, "num_leaves": 31}}]}
    from foldwise.tasks.predictor import Predictor  # noqa: F401 - the pickled run model
    from foldwise.workflows.commands.run import run_cv
    from foldwise.workflows.tracking.logged_model import find_model

    run = run_cv(spec, out=out / "run", tracking_uri=uri, executor="ray")
    p, _ = find_model(uri, run.run_id)
    loop_models = out / "loop_models.pkl"
    import pickle

    with open(loop_models, "wb") as f:
        pickle.dump(({n: [fm.fitted for fm in folds] for n, folds in p.models.items()}, p.blend.weights), f)
    (out / "loop.py").write_text(LOOP)

    def loop(data: Path, sample: bool = False) -> tuple[float, Peaks, float]:
        wall, peaks, stdout = timed([sys.executable, str(out / "loop.py"), str(loop_models), str(data),
                                     str(out / "loop_pred.npy")], out, sample)
        return wall, peaks, float(stdout.strip().splitlines()[-1])

    def fw(data: Path, tag: str, sample: bool = False) -> tuple[float, Peaks, dict]:
        wall, peaks, _ = timed([sys.executable, "-m", "foldwise", "predict", str(out / "run"), str(data),
                                "--out", str(out / f"fw-{tag}"), "--no-progress", *args.fw_args], out, sample)
        return wall, peaks, json.loads((out / f"fw-{tag}" / "summary.json").read_text())

    rounds = []
    for _ in range(args.repeats):  # alternated, so drift in the machine's load hits both sides
        rounds.append((loop(big), fw(big, "big")))
    got = pd.read_csv(out / "fw-big" / "predictions.csv")["1"].to_numpy()
    want = np.load(out / "loop_pred.npy")
    assert np.max(np.abs(got - want)) <= 1e-12, np.max(np.abs(got - want))
    # memory: rounds of their own, sampled (the sampler reads /proc and would slow the timed ones)
    mem = {"loop": (loop(small, True)[1], loop(big, True)[1]), "fw": (fw(small, "small", True)[1], fw(big, "big", True)[1])}

    med = statistics.median
    loop_wall, loop_inner = med(r[0][0] for r in rounds), med(r[0][2] for r in rounds)
    fw_wall = med(r[1][0] for r in rounds)
    fw_cmd, fw_start = med(r[1][2]["wall_seconds"] for r in rounds), med(r[1][2]["startup_seconds"] for r in rounds)
    fw_whole = med(r[1][2].get("ray_start_seconds", r[1][2]["startup_seconds"]) for r in rounds)
    chunk_rows = rounds[-1][1][2]["chunk_rows"]
    one_copy = args.rows * args.features * 8
    mib = 2 ** 20

    def mem_row(label: str, side: str) -> list[str]:
        small_peaks, big_peaks = mem[side]
        pss, hwm = big_peaks.pss - small_peaks.pss, big_peaks.hwm_sum - small_peaks.hwm_sum
        return [f"| {label}, summed PSS | {big_peaks.pss / mib:.0f} | {pss / mib:.0f} | {pss / one_copy:.2f}x |",
                f"| {label}, summed VmHWM (upper bound) | {big_peaks.hwm_sum / mib:.0f} | {hwm / mib:.0f} | "
                f"{hwm / one_copy:.2f}x |"]

    lines = [
        f"## foldwise predict vs the plain loop ({platform.machine()}, {os.cpu_count()} cores; {args.rows} x "
        f"{args.features} new rows, Parquet row groups of {args.row_group_rows or 'pyarrow default'} rows; 5 folds x "
        f"(logreg + LightGBM 200 trees), weights; median of {args.repeats})",
        "",
        "| what | wall s | vs loop |",
        "|---|---:|---:|",
        f"| plain loop, whole process | {loop_wall:.2f} | 1.00x |",
        f"| plain loop, read + predict only | {loop_inner:.2f} | {loop_inner / loop_wall:.2f}x |",
        f"| foldwise predict, whole process | {fw_wall:.2f} | {fw_wall / loop_wall:.2f}x |",
        f"| foldwise predict, in command (summary wall_seconds) | {fw_cmd:.2f} | {fw_cmd / loop_wall:.2f}x |",
        f"| Ray start-up, whole (on a thread, beside MLflow loading the model and the first chunk's read) | "
        f"{fw_whole:.2f} | |",
        f"| Ray start-up the command waited for | {fw_start:.2f} | |",
        f"| foldwise in command minus Ray start-up, vs the loop's read + predict | {fw_cmd - fw_start:.2f} | "
        f"{(fw_cmd - fw_start) / loop_inner:.2f}x |",
        "",
        "| peak memory of the whole process tree, sampled every 0.05 s | MiB | from the data (minus the "
        "1,000-row run) | vs one copy |",
        "|---|---:|---:|---:|",
        *mem_row("plain loop", "loop"),
        *mem_row(f"foldwise predict (chunks of {chunk_rows} rows)", "fw"),
        f"| one copy of the data | {one_copy / mib:.0f} | | |",
    ]
    text = "\n".join(lines)
    print(text)
    (out / "result.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
