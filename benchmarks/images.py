"""torch_image: images/s per fold, and folds in parallel on Ray vs the plain loop over folds.

What a user would write instead is a `for fold in folds:` loop training one model after
another in one process; that loop (the same fold code, no Ray) is the baseline. On the
same data, folds and settings, one run measures:
- single fold: one fold alone, its training images/s (median over epochs) and wall time,
- sequential: the plain loop over all K folds in this process,
- foldwise: `run_cv` with K fold tasks on a local Ray, for each `--share` setting
  (gpus per fold on a GPU machine, e.g. 1 = one fold per GPU, 0.5 = two folds per GPU;
  on CPU the fold's cpus), wall time with Ray start-up reported apart, per-fold images/s,
  how many folds ran at once (from the fold tasks' start/end times) and the speed-up
  over the sequential loop.
Datasets: the digits example (`sklearn:digits_images`) and/or a synthetic set of RGB PNGs
(circles vs squares vs triangles, `--images` files of `--size` pixels) written to --out.

Usage (small, CPU):  python benchmarks/images.py --dataset synthetic --images 300 --size 32 --epochs 1 --folds 2
Real size (GPU box): python benchmarks/images.py --dataset both --images 20000 --size 128 --epochs 3 --folds 4 \
                       --batch-size 128 --cpus-per-fold 4 --share 1,0.5
Prints a markdown table (the device named) and writes <out>/images.json; paste into benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd


def device_name() -> str:
    import torch

    if torch.cuda.is_available():
        n = torch.cuda.device_count()
        return f"{n} x {torch.cuda.get_device_name(0)} (torch {torch.__version__}, CUDA {torch.version.cuda})"
    return f"CPU only: {platform.processor() or platform.machine()}, {os.cpu_count()} cores (torch {torch.__version__})"


def write_synthetic(folder: Path, n: int, size: int, seed: int = 0) -> Path:
    """n RGB PNGs of one filled shape on noise; the class is the shape. Returns the CSV."""
    import cv2

    table = folder / "train.csv"
    if table.exists() and len(pd.read_csv(table)) == n:
        return table
    (folder / "img").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        img = rng.integers(0, 80, (size, size, 3), dtype=np.uint8)
        label = int(rng.integers(0, 3))
        colour = tuple(int(c) for c in rng.integers(120, 255, 3))
        r = int(rng.integers(size // 6, size // 3))
        cx, cy = (int(v) for v in rng.integers(r, size - r, 2))
        if label == 0:
            cv2.circle(img, (cx, cy), r, colour, -1)
        elif label == 1:
            cv2.rectangle(img, (cx - r, cy - r), (cx + r, cy + r), colour, -1)
        else:
            pts = np.array([[cx, cy - r], [cx - r, cy + r], [cx + r, cy + r]], np.int32)
            cv2.fillPoly(img, [pts], colour)
        cv2.imwrite(str(folder / "img" / f"{i:06d}.png"), img)
        rows.append({"path": f"img/{i:06d}.png", "shape": label})
    pd.DataFrame(rows).to_csv(table, index=False)
    return table


def spec_for(dataset: str, table: Path | None, args: argparse.Namespace, share: float, gpu: bool) -> dict:
    params = {"epochs": args.epochs, "batch_size": args.batch_size, "lr": 0.003, "select_epoch": "last",
              "checkpoint": False}
    if dataset == "digits":
        data = {"train": "sklearn:digits_images", "target": "target", "image": "image"}
        params |= {"channels": 1, "image_size": 16, "width": 16, "blocks": 2}
    else:
        data = {"train": str(table), "target": "shape", "image": "path"}
        params |= {"channels": 3, "image_size": args.size, "width": args.width, "blocks": 3}
    resources = {"cpus": args.cpus_per_fold, "gpus": share} if gpu else {"cpus": share, "gpus": 0}
    return {"name": f"bench-images-{dataset}", "data": data, "task": "multiclass", "metric": "accuracy",
            "cv": {"scheme": "stratified", "folds": args.folds, "seed": 0},
            "models": [{"name": "cnn", "type": "torch_image", "params": params,
                        "augment": {"train": [{"HorizontalFlip": {"p": 0.5}}]}, "resources": resources}]}


def max_concurrent(results) -> int:  # noqa: ANN001
    return max(sum(1 for g in results if g.started <= f.started < g.ended) for f in results)


def images_per_second(result) -> float:  # noqa: ANN001
    return float(np.median(result.training.history["train_images_per_second"]))


def bench(dataset: str, table: Path | None, args: argparse.Namespace, gpu: bool, out: Path) -> list[dict]:
    import ray

    from foldwise import run_cv
    from foldwise.tasks.data import prepare_data
    from foldwise.tasks.train import train_fold
    from foldwise.workflows.pipeline.dag import fold_plan
    from foldwise.workflows.pipeline.inputs import validate_inputs
    from foldwise.workflows.pipeline.plan import model_config
    from foldwise.workflows.pipeline.spec import load_spec

    rows = []
    shares = [float(s) for s in args.share.split(",")]
    # the plain loop: same folds, same fold code, one after another in this process
    spec = load_spec(spec_for(dataset, table, args, shares[0], gpu))
    inputs = validate_inputs(spec)
    data = prepare_data(inputs.data)
    plan = fold_plan(spec, inputs)
    config = model_config(spec.models[0])
    # one core per fold in the loop on CPU would undersell it: give it all the CPUs a run gets
    config = dataclasses.replace(config, cpus=float(args.cpus_per_fold if gpu else os.cpu_count()))
    train_fold(data, plan, config, 0, inputs.metric, 0)  # warm-up (imports, cuDNN autotune)
    tick = time.perf_counter()
    single = train_fold(data, plan, config, 0, inputs.metric, 0)
    single_wall = time.perf_counter() - tick
    tick = time.perf_counter()
    loop = [single] + [train_fold(data, plan, config, k, inputs.metric, 0) for k in range(1, args.folds)]
    loop_wall = single_wall + time.perf_counter() - tick
    rows.append({"dataset": dataset, "how": "single fold (in process)", "share": "all", "wall_s": single_wall,
                 "img_per_s_per_fold": images_per_second(single), "concurrent": 1, "speedup": None,
                 "accuracy": single.score})
    rows.append({"dataset": dataset, "how": f"plain loop over {args.folds} folds", "share": "all",
                 "wall_s": loop_wall, "img_per_s_per_fold": float(np.median([images_per_second(r) for r in loop])),
                 "concurrent": 1, "speedup": 1.0, "accuracy": float(np.mean([r.score for r in loop]))})
    for share in shares:
        tick = time.perf_counter()
        temp = tempfile.mkdtemp(prefix="fwbench-", dir="/tmp")
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, logging_level="ERROR",
                 log_to_driver=False, _temp_dir=temp)
        startup = time.perf_counter() - tick
        try:
            # warm the workers once (torch import) so the timed run measures training, as a user's 2nd run would
            run_cv(spec_for(dataset, table, args, share, gpu) | {"cv": {"folds": 2, "seed": 0}},
                   out=out / "warm", tracking_uri=f"sqlite:///{out / 'bench.db'}", no_cache=True,
                   overrides=["models.0.params.epochs=1"])
            tick = time.perf_counter()
            result = run_cv(spec_for(dataset, table, args, share, gpu), out=out / f"{dataset}-{share}",
                            tracking_uri=f"sqlite:///{out / 'bench.db'}", no_cache=True)
            wall = time.perf_counter() - tick
        finally:
            ray.shutdown()
            shutil.rmtree(temp, ignore_errors=True)
        folds = list(result.fold_results)
        rows.append({"dataset": dataset, "how": f"foldwise, {args.folds} fold tasks on Ray",
                     "share": f"{'gpus' if gpu else 'cpus'}={share:g}/fold", "wall_s": wall,
                     "img_per_s_per_fold": float(np.median([images_per_second(r) for r in folds])),
                     "concurrent": max_concurrent(folds), "speedup": loop_wall / wall,
                     "accuracy": result.summary["models"]["cnn"]["cv_score"], "ray_startup_s": startup})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", choices=("digits", "synthetic", "both"), default="both")
    ap.add_argument("--images", type=int, default=2000, help="synthetic images")
    ap.add_argument("--size", type=int, default=64, help="synthetic image side (pixels)")
    ap.add_argument("--width", type=int, default=32, help="CNN width for the synthetic set")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--folds", type=int, default=4)
    ap.add_argument("--share", default=None,
                    help="comma list: gpus per fold on a GPU machine (default 1,0.5), cpus per fold on CPU (default 1)")
    ap.add_argument("--cpus-per-fold", type=float, default=4, help="cpus per fold task on a GPU machine")
    ap.add_argument("--out", default="benchmarks/out/images")
    args = ap.parse_args()
    os.environ.setdefault("FOLDWISE_DATA", str(Path(args.out).resolve() / "datasets"))
    import torch

    gpu = torch.cuda.is_available()
    args.share = args.share or ("1,0.5" if gpu else "1")
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    if args.dataset in ("digits", "both"):
        rows += bench("digits", None, args, gpu, out)
    if args.dataset in ("synthetic", "both"):
        table = write_synthetic(out / f"synthetic-{args.images}-{args.size}", args.images, args.size)
        rows += bench("synthetic", table, args, gpu, out)
    device = device_name()
    (out / "images.json").write_text(json.dumps({"device": device, "args": vars(args), "rows": rows}, indent=2))
    print(f"\n### torch_image on {device}\n")
    print(f"{args.folds} folds, {args.epochs} epochs, batch {args.batch_size}; synthetic: {args.images} images of "
          f"{args.size}x{args.size}\n")
    print("| dataset | how | share | wall s | train img/s per fold | folds at once | speed-up vs loop | CV acc |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        speed = f"{r['speedup']:.2f}x" if r["speedup"] is not None else ""
        print(f"| {r['dataset']} | {r['how']} | {r['share']} | {r['wall_s']:.1f} | {r['img_per_s_per_fold']:.0f} | "
              f"{r['concurrent']} | {speed} | {r['accuracy']:.3f} |")
    starts = [f"{r['ray_startup_s']:.1f}" for r in rows if "ray_startup_s" in r]
    print(f"\nRay start-up (not in the wall times): {', '.join(starts)} s")


if __name__ == "__main__":
    main()
