"""Image data, augmentation pipelines and the torch_image adapter, without Ray or MLflow."""

from __future__ import annotations

import dataclasses
import io
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from foldwise.tasks import augment
from foldwise.tasks.data import DataConfig, DataError, inspect_data, prepare_data
from foldwise.tasks.folds import assign_folds
from foldwise.tasks.images import read_image
from foldwise.tasks.models import FitContext, ModelConfig, create_model
from foldwise.tasks.test_prediction import predict_test
from foldwise.tasks.train import train_fold

torch = pytest.importorskip("torch")
cv2 = pytest.importorskip("cv2")
pytest.importorskip("albumentations")

# Tiny and fast: native 8x8 digits (no resize, so file flips equal tensor flips exactly).
TINY = {"channels": 1, "image_size": 8, "width": 8, "blocks": 2, "epochs": 3, "batch_size": 64, "lr": 3e-3}


@pytest.fixture(scope="module")
def digits():
    return prepare_data(DataConfig(train="sklearn:digits_images", target="target", image="image"))


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory) -> Path:
    """A CSV + test CSV with relative image paths in a subfolder, plus a tabular column."""
    from sklearn.datasets import load_digits

    d = tmp_path_factory.mktemp("imgcsv")
    (d / "pics").mkdir()
    digits = load_digits()
    rows = []
    for i in range(120):
        name = f"pics/{i:03d}.png"
        cv2.imwrite(str(d / name), (digits.images[i] * 16).astype(np.uint8))
        rows.append({"id": i, "file": name, "size": float(digits.images[i].sum()), "label": int(digits.target[i] % 2)})
    frame = pd.DataFrame(rows)
    frame.iloc[:100].to_csv(d / "train.csv", index=False)
    frame.iloc[100:].drop(columns=["label"]).to_csv(d / "test.csv", index=False)
    return d


# --------------------------------------------------------------------------- data


def test_digits_images_are_sklearns_digits_as_png(digits) -> None:
    from sklearn.datasets import load_digits

    ref = load_digits()
    assert len(digits.images) == len(ref.target) == 1797
    assert digits.X.shape == (1797, 0) and digits.columns == ()  # the image column is not a feature
    np.testing.assert_array_equal(digits.y, ref.target)
    table = Path(digits.images[0]).parents[1] / "train.csv"
    assert table.is_file() and str(table).startswith(os.environ["FOLDWISE_DATA"])
    for i in (0, 5, 1796):
        img = read_image(digits.images[i], 1)[:, :, 0]
        np.testing.assert_array_equal(img, np.rint(ref.images[i] * 255 / 16).astype(np.uint8))
    # a second read reuses the files (nothing rewritten)
    mtime = os.stat(digits.images[0]).st_mtime_ns
    again = prepare_data(DataConfig(train="sklearn:digits_images", target="target", image="image"))
    assert os.stat(again.images[0]).st_mtime_ns == mtime and again.fingerprint == digits.fingerprint


def test_image_paths_are_relative_to_the_table_and_tabular_columns_stay_features(image_dir: Path) -> None:
    config = DataConfig(train=str(image_dir / "train.csv"), test=str(image_dir / "test.csv"), target="label", id="id",
                        image="file")
    summary = inspect_data(config)
    assert summary.columns == ("size",) and summary.image_stamp
    data = prepare_data(config)
    assert data.columns == ("size",) and data.categorical == ()
    assert data.images[3] == str(image_dir / "pics" / "003.png")
    assert data.test_images[0] == str(image_dir / "pics" / "100.png") and len(data.test_images) == 20
    # without data.image the same column would be a 100-level categorical feature
    plain = prepare_data(DataConfig(train=str(image_dir / "train.csv"), target="label", id="id"))
    assert "file" in plain.categorical


def test_missing_image_file_is_a_data_error_naming_the_row(image_dir: Path, tmp_path: Path) -> None:
    frame = pd.read_csv(image_dir / "train.csv")
    frame.loc[7, "file"] = "pics/nope.png"
    bad = image_dir / "train_missing.csv"
    frame.to_csv(bad, index=False)
    with pytest.raises(DataError, match=r"data.image: image column 'file' row 7: file 'pics/nope.png' does not exist"):
        inspect_data(DataConfig(train=str(bad), target="label", image="file"))
    with pytest.raises(DataError, match=r"data.image: column 'img' is not in"):
        inspect_data(DataConfig(train=str(image_dir / "train.csv"), target="label", image="img"))


