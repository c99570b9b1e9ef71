"""Image pipelines end to end: the digits_cnn example on the session Ray, MLflow's nested fold runs,
checkpoints, test predictions averaged over folds, logical-GPU scheduling, bad specs exit 2."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from tests.conftest import EXAMPLES, REPO, store_state

torch = pytest.importorskip("torch")
cv2 = pytest.importorskip("cv2")
pytest.importorskip("albumentations")

SPEC = EXAMPLES / "digits_cnn.yaml"


@pytest.fixture(scope="module")
def digits_run(ray_cluster, session_dir):
    """The example exactly as shipped (5 folds, 8 epochs), once."""
    from foldwise.workflows.commands.run import run_cv

    uri = f"sqlite:///{session_dir / 'images.db'}"
    return run_cv(SPEC, out=session_dir / "digits-out", tracking_uri=uri), uri


def test_example_reaches_the_promised_accuracy(digits_run) -> None:
    result, _ = digits_run
    s = result.summary
    assert s["task"] == "multiclass" and s["metric"] == "accuracy" and s["rows"]["features"] == 0
    assert s["models"]["cnn"]["cv_score"] >= 0.95, s["models"]["cnn"]["fold_scores"]
    assert s["ensemble"]["cv_score"] == pytest.approx(s["models"]["cnn"]["cv_score"])
    oof = result.oof
    assert sorted(oof["fold"].unique()) == [0, 1, 2, 3, 4] and len(oof) == 1797 and oof["row"].is_unique
    probs = oof[[f"cnn__{c}" for c in range(10)]].to_numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-9)
    print(f"digits_cnn example: cv accuracy {s['models']['cnn']['cv_score']:.4f}, wall {s['wall_seconds']:.1f}s")


def test_each_fold_has_a_nested_run_with_epoch_metrics_and_a_checkpoint(digits_run, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    from foldwise.tasks.data import DataConfig, prepare_data
    from foldwise.tasks.models import FitContext, create_model
    from foldwise.tasks.models.torch_image import make_network
    from foldwise.workflows.pipeline.plan import model_config
    from foldwise.workflows.pipeline.spec import load_spec
    from foldwise.workflows.tracking.tracker import RunReader

    result, uri = digits_run
    reader, client = RunReader(uri), MlflowClient(uri)
    (model_run,) = reader.children(result.run_id)
    assert model_run.name == "cnn"
    folds = sorted(reader.children(model_run.run_id), key=lambda r: int(r.tags["foldwise.fold"]))
    assert [f.name for f in folds] == [f"cnn-fold{k}" for k in range(5)]
    epochs = yaml.safe_load(SPEC.read_text())["models"][0]["params"]["epochs"]
    fold_scores = result.summary["models"]["cnn"]["fold_scores"]
    for k, run in enumerate(folds):
        assert run.status == "FINISHED" and run.metrics["fold_score"] == pytest.approx(fold_scores[k])
        for key in ("train_loss", "valid_loss", "valid_accuracy", "lr", "train_images_per_second"):
            steps = sorted(m.step for m in client.get_metric_history(run.run_id, key))
            assert steps == list(range(1, epochs + 1)), key
        losses = reader.history(run.run_id, "valid_loss")
        assert run.metrics["best_epoch"] == int(np.argmin(losses)) + 1  # picked on the inner split
        assert "inner-split" in run.params["epoch_selection"] and run.tags["foldwise.device"] == "cpu"
    assert reader.history(model_run.run_id, "best_epoch") == [f.metrics["best_epoch"] for f in folds]

    # fold 0's checkpoint, restored, reproduces fold 0's out-of-fold predictions
    got = reader.download(folds[0].run_id, "checkpoint", tmp_path)
    saved = torch.load(got / "best.pt", weights_only=True)
    assert saved["meta"]["best_epoch"] == folds[0].metrics["best_epoch"]
    spec = load_spec(SPEC)
    config = model_config(spec.models[0])
    data = prepare_data(DataConfig(train=spec.data.train, target="target", image="image"))
    model = create_model(config, FitContext(task="multiclass", n_classes=10, categorical=(), seed=spec.cv.seed,
                                            image_column="image"))
    model.net = make_network(model.p, 10)
    model.net.load_state_dict(saved["state_dict"])
    model.net.eval()
    rows = result.oof.index[result.oof["fold"] == 0].to_numpy()
    pred = model.predict(pd.DataFrame({"image": data.images[rows]}))
    np.testing.assert_allclose(pred, result.oof.loc[rows, [f"cnn__{c}" for c in range(10)]].to_numpy(), atol=1e-5)


@pytest.fixture(scope="module")
def csv_run(ray_cluster, session_dir):
    """A CSV + test CSV whose image paths are relative to the files; test predictions averaged over folds."""
    from foldwise.tasks.data import DataConfig, prepare_data
    from foldwise.workflows.commands.run import run_cv

    digits = prepare_data(DataConfig(train="sklearn:digits_images", target="target", image="image"))
    d = session_dir / "img-csv"
    (d / "pics").mkdir(parents=True)
    rows = []
    for i in range(360):
        shutil.copy(digits.images[i], d / "pics" / f"{i}.png")
        rows.append({"id": 1000 + i, "path": f"pics/{i}.png", "digit": int(digits.y[i])})
    frame = pd.DataFrame(rows)
    frame.iloc[:300].to_csv(d / "train.csv", index=False)
    frame.iloc[300:].drop(columns=["digit"]).to_csv(d / "test.csv", index=False)
    spec = {"name": "img-csv", "data": {"train": "train.csv", "test": "test.csv", "target": "digit", "id": "id",
                                        "image": "path"},
            "metric": "accuracy", "cv": {"folds": 3, "seed": 1},
            "models": [{"name": "cnn", "type": "torch_image",
                        "params": {"channels": 1, "image_size": 8, "width": 8, "blocks": 2, "epochs": 3,
                                   "batch_size": 32, "lr": 0.003, "select_epoch": "last"},
                        "augment": {"train": [{"Affine": {"rotate": [-5, 5], "p": 0.5}}]}, "tta": ["hflip"]}]}
    (d / "spec.yaml").write_text(yaml.safe_dump(spec))
    out = run_cv(d / "spec.yaml", out=d / "out", tracking_uri=f"sqlite:///{session_dir / 'images.db'}")
    return out, d


def test_test_predictions_are_the_mean_over_folds(csv_run) -> None:
    result, d = csv_run
    folds = sorted([r for r in result.fold_results if r.model == "cnn"], key=lambda r: r.fold)
    assert len(folds) == 3 and all(r.test.shape == (60, 10) for r in folds)
    assert all(r.training.best_epoch == 3 and "fixed" in r.training.selection for r in folds)
    test = pd.read_parquet(result.summary["outputs"]["test_predictions"])
    np.testing.assert_allclose(test[[f"cnn__{c}" for c in range(10)]].to_numpy(),
                               np.mean([r.test for r in folds], axis=0), atol=1e-12)
    sub = pd.read_csv(result.summary["outputs"]["submission"])
    assert list(sub.columns) == ["id", *map(str, range(10))] and sub["id"].tolist() == list(range(1300, 1360))
    assert result.summary["rows"] == {"train": 300, "test": 60, "features": 0}


def test_cached_rerun_logs_the_fold_runs_again_and_an_edited_image_changes_the_key(csv_run, session_dir) -> None:
    from foldwise import run_cv
    from foldwise.tasks.data import read_table
    from foldwise.workflows.pipeline.dag import node_keys
    from foldwise.workflows.pipeline.inputs import validate_inputs
    from foldwise.workflows.pipeline.plan import model_config
    from foldwise.workflows.pipeline.provenance import code_version
    from foldwise.workflows.pipeline.spec import load_spec
    from foldwise.workflows.tracking.tracker import RunReader

    first, d = csv_run
    uri = f"sqlite:///{session_dir / 'images.db'}"
    again = run_cv(d / "spec.yaml", out=d / "out2", tracking_uri=uri)
    assert again.summary["models"]["cnn"]["cached"] == [True] * 3
    assert again.summary["models"]["cnn"]["fold_scores"] == first.summary["models"]["cnn"]["fold_scores"]
    reader = RunReader(uri)
    (child,) = reader.children(again.run_id)
    assert sorted(r.name for r in reader.children(child.run_id)) == ["cnn-fold0", "cnn-fold1", "cnn-fold2"]

    spec = load_spec(d / "spec.yaml")
    models = [model_config(m) for m in spec.models]

    def keys():  # noqa: ANN202
        return node_keys(spec, validate_inputs(spec), models, code_version(models))

    before = keys()
    image = d / read_table(str(d / "train.csv"))["path"].iloc[0]
    image.write_bytes(cv2.imencode(".png", np.zeros((8, 8), np.uint8))[1].tobytes())  # same path, new content
    after = keys()
    assert after.data != before.data and after.folds[("cnn", 0)] != before.folds[("cnn", 0)]


# --------------------------------------------------------------------------- logical GPUs


GPU_SCRIPT = textwrap.dedent("""
    import json, shutil, sys, tempfile
    import ray
    temp = tempfile.mkdtemp(prefix="fwray-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    ray.init(address="local", num_cpus=4, num_gpus=4, include_dashboard=False, logging_level="ERROR",
             log_to_driver=True, _temp_dir=temp)
    from foldwise.workflows.commands.run import run_cv
    seen = {}
    fast = [f"data.train={sys.argv[3]}", "models.0.params.epochs=1", "models.0.params.image_size=8", "models.0.params.width=8",
            "models.0.params.select_epoch=last", "models.0.params.checkpoint=false"]
    # 6 folds, 8 CPU slots, 4 GPUs: the GPUs bound the folds at once. Every GPU fold starts a fresh worker.
    r = run_cv(sys.argv[1], overrides=fast + ["cv.folds=6", "models.0.resources.cpus=0.5", "models.0.resources.gpus=1"],
               out=f"{sys.argv[2]}/whole", tracking_uri=f"sqlite:///{sys.argv[2]}/gpu.db", no_cache=True)
    seen["whole"] = [dict(fold=f.fold, started=f.started, ended=f.ended, visible=f.training.visible_devices,
                          device=f.training.device, notes=list(f.training.notes), score=f.score)
                     for f in r.fold_results]
    # Half a GPU per task, through the same executor path (light tasks: no torch import per fresh worker)
    import os, time
    from foldwise.workflows.engine.executor import RayExecutor, Slot
    def hold(seconds):
        started = time.time()
        time.sleep(seconds)
        return dict(pid=os.getpid(), visible=os.environ.get("CUDA_VISIBLE_DEVICES"), started=started, ended=time.time())
    ex = RayExecutor()
    seen["half"] = [ex.get(h) for h in [ex.submit(hold, 3.0, slot=Slot(cpus=1, gpus=0.5)) for _ in range(4)]]
    # one after another: GPU tasks each get a fresh process (CUDA binds a process to its first GPU); CPU tasks reuse
    seen["gpu_pids"] = [ex.get(ex.submit(hold, 0.0, slot=Slot(cpus=1, gpus=1)))["pid"] for _ in range(3)]
    seen["cpu_pids"] = [ex.get(ex.submit(hold, 0.0, slot=Slot(cpus=1)))["pid"] for _ in range(3)]
    ray.shutdown()
    shutil.rmtree(temp, ignore_errors=True)
    json.dump(seen, open(f"{sys.argv[2]}/seen.json", "w"))
