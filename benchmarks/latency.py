"""Interactive latency: whole processes a user runs, foldwise against the plain script, in one run.

1. README's first job (`foldwise run workflows/examples/breast_cancer.yaml`: 5 stratified folds of
   a scaled logistic regression and LightGBM on 569 rows, weights blend on OOF) against a plain
   script doing the same with scikit-learn (`cross_val_predict(n_jobs=2)` for both models, then
   the blend weight chosen on OOF). foldwise with the default executor (`auto`: this small work
   runs in process) and with `--executor ray`; first command (fresh cache and MLflow store) and a
   second command (same store, `--no-cache`: the same work again). Then the default executor and
   `--executor ray` again from a folder where `foldwise cluster up` runs (the warm local cluster:
   commands fork from its warm command server and join its head), and the same with
   FOLDWISE_WARM=0 (each command imports the stack itself, and joins the head).
2. `foldwise check` of a train/test pair (50k train rows, 10k test rows, 40 columns) against a
   plain script fitting the same LightGBM adversarial folds with joblib (`n_jobs=2`); also from
   the folder of the warm desktop cluster, through its warm server and with FOLDWISE_WARM=0.

Each figure is the whole process (interpreter, imports, Ray start-up if any, teardown), median of
`--repeats` alternating rounds; beside it, foldwise's in-command wall (`summary.json`
`wall_seconds`, which excludes the interpreter and imports), the Ray start-up the command waited
for (`startup_seconds`) and Ray's whole start-up (`ray_start_seconds`: foldwise starts Ray on a
thread while it reads and checks the data, so part of it is hidden). The `--executor ray` first
command and the check also run with `FOLDWISE_EARLY_RAY=0` (Ray started at the first task, as
before): the early start's gain, in the same run.

Usage: python benchmarks/latency.py [--repeats 3] [--out benchmarks/out] [--check-rows 50000]
(a smoke test: --repeats 1 --check-rows 2000)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

README_SCRIPT = """
import numpy as np
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
import lightgbm as lgb

X, y = load_breast_cancer(return_X_y=True)
cv = StratifiedKFold(5, shuffle=True, random_state=42)
lr = cross_val_predict(make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000)), X, y, cv=cv,
                       n_jobs=2, method="predict_proba")[:, 1]
gbm = cross_val_predict(lgb.LGBMClassifier(n_estimators=300, learning_rate=0.05, num_leaves=15, n_jobs=1, verbose=-1),
                        X, y, cv=cv, n_jobs=2, method="predict_proba")[:, 1]
w = max(np.linspace(0, 1, 21), key=lambda w: roc_auc_score(y, w * lr + (1 - w) * gbm))
print(roc_auc_score(y, lr), roc_auc_score(y, gbm), roc_auc_score(y, w * lr + (1 - w) * gbm))
"""

CHECK_SCRIPT = """
import sys
import numpy as np, pandas as pd, lightgbm as lgb
from joblib import Parallel, delayed
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold

PARAMS = dict(n_estimators=200, learning_rate=0.05, num_leaves=31, min_child_samples=20, subsample=0.8,
              subsample_freq=1, colsample_bytree=0.8, verbose=-1)
train, test = pd.read_csv(sys.argv[1]), pd.read_csv(sys.argv[2])
a, b = train.drop(columns=["target"]).to_numpy(), test.to_numpy()
X, side = np.vstack([a, b]), np.r_[np.zeros(len(a)), np.ones(len(b))]

def fold(k, tr, va):
    m = lgb.LGBMClassifier(**PARAMS, random_state=k, n_jobs=1).fit(X[tr], side[tr])
    return roc_auc_score(side[va], m.predict_proba(X[va])[:, 1])