def test_changing_an_image_changes_the_stamp_and_fingerprint(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(cv2.imencode(".png", np.zeros((4, 4), np.uint8))[1].tobytes())
    pd.DataFrame({"img": ["a.png"] * 4, "y": [0, 1, 0, 1]}).to_csv(tmp_path / "t.csv", index=False)
    config = DataConfig(train=str(tmp_path / "t.csv"), target="y", image="img")
    before = (inspect_data(config).image_stamp, prepare_data(config).fingerprint)
    (tmp_path / "a.png").write_bytes(cv2.imencode(".png", np.full((5, 5), 9, np.uint8))[1].tobytes())
    after = (inspect_data(config).image_stamp, prepare_data(config).fingerprint)
    assert before[0] != after[0] and before[1] != after[1]


# --------------------------------------------------------------------------- augmentation pipelines


COMPACT = [
    {"HorizontalFlip": {"p": 0.5}},
    {"Affine": {"rotate": [-10, 10], "p": 0.3}},
    {"OneOf": {"p": 0.4, "transforms": ["Blur", {"GaussNoise": {"std_range": [0.05, 0.1]}}]}},
    "ToGray",
]


def test_compact_and_albumentations_forms_round_trip() -> None:
    import albumentations as A  # noqa: N812

    built = augment.build(COMPACT, seed=0)
    assert [type(t).__name__ for t in built.transforms] == ["HorizontalFlip", "Affine", "OneOf", "ToGray"]
    assert built.transforms[1].p == 0.3 and type(built.transforms[2].transforms[1]).__name__ == "GaussNoise"
    native = augment.serialise(built)  # albumentations' own dict ...
    again = augment.build(native, seed=0)  # ... is accepted verbatim and builds the same pipeline
    assert augment.serialise(again) == native
    assert augment.serialise(augment.build(native["transform"], seed=0)) == native  # the bare 'transform' part too
    assert augment.serialise(augment.build(A.to_dict(built), seed=0)) == native  # with tuples, as A.to_dict gives
    # the same seed gives the same augmented image
    img = np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8)
    out1 = augment.build(COMPACT, seed=3)(image=img)["image"]
    out2 = augment.build(native, seed=3)(image=img)["image"]
    np.testing.assert_array_equal(out1, out2)


@pytest.mark.parametrize("pipeline, message", [
    ([{"HorizontalFlipp": {"p": 0.5}}], r"unknown albumentations transform 'HorizontalFlipp'; did you mean HorizontalFlip"),
    ([{"Affine": {"rotatee": 5}}], r"Affine has no argument 'rotatee' \(valid: scale, .*rotate"),
    ([{"HorizontalFlip": {"p": 2}}], r"HorizontalFlip: p: Input should be less than or equal to 1"),
    ([{"OneOf": {"transforms": [{"Blurr": {}}]}}], r"augment\[0\] OneOf.transforms\[0\]: unknown albumentations transform 'Blurr'"),
    ([{"Affine": 5}], r"Affine: arguments must be a mapping"),
    ({"__class_fullname__": "Nope"}, r"unknown albumentations transform 'Nope'"),
    ({"transform": {"p": 1}}, r"expected a list of transforms"),
    ("HorizontalFlip", r"expected a list of transforms"),
])
def test_bad_pipelines_name_the_transform(pipeline, message) -> None:
    with pytest.raises(augment.AugmentError, match=message):
        augment.build(pipeline)


def test_pipeline_output_must_keep_the_model_input_size() -> None:
    assert augment.check_pipeline_output([{"HorizontalFlip": {"p": 1.0}}], 16, 16, 1, "augment.train") is None
    problem = augment.check_pipeline_output([{"RandomCrop": {"height": 8, "width": 8}}], 16, 16, 1, "augment.train")
    assert problem and "turns a 16x16 image into 8x8" in problem
    assert augment.tta_problem(["rot90"], 16, 32) and augment.tta_problem(["hflip", "vflip"], 16, 32) is None
    with pytest.raises(augment.AugmentError, match=r"unknown TTA transform 'flip' \(valid: hflip"):
        augment.check_tta(["hflip", "flip"], "tta")


# --------------------------------------------------------------------------- the adapter


def _ctx(data, seed: int = 0, gpus: float = 0.0, threads: int = 1) -> FitContext:
    return FitContext(task=data.task, n_classes=data.n_classes, categorical=(), seed=seed, n_threads=threads,
                      gpus=gpus, image_column="image")


def _frame(paths) -> pd.DataFrame:
    return pd.DataFrame({"image": np.asarray(paths, dtype=object)})