""")


def _overlaps(folds: list[dict]) -> list[list[dict]]:
    """For each fold's start instant, the folds running then (start <= t < end)."""
    return [[g for g in folds if g["started"] <= f["started"] < g["ended"]] for f in folds]


@pytest.fixture(scope="module")
def logical_gpus(tmp_path_factory):
    """6 folds (and a few light tasks) on a local Ray with 4 logical GPUs (this machine has none), in its
    own process (a process can ray.init once, and the session cluster has no GPUs)."""
    from foldwise.tasks.data import DataConfig, prepare_data

    d = tmp_path_factory.mktemp("gpus")
    digits = prepare_data(DataConfig(train="sklearn:digits_images", target="target", image="image"))
    small = d / "small.csv"  # 240 digits by absolute path: the scheduling is the point, not the model
    pd.DataFrame({"image": digits.images[:240], "target": digits.y[:240]}).to_csv(small, index=False)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"RAY_DEDUP_LOGS": "0"}
    proc = subprocess.run([sys.executable, "-c", GPU_SCRIPT, str(SPEC), str(d), str(small)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=420)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((d / "seen.json").read_text()), proc.stderr


def test_one_gpu_per_fold_at_most_four_at_once_each_on_its_own_gpu(logical_gpus) -> None:
    seen, stderr = logical_gpus
    folds = seen["whole"]
    assert sorted(f["fold"] for f in folds) == list(range(6))
    assert all(f["visible"] in {"0", "1", "2", "3"} for f in folds), [f["visible"] for f in folds]
    running = _overlaps(folds)
    assert max(len(r) for r in running) <= 4
    assert max(len(r) for r in running) >= 2, "no two folds ever ran at once"
    for group in running:  # folds that run at the same time see different GPUs
        ids = [g["visible"] for g in group]
        assert len(ids) == len(set(ids)), ids
    # torch saw no CUDA, so every fold trained on the CPU and said so (log and training notes)
    assert all(f["device"] == "cpu" and "falling back to CPU" in f["notes"][0] for f in folds)
    assert "CUDA_VISIBLE_DEVICES=" in folds[0]["notes"][0] and "falling back to CPU" in stderr


def test_gpu_tasks_never_reuse_a_worker_process(logical_gpus) -> None:
    seen, _ = logical_gpus
    assert len(set(seen["gpu_pids"])) == 3, seen["gpu_pids"]  # one after another, yet 3 processes
    assert len(set(seen["cpu_pids"])) < 3, seen["cpu_pids"]  # CPU tasks do reuse warm workers


def test_half_a_gpu_per_task_two_tasks_share_one(logical_gpus) -> None:
    seen, _ = logical_gpus
    tasks = seen["half"]
    assert all(t["visible"] in {"0", "1", "2", "3"} for t in tasks)
    running = _overlaps(tasks)
    for group in running:
        ids = [g["visible"] for g in group]
        assert max(ids.count(i) for i in set(ids)) <= 2, ids  # never three on one GPU
    assert any(len(g) > len({x["visible"] for x in g}) for g in running), "no GPU was ever shared by two tasks"


# --------------------------------------------------------------------------- the spec


def _write(tmp_path: Path, name: str, change) -> Path:  # noqa: ANN001
    spec = yaml.safe_load(SPEC.read_text())
    change(spec)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _set(path: str, value):  # noqa: ANN001, ANN202
    def change(spec: dict) -> None:
        node = spec
        *parts, last = path.split(".")
        for p in parts:
            node = node[int(p)] if isinstance(node, list) else node[p]
        node[last] = value
    return change


BAD = {
    "unknown transform": (_set("models.0.augment.train", [{"HorizontalFlipp": {"p": 0.5}}]),
                          "spec key 'models.0': augment.train[0]: unknown albumentations transform 'HorizontalFlipp'; "
                          "did you mean HorizontalFlip"),
    "unknown argument": (_set("models.0.augment.train", [{"HorizontalFlip": {"p": 0.5}}, {"Affine": {"rotat": 5}}]),
                         "augment.train[1]: Affine has no argument 'rotat' (valid: scale"),
    "bad value": (_set("models.0.augment.valid", [{"Affine": {"rotate": "lots"}}]),
                  "augment.valid[0]: Affine: rotate"),
    "native dict, bad name": (_set("models.0.augment.train",
                                   {"transform": {"__class_fullname__": "Compose", "p": 1.0,
                                                  "transforms": [{"__class_fullname__": "Blurr", "p": 0.5}]}}),
                              "augment.train[0]: unknown albumentations transform 'Blurr'"),
    "unknown tta": (_set("models.0.tta", ["hflip", "mirror"]), "tta[1]: unknown TTA transform 'mirror' (valid: hflip"),
    "size changing pipeline": (_set("models.0.augment.train", [{"CenterCrop": {"height": 8, "width": 8}}]),
                               "augment.train: turns a 16x16 image into 8x8"),
    "bad param": (_set("models.0.params.optimizer", "lion"),
                  "models.0.params (cnn): optimizer: 'lion' is not one of adamw, adam, sgd"),
    "no image column": (_set("data.image", None), "models.0 (cnn): type torch_image needs data.image"),
    "augment on a tabular model": (lambda s: s["models"].append(
        {"name": "lr", "type": "sklearn", "estimator": "sklearn.linear_model.LogisticRegression",
         "augment": {"train": ["HorizontalFlip"]}}), "augment and tta are for image models (type torch_image)"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_image_specs_exit_2_naming_the_problem(case: str, tmp_path: Path, capsys) -> None:
    from foldwise.workflows.cli.main import main

    change, message = BAD[case]
    spec = _write(tmp_path, case.replace(" ", "_"), change)
    db, out = tmp_path / "m.db", tmp_path / "out"
    before = store_state(db)
    code = main(["run", str(spec), "--tracking-uri", f"sqlite:///{db}", "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert message in err[0], err[0]
    assert store_state(db) == before and not out.exists()


def test_augment_spec_round_trips_through_the_effective_spec(tmp_path: Path) -> None:
    from foldwise.tasks import augment
    from foldwise.workflows.pipeline.spec import load_spec, to_yaml

    spec = load_spec(SPEC)
    compact = spec.models[0].augment.model_dump()
    # the effective spec written with the outputs loads back to the same pipelines
    (tmp_path / "effective.yaml").write_text(to_yaml(spec))
    again = load_spec(tmp_path / "effective.yaml")
    assert again.models[0].augment.model_dump() == compact and again.models[0].tta == spec.models[0].tta
    # albumentations' own serialisation of the pipeline, pasted into the spec, is the same pipeline
    native = augment.serialise(augment.build(compact["train"]))
    pasted = _write(tmp_path, "native", _set("models.0.augment.train", native))
    loaded = load_spec(pasted).models[0].augment.model_dump()["train"]
    assert augment.serialise(augment.build(loaded)) == native
