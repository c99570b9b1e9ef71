"""Image files for image datasets: where they are, reading them with OpenCV, the built-in digits set.

An image dataset is an ordinary CSV/Parquet table with one column of image paths
(`data.image`). Relative paths are relative to the folder of the table that holds them,
so a dataset folder can be moved or mounted anywhere. Local files are read with
`cv2.imread`; URIs (s3://, gs://, ...) are fetched with fsspec and decoded with
`cv2.imdecode`. Every node of a cluster must be able to read the same paths (a shared
disk or an object store): fold tasks read the images themselves, by path.

`sklearn:digits_images` writes scikit-learn's bundled 8x8 digits as PNG files plus a
`train.csv` into a cache folder once (`$FOLDWISE_DATA`, else `~/.cache/foldwise/datasets`),
so examples and tests need no download.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from pathlib import Path

import numpy as np
import pandas as pd

IMAGE_DATASETS = ("digits_images",)
_DIGITS_VERSION = "v1"  # bump when the files written change


class ImageReadError(ValueError):
    """An image path that cannot be read or decoded (names the path)."""


def cv2_module():  # noqa: ANN201 - the cv2 module
    try:
        import cv2
    except ImportError as e:
        raise ImportError("image datasets need OpenCV: pip install 'foldwise[images]'") from e
    return cv2


def data_home() -> Path:
    """Where built-in image datasets are written: $FOLDWISE_DATA, else the user's cache folder."""
    explicit = os.environ.get("FOLDWISE_DATA")
    if explicit:
        return Path(explicit).expanduser().resolve()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "foldwise" / "datasets"


def builtin_table(name: str) -> Path:
    """The table of a built-in image dataset, written on first use (idempotent, safe to race)."""
    if name == "digits_images":
        return write_digits_images(data_home())
    raise KeyError(name)


def write_digits_images(home: Path) -> Path:
    """sklearn's 1797 digits as 8x8 grayscale PNGs (0..16 scaled to 0..255) + train.csv (image, target).

    Written into a temporary folder and renamed into place, so concurrent callers (the
    driver's check and the prepare task) never see a half-written dataset.
    """
    from sklearn.datasets import load_digits

    cv2 = cv2_module()

    folder = home / f"digits_images-{_DIGITS_VERSION}"
    table = folder / "train.csv"
    if table.exists():
        return table
    home.mkdir(parents=True, exist_ok=True)
    tmp = home / f".digits_images-{uuid.uuid4().hex}.tmp"
    (tmp / "images").mkdir(parents=True)
    try:
        digits = load_digits()
        pixels = np.clip(np.rint(digits.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
        names = []
        for i, img in enumerate(pixels):
            name = f"images/{i:05d}.png"
            if not cv2.imwrite(str(tmp / name), img):
                raise OSError(f"could not write {tmp / name}")
            names.append(name)
        pd.DataFrame({"image": names, "target": digits.target.astype(np.int64)}).to_csv(tmp / "train.csv", index=False)
        try:
            os.rename(tmp, folder)
        except OSError:  # another process finished first: theirs is identical
            if not table.exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return table


def table_folder(source: str) -> str:
    """The folder relative image paths in `source` are relative to (a local path or a URI prefix)."""
    if source.startswith("sklearn:"):
        return str(builtin_table(source.removeprefix("sklearn:")).parent)
    if "://" in source:
        return source.rsplit("/", 1)[0]
    return str(Path(source).resolve().parent)


def resolve_paths(values: pd.Series, folder: str) -> np.ndarray:
    """Column values -> absolute paths / URIs (object array). Absolute paths and URIs are kept."""
    out = np.empty(len(values), dtype=object)
    for i, v in enumerate(values.to_numpy()):
        text = str(v)
        if "://" in text or os.path.isabs(text):
            out[i] = text
        elif "://" in folder:
            out[i] = f"{folder}/{text}"
        else:
            out[i] = os.path.join(folder, text)
    return out


def missing_paths(paths: np.ndarray) -> list[int]:
    """Row positions whose local file does not exist (URIs are not checked here: too costly)."""
    return [i for i, p in enumerate(paths) if "://" not in p and not os.path.isfile(p)]


def stamp(paths: np.ndarray) -> str:
    """What identifies the images' content cheaply: every path with its size and mtime."""
    h = hashlib.sha256()
    for p in paths:
        h.update(p.encode())
        if "://" not in p:
            try:
                st = os.stat(p)
                h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
            except OSError:
                h.update(b"missing")
    return h.hexdigest()[:16]


def read_image(path: str, channels: int) -> np.ndarray:
    """HxWxC uint8 (C = 1 or 3, RGB order); 16-bit images are scaled to 8 bits."""
    cv2 = cv2_module()

    flag = cv2.IMREAD_GRAYSCALE if channels == 1 else cv2.IMREAD_COLOR
    if "://" in path:
        import fsspec

        try:
            with fsspec.open(path, "rb") as f:
                buf = np.frombuffer(f.read(), dtype=np.uint8)
        except (OSError, ValueError) as e:
            raise ImageReadError(f"cannot read image {path!r}: {e}") from None
        img = cv2.imdecode(buf, flag | cv2.IMREAD_ANYDEPTH)
    else:
        img = cv2.imread(path, flag | cv2.IMREAD_ANYDEPTH)
    if img is None:
        raise ImageReadError(f"cannot read image {path!r} (missing, or not an image OpenCV can decode)")
    if img.dtype == np.uint16:
        img = (img / 257.0).round().astype(np.uint8)
    elif img.dtype != np.uint8:
        img = np.clip(img, 0, 255).astype(np.uint8)
    if img.ndim == 2:
        img = img[:, :, None]
    elif channels == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    return img