@pytest.fixture(scope="module")
def fitted(digits):
    """One tiny model fitted on 600 digits (no TTA), reused by the TTA checks."""
    rows = np.arange(600)
    model = create_model(ModelConfig(name="cnn", type="torch_image", params=TINY), _ctx(digits))
    model.fit(_frame(digits.images[rows]), digits.y[rows])
    return model


def _with_tta(model, tta: tuple[str, ...]):
    clone = create_model(dataclasses.replace(model.config, tta=tta), model.ctx)
    clone.net, clone.y_mean, clone.y_std = model.net, model.y_mean, model.y_std
    return clone


def test_tta_averages_exactly_the_declared_views(digits, fitted, tmp_path: Path) -> None:
    paths = digits.images[600:640]
    views = {"hflip": lambda im: im[:, ::-1], "vflip": lambda im: im[::-1, :], "rot180": lambda im: im[::-1, ::-1]}
    files = {}
    for name, fn in views.items():
        out = []
        for i, p in enumerate(paths):
            target = tmp_path / f"{name}-{i}.png"
            cv2.imwrite(str(target), np.ascontiguousarray(fn(cv2.imread(p, cv2.IMREAD_GRAYSCALE))))
            out.append(str(target))
        files[name] = out
    plain = fitted.predict(_frame(paths))
    assert plain.shape == (40, 10) and np.allclose(plain.sum(axis=1), 1.0)
    on_files = {name: fitted.predict(_frame(f)) for name, f in files.items()}
    hflip = _with_tta(fitted, ("hflip",)).predict(_frame(paths))
    np.testing.assert_allclose(hflip, (plain + on_files["hflip"]) / 2, atol=1e-6)
    both = _with_tta(fitted, ("vflip", "rot180")).predict(_frame(paths))
    np.testing.assert_allclose(both, (plain + on_files["vflip"] + on_files["rot180"]) / 3, atol=1e-6)
    assert not np.allclose(hflip, plain, atol=1e-4)  # the view does change predictions on digits ...
    # ... and only through the declared transform: on left-right symmetric images hflip TTA changes nothing
    sym = []
    for i, p in enumerate(paths[:10]):
        img = cv2.imread(p, cv2.IMREAD_GRAYSCALE)
        img[:, 4:] = img[:, :4][:, ::-1]
        target = tmp_path / f"sym-{i}.png"
        cv2.imwrite(str(target), img)
        sym.append(str(target))
    np.testing.assert_allclose(_with_tta(fitted, ("hflip",)).predict(_frame(sym)), fitted.predict(_frame(sym)),
                               atol=1e-6)


def test_epoch_is_chosen_without_the_held_out_fold_and_runs_are_seeded(digits, tmp_path: Path) -> None:
    """Replace every held-out image with noise: the training history and weights are unchanged."""
    sub = np.arange(500)
    plan = assign_folds(digits.y[sub], None, "stratified", 3, 0)
    data = dataclasses.replace(digits, X=digits.X[sub], y=digits.y[sub], images=digits.images[sub].copy())
    params = {**TINY, "batch_size": 32, "epochs": 5}
    config = ModelConfig(name="cnn", type="torch_image", params=params, cpus=1)
    first = train_fold(data, plan, config, 0, "accuracy", 7)
    log = first.training
    assert log.best_epoch == int(np.argmin(log.history["valid_loss"])) + 1
    assert "inner-split" in log.selection and len(log.history["valid_accuracy"]) == params["epochs"]
    assert first.score > 0.5 and log.device == "cpu"

    noisy = data.images.copy()
    rng = np.random.default_rng(0)
    for j, row in enumerate(plan.valid_rows(0)):
        target = tmp_path / f"noise-{j}.png"
        cv2.imwrite(str(target), rng.integers(0, 255, (8, 8), dtype=np.uint8))
        noisy[row] = str(target)
    second = train_fold(dataclasses.replace(data, images=noisy), plan, config, 0, "accuracy", 7)
    assert second.training.history["valid_loss"] == log.history["valid_loss"]
    assert second.training.history["train_loss"] == log.history["train_loss"]
    assert second.training.checkpoint == log.checkpoint  # same seed, same weights, byte for byte
    assert not np.allclose(second.oof, first.oof)  # the held-out rows did change

    last = train_fold(data, plan, dataclasses.replace(config, params={**params, "select_epoch": "last"}), 0,
                      "accuracy", 7)
    assert last.training.best_epoch == params["epochs"] and "valid_loss" not in last.training.history
    assert "fixed" in last.training.selection


