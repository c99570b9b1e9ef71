"""Shared storage: outputs (and anything else a run writes) on a local path or an fsspec URI.

On a cluster every node must see the same results, so outputs, the cache and Tune's
storage may live on `s3://`, `gs://` or any other fsspec URI as well as on a local (or
NFS) path. Writers stay simple: they write ordinary files into a local folder and
`publish` copies the finished folder to the URI in one step, so a failed run never leaves
half its files in the bucket. Credentials and endpoints come from the usual places
(`AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`/`AWS_ENDPOINT_URL`, instance roles,
`GOOGLE_APPLICATION_CREDENTIALS`, or `FSSPEC_S3_ENDPOINT_URL`-style fsspec settings).
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

OUTPUTS_ENV = "FOLDWISE_OUTPUTS"
DEFAULT_OUTPUTS = "outputs"


def is_uri(location: str | os.PathLike[str]) -> bool:
    """True for `scheme://...` locations other than plain local `file://` paths."""
    text = str(location)
    return "://" in text and not text.startswith("file://")


def outputs_root() -> str:
    """Where runs write when `--out` is not given: $FOLDWISE_OUTPUTS, else ./outputs.

    A cluster sets $FOLDWISE_OUTPUTS (to an s3:// URI or a shared path) so jobs submitted
    from a laptop leave their outputs where every node and the user can read them.
    """
    return os.environ.get(OUTPUTS_ENV) or DEFAULT_OUTPUTS


def join(root: str | os.PathLike[str], *parts: str) -> str:
    """`root/part/...` for a path or a URI (URIs always use '/')."""
    text = str(root)
    if is_uri(text):
        return "/".join([text.rstrip("/"), *(p.strip("/") for p in parts)])
    return str(Path(text, *parts))


def filesystem(uri: str) -> tuple[Any, str]:
    """(fsspec filesystem, path inside it) for a URI; names the package to install when missing."""
    import fsspec

    try:
        return fsspec.core.url_to_fs(uri)
    except ImportError as e:
        scheme = uri.split("://", 1)[0]
        hint = {"s3": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs"}.get(scheme)
        extra = f" (pip install {hint}, or pip install 'foldwise[cloud]')" if hint else ""
        raise StorageError(f"no filesystem for {scheme}:// URIs{extra}: {e}") from None
    except ValueError as e:  # fsspec: "Protocol not known"
        raise StorageError(f"no filesystem for {uri.split('://', 1)[0]}:// URIs: {e}") from None


class StorageError(RuntimeError):
    """A storage location that cannot be used (missing driver, no access)."""


def staging_folder(target: str | os.PathLike[str]) -> Path:
    """The local folder to write `target`'s files into: `target` itself (created) when local.

    For a URI it is a fresh temporary folder; `publish_folder` uploads and removes it, and
    it is removed at exit in any case, so a run that fails before publishing leaves
    nothing in the bucket and nothing in /tmp.
    """
    if not is_uri(target):
        path = Path(str(target).removeprefix("file://"))
        path.mkdir(parents=True, exist_ok=True)
        return path
    staging = Path(tempfile.mkdtemp(prefix="foldwise-out-"))
    atexit.register(shutil.rmtree, staging, True)
    return staging


def publish_folder(folder: Path, target: str | os.PathLike[str]) -> None:
    """Upload a staging folder's files to the URI `target` and remove it (no-op when local)."""
    if not is_uri(target):
        return
    try:
        publish(folder, str(target))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def publish(folder: Path, target: str) -> None:
    """Copy every file under `folder` to `target` (a URI), keeping relative paths."""
    fs, base = filesystem(target)
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        dest = f"{base.rstrip('/')}/{path.relative_to(folder).as_posix()}"
        fs.makedirs(dest.rsplit("/", 1)[0], exist_ok=True)
        fs.put_file(str(path), dest)


def relocate(path: str | os.PathLike[str] | None, folder: Path, target: str | os.PathLike[str]) -> str | None:
    """The final location of a file written under `folder` (the staging folder of `target`)."""
    if path is None:
        return None
    if not is_uri(target):
        return str(path)
    return join(target, Path(path).relative_to(folder).as_posix())


def read_bytes(location: str | os.PathLike[str]) -> bytes:
    """A whole file from a path or a URI."""
    if not is_uri(location):
        return Path(str(location).removeprefix("file://")).read_bytes()
    fs, path = filesystem(str(location))
    return fs.cat_file(path)


def exists(location: str | os.PathLike[str]) -> bool:
    if not is_uri(location):
        return Path(str(location).removeprefix("file://")).exists()
    fs, path = filesystem(str(location))
    return fs.exists(path)


def arrow_filesystem(uri: str) -> tuple[Any, str]:
    """(pyarrow FileSystem, path) over the same fsspec filesystem as everything else.

    For libraries that take a pyarrow filesystem (Ray Tune's `RunConfig(storage_path=path,
    storage_filesystem=fs)`, Ray Data): they then see the same credentials and endpoint
    (e.g. an S3-compatible server) as foldwise's outputs and cache.
    """
    import pyarrow.fs as pafs

    fs, path = filesystem(uri)
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path
