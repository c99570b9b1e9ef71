"""What submitting costs: `foldwise submit --wait` vs Ray's own `ray job submit` vs a local run.

On one desktop cluster (`foldwise cluster up`, own ports, temp dir and Ray token), the same
spec is run, `--repeats` times each, as:
- `foldwise run SPEC` on this machine (a fresh local Ray each time: no cluster at all),
- `foldwise submit SPEC --wait` to the cluster (project upload, job driver, MLflow server),
- `ray job submit --working-dir . -- foldwise run SPEC` (what a user would type instead of
  `foldwise submit`; same upload rules, no local checks, the cluster's tracking server).
All three use --no-cache so every run fits every fold. Wall seconds from the command's start to
its exit; the ratios say what `foldwise submit` adds over Ray Jobs itself and what a job costs
over a local run. The cluster is stopped at the end (also on failure).

Usage: python benchmarks/submit_overhead.py [--spec workflows/examples/breast_cancer.yaml] [--repeats 3]
       [--cpus 2] [--set cv.folds=3 ...] [--out benchmarks/out]
Prints a markdown table; paste it into benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def timed(cmd: list[str], env: dict[str, str]) -> float:
    tick = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - tick
    if done.returncode != 0:
        raise SystemExit(f"failed ({done.returncode}): {' '.join(cmd)}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", default="workflows/examples/breast_cancer.yaml")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cpus", type=int, default=2, help="CPUs of the desktop cluster (local runs use all of this machine's)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/out"))
    args = ap.parse_args()

    bin_dir = Path(sys.executable).parent
    foldwise = [str(bin_dir / "foldwise")]
    ray_cli = [str(bin_dir / "ray")]
    base = Path(tempfile.mkdtemp(prefix="fw-bench-", dir="/tmp"))
    (base / "token").write_text(secrets.token_hex(32))
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "MLFLOW_TRACKING_URI")}
    env |= {"RAY_AUTH_TOKEN_PATH": str(base / "token"), "RAY_AUTH_MODE": "token"}
    dash = free_port()
    sets = [x for kv in args.overrides for x in ("--set", kv)]
    job_args = ["--no-cache", "--no-progress", *sets]
    times: dict[str, list[float]] = {"local foldwise run": [], "foldwise submit --wait": [], "ray job submit": []}
    try:
        up = subprocess.run([*foldwise, "cluster", "up", "--dir", str(base / "c"), "--ray-port", str(free_port()),
                             "--dashboard-port", str(dash), "--mlflow-port", str(free_port()), "--cpus", str(args.cpus),
                             "--temp-dir", str(base / "ray")], cwd=REPO, env=env, capture_output=True, text=True)
        if up.returncode != 0:
            raise SystemExit(f"cluster up failed:\n{up.stdout}\n{up.stderr}")
        address = f"http://127.0.0.1:{dash}"
        for i in range(args.repeats):
            times["local foldwise run"].append(timed(
                [*foldwise, "run", args.spec, *job_args, "--tracking-uri", f"sqlite:///{base}/local.db",
                 "--out", str(base / f"local-{i}")], env))
            times["foldwise submit --wait"].append(timed(
                [*foldwise, "submit", args.spec, "--address", address, "--wait", "--", *job_args], env))
            times["ray job submit"].append(timed(
                [*ray_cli, "job", "submit", "--address", address, "--working-dir", ".", "--",
                 "foldwise", "run", args.spec, *job_args], env))
    finally:
        subprocess.run([*foldwise, "cluster", "down", "--dir", str(base / "c")], cwd=REPO, env=env,
                       capture_output=True, text=True)
        shutil.rmtree(base, ignore_errors=True)

    med = {k: statistics.median(v) for k, v in times.items()}
    rows = [
        "| what | median s | runs (s) | vs ray job submit | vs local run |",
        "|---|---:|---|---:|---:|",
    ]
    for k, v in times.items():
        rows.append(f"| {k} | {med[k]:.1f} | {', '.join(f'{x:.1f}' for x in v)} | "
                    f"{med[k] / med['ray job submit']:.2f} | {med[k] / med['local foldwise run']:.2f} |")
    header = (f"`benchmarks/submit_overhead.py --spec {args.spec} --repeats {args.repeats} --cpus {args.cpus}"
              f"{''.join(' --set ' + s for s in args.overrides)}` on {platform.node()} ({os.cpu_count()} cores)")
    print(header + "\n\n" + "\n".join(rows))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "submit_overhead.json").write_text(json.dumps({"times": times, "median": med, "spec": args.spec,
                                                               "overrides": args.overrides}, indent=2))


if __name__ == "__main__":
    main()