def test_checkpoint_restores_the_model_and_respects_the_size_cap(digits, fitted, tmp_path: Path) -> None:
    from foldwise.tasks.models.torch_image import load_weights, make_network

    blob = fitted.training_log().checkpoint
    saved = torch.load(io.BytesIO(blob), weights_only=True)
    assert saved["meta"]["arch"] == "cnn" and saved["meta"]["image_size"] == [8, 8]
    path = tmp_path / "best.pt"
    path.write_bytes(blob)
    p = {**fitted.p}
    net = make_network(p, 10)
    assert load_weights(net, str(path)).startswith(f"weights {path}: loaded {len(saved['state_dict'])} tensors")
    for k, v in net.state_dict().items():
        assert torch.equal(v, saved["state_dict"][k]), k
    fresh = create_model(fitted.config, fitted.ctx)
    fresh.net = net.eval()
    paths = digits.images[700:720]
    np.testing.assert_allclose(fresh.predict(_frame(paths)), fitted.predict(_frame(paths)), atol=1e-6)
    # a different head (2 classes) keeps the body and says what it skipped
    assert "skipped 2 whose name or shape differ" in load_weights(make_network(p, 2), str(path))
    # `weights:` in the params starts training from the file
    warm = create_model(ModelConfig(name="w", type="torch_image", params={**TINY, "weights": str(path), "epochs": 1}),
                        _ctx(digits))
    warm.fit(_frame(digits.images[:64]), digits.y[:64])
    assert any(n.startswith(f"weights {path}: loaded") for n in warm.training_log().notes)

    capped = create_model(ModelConfig(name="c", type="torch_image", params={**TINY, "epochs": 1,
                                                                            "checkpoint_max_mb": 0.001}), _ctx(digits))
    capped.fit(_frame(digits.images[:64]), digits.y[:64])
    log = capped.training_log()
    assert log.checkpoint is None and any("checkpoint not logged" in n and "checkpoint_max_mb=0.001" in n
                                          for n in log.notes)


def test_gpu_request_without_cuda_falls_back_to_cpu_and_says_so(digits, capsys) -> None:
    model = create_model(ModelConfig(name="g", type="torch_image", params=TINY, gpus=1), _ctx(digits, gpus=1))
    err = capsys.readouterr().err
    assert "falling back to CPU" in err and str(model.device) == "cpu"
    assert model.training_log().notes and "falling back to CPU" in model.training_log().notes[0]


def test_dataloader_workers_binary_task_and_csv_data(image_dir: Path) -> None:
    """One worker process (from the fold's CPUs), a binary target, a tabular column ignored by the CNN."""
    data = prepare_data(DataConfig(train=str(image_dir / "train.csv"), test=str(image_dir / "test.csv"),
                                   target="label", id="id", image="file"))
    plan = assign_folds(data.y, None, "stratified", 2, 0)
    config = ModelConfig(name="cnn", type="torch_image", params={**TINY, "epochs": 2}, cpus=2,
                         augment={"train": [{"HorizontalFlip": {"p": 0.5}}]}, tta=("hflip",))
    model = create_model(config, FitContext(task="binary", n_classes=2, categorical=(), seed=0, n_threads=2,
                                            image_column="file"))
    assert model._workers() == (1, 1)
    result = train_fold(data, plan, config, 1, "roc_auc", 0)
    assert result.oof.shape == (len(plan.valid_rows(1)),) and result.test is None  # the test set is predict_test's
    assert predict_test(data, plan, result).values.shape == (20,)
    assert np.all((result.oof >= 0) & (result.oof <= 1))


def test_bad_params_are_named() -> None:
    from foldwise.tasks.models.image_params import check_model, check_params

    assert "has no parameter(s) epoch " in check_params({"epoch": 3}) + " "
    assert "optimizer: 'lion' is not one of adamw, adam, sgd" in check_params({"optimizer": "lion"})
    assert "image_size" in check_params({"image_size": [8]})
    assert "weights: file" in check_params({"weights": "/nonexistent/w.pt"})
    try:
        import timm  # noqa: F401
    except ImportError:
        assert "needs timm installed" in check_params({"arch": "timm:resnet18"})
    assert "needs square images" in check_model({"image_size": [8, 16]}, None, ["rot90"])


def test_timm_architecture_when_installed(digits) -> None:
    """timm is optional: this runs where it is installed (random init; nothing downloaded)."""
    pytest.importorskip("timm")
    params = {**TINY, "arch": "timm:resnet18", "image_size": 32, "epochs": 1, "select_epoch": "last"}
    model = create_model(ModelConfig(name="t", type="torch_image", params=params), _ctx(digits))
    model.fit(_frame(digits.images[:64]), digits.y[:64])
    assert model.predict(_frame(digits.images[64:80])).shape == (16, 10)