splits = StratifiedKFold(5, shuffle=True, random_state=42).split(X, side)
print(np.mean(Parallel(n_jobs=2)(delayed(fold)(k, tr, va) for k, (tr, va) in enumerate(splits))))
"""


def timed(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return wall, proc


def summary_of(proc: subprocess.CompletedProcess, cwd: Path) -> dict:
    return json.loads((cwd / proc.stdout.strip().splitlines()[-1]).read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/out"))
    ap.add_argument("--check-rows", type=int, default=50_000, help="train rows of the check (test: a fifth as many)")
    args = ap.parse_args()
    out = (args.out / "latency").resolve()
    out.mkdir(parents=True, exist_ok=True)
    (out / "readme_plain.py").write_text(README_SCRIPT)
    (out / "check_plain.py").write_text(CHECK_SCRIPT)
    exe = str(Path(sys.executable).with_name("foldwise"))
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "FOLDWISE_CACHE", "MLFLOW_TRACKING_URI", "FOLDWISE_WARM")}
    spec = str(REPO / "workflows" / "examples" / "breast_cancer.yaml")

    import pandas as pd
    from sklearn.datasets import make_classification

    n = args.check_rows
    X, y = make_classification(n_samples=n + n // 5, n_features=40, n_informative=20, random_state=0)
    X[n:, :3] += 0.3  # the test rows drift a little on three columns
    cols = [f"f{i:02d}" for i in range(40)]
    pd.DataFrame(X[:n], columns=cols).assign(target=y[:n]).to_csv(out / "train.csv", index=False)
    pd.DataFrame(X[n:], columns=cols).to_csv(out / "test.csv", index=False)
    (out / "check.yaml").write_text(
        "name: bench-check\ndata: {train: train.csv, test: test.csv, target: target}\n"
        "cv: {folds: 5, seed: 42}\nmodels: [{name: lr, type: sklearn, estimator: sklearn.linear_model.LogisticRegression}]\n")

    rows: dict[str, list[float]] = {}
    inner: dict[str, list[float]] = {}
    startup: dict[str, list[float]] = {}
    ray_start: dict[str, list[float]] = {}

    def add(name: str, wall: float, summary: dict | None = None) -> None:
        rows.setdefault(name, []).append(wall)
        if summary is not None:
            inner.setdefault(name, []).append(summary["wall_seconds"])
            startup.setdefault(name, []).append(summary.get("startup_seconds", 0.0))
            ray_start.setdefault(name, []).append(summary.get("ray_start_seconds", summary.get("startup_seconds", 0.0)))

    desk = out / "desk"  # a project folder with a desktop cluster up: commands from it join its head
    desk.mkdir(exist_ok=True)
    (desk / "check.yaml").write_text((out / "check.yaml").read_text().replace("train.csv", "../train.csv")
                                     .replace("test.csv", "../test.csv"))
    ports = [str(free_port()) for _ in range(3)]
    up = subprocess.run([exe, "cluster", "up", "--ray-port", ports[0], "--dashboard-port", ports[1], "--mlflow-port",
                         ports[2]], cwd=desk, env=env, capture_output=True, text=True, timeout=300)
    try:
        if up.returncode != 0:
            raise SystemExit(f"foldwise cluster up failed:\n{up.stderr[-3000:]}")
        wait_warm(desk)
        rounds(args, out, desk, exe, env, spec, add)
    finally:
        subprocess.run([exe, "cluster", "down"], cwd=desk, env=env, capture_output=True, text=True, timeout=300)
    report(args, rows, inner, startup, ray_start)


def wait_warm(desk: Path, timeout: float = 300) -> None:
    """The warm command server imports for seconds after `up`; the warm rows need it listening."""
    sock = desk / ".foldwise" / "cluster" / "warm.sock"
    deadline = time.monotonic() + timeout
    while not sock.exists():
        if time.monotonic() > deadline:
            log = desk / ".foldwise" / "cluster" / "warm-server.log"
            raise SystemExit(f"the warm command server did not listen within {timeout:.0f} s:\n"
                             f"{log.read_text()[-2000:] if log.exists() else '(no log)'}")
        time.sleep(0.5)


WARM = "running in the desktop cluster's warm server"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rounds(args, out: Path, desk: Path, exe: str, env: dict[str, str], spec: str, add) -> None:
    for r in range(args.repeats):
        add("plain script (cross_val_predict n_jobs=2)", timed([sys.executable, "readme_plain.py"], out)[0])
        for executor in ("auto", "ray"):
            run_dir = out / f"run-{executor}-{r}"
            base = [exe, "run", spec, "--no-progress", "--executor", executor,
                    "--tracking-uri", f"sqlite:///{run_dir / 'mlflow.db'}", "--cache", str(run_dir / "cache")]
            run_dir.mkdir(exist_ok=True)
            wall, proc = timed(base + ["--out", str(run_dir / "first")], run_dir, env)
            add(f"foldwise run, executor {executor}: first command", wall, summary_of(proc, run_dir))
            wall, proc = timed(base + ["--out", str(run_dir / "second"), "--no-cache"], run_dir, env)
            add(f"foldwise run, executor {executor}: second command", wall, summary_of(proc, run_dir))
        run_dir = out / f"run-lazy-{r}"  # the same first command, Ray started at the first task (before issue 22)
        run_dir.mkdir(exist_ok=True)
        wall, proc = timed([exe, "run", spec, "--no-progress", "--executor", "ray", "--tracking-uri",
                            f"sqlite:///{run_dir / 'mlflow.db'}", "--cache", str(run_dir / "cache"), "--out",
                            str(run_dir / "first")], run_dir, env | {"FOLDWISE_EARLY_RAY": "0"})
        add("foldwise run, executor ray: first command, Ray at the first task (FOLDWISE_EARLY_RAY=0)", wall,
            summary_of(proc, run_dir))
        for executor in ("auto", "ray"):
            for warm in (True, False):  # through the warm server; FOLDWISE_WARM=0: this process imports the stack
                run_dir = desk / f"run-{executor}-{'warm' if warm else 'nowarm'}-{r}"
                run_dir.mkdir(exist_ok=True)
                wall, proc = timed([exe, "run", spec, "--no-progress", "--executor", executor, "--tracking-uri",
                                    f"sqlite:///{run_dir / 'mlflow.db'}", "--no-cache", "--out", str(run_dir / "o")], desk,
                                   env if warm else env | {"FOLDWISE_WARM": "0"})
                assert (WARM in proc.stderr) == warm, proc.stderr[-2000:]
                if executor == "ray":
                    assert "joining the desktop cluster" in proc.stderr, proc.stderr[-2000:]
                how = "warm server" if warm else "FOLDWISE_WARM=0"
                add(f"foldwise run, executor {executor}, desktop cluster folder ({how}"
                    f"{', joined' if executor == 'ray' else ''})", wall, summary_of(proc, desk))
        add("plain adversarial script (joblib n_jobs=2)", timed([sys.executable, "check_plain.py", "train.csv",
                                                                  "test.csv"], out)[0])
        check_dir = out / f"check-{r}"
        wall, proc = timed([exe, "check", "check.yaml", "--no-progress", "--out", str(check_dir),
                            "--tracking-uri", f"sqlite:///{out / 'check.db'}"], out, env)
        add("foldwise check", wall, json.loads((check_dir / "summary.json").read_text()))
        check_dir = out / f"check-lazy-{r}"
        wall, proc = timed([exe, "check", "check.yaml", "--no-progress", "--out", str(check_dir),
                            "--tracking-uri", f"sqlite:///{out / 'check-lazy.db'}"], out, env | {"FOLDWISE_EARLY_RAY": "0"})
        add("foldwise check, Ray at the first task (FOLDWISE_EARLY_RAY=0)", wall,
            json.loads((check_dir / "summary.json").read_text()))
        for warm in (True, False):
            check_dir = desk / f"check-{'warm' if warm else 'nowarm'}-{r}"
            wall, proc = timed([exe, "check", "check.yaml", "--no-progress", "--out", str(check_dir),
                                "--tracking-uri", f"sqlite:///{desk / 'check.db'}"], desk,
                               env if warm else env | {"FOLDWISE_WARM": "0"})
            assert (WARM in proc.stderr) == warm, proc.stderr[-2000:]
            add(f"foldwise check, desktop cluster folder ({'warm server' if warm else 'FOLDWISE_WARM=0'})", wall,
                json.loads((check_dir / "summary.json").read_text()))


def report(args, rows: dict[str, list[float]], inner: dict[str, list[float]], startup: dict[str, list[float]],
           ray_start: dict[str, list[float]]) -> None:
    med = {k: statistics.median(v) for k, v in rows.items()}
    print(f"\n### Interactive latency ({time.strftime('%Y-%m-%d')}, {platform.machine()}, {os.cpu_count()} cores, "
          f"median of {args.repeats} rounds, whole processes)\n")
    print("| command | whole process s | vs plain | in-command s | Ray start-up waited s | Ray start-up whole s |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, wall in med.items():
        ref = med["plain adversarial script (joblib n_jobs=2)"] if "check" in name or "adversarial" in name \
            else med["plain script (cross_val_predict n_jobs=2)"]
        ins = f"{statistics.median(inner[name]):.2f}" if name in inner else ""
        st = f"{statistics.median(startup[name]):.2f}" if name in startup else ""
        whole = f"{statistics.median(ray_start[name]):.2f}" if name in ray_start else ""
        print(f"| {name} | {wall:.2f} | {wall / ref:.2f}x | {ins} | {st} | {whole} |")
    print("\nrounds (s): " + "; ".join(f"{k}: {', '.join(f'{x:.1f}' for x in v)}" for k, v in rows.items()))


if __name__ == "__main__":
    main()
