"""Where Tune keeps a sweep's state on local disk, written atomically (temp file + rename).

Tune writes its experiment state and searcher into a staging folder and copies them to the
sweep's folder with `pyarrow.fs.copy_files`, file by file, in place: a driver killed during
that copy leaves a half-written `experiment_state-*.json` or `searcher-state-*.pkl`, and
`--resume` cannot read it. Tune takes the destination as a pyarrow filesystem
(`RunConfig(storage_filesystem=...)`, `Tuner.restore(storage_filesystem=...)`), so the sweep
gives it the local filesystem with one change: every file opened for writing is written beside
its name and renamed over it when closed. A reader sees the old file or the new one, never part.
"""

from __future__ import annotations

import os
import uuid
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs


class _RenameOnClose:
    """A binary file written under a temporary name, renamed over its target when closed."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.tmp = os.path.join(os.path.dirname(path) or ".", f".{os.path.basename(path)}.{uuid.uuid4().hex[:8]}.tmp")
        self._f = open(self.tmp, "wb")  # noqa: SIM115 - closed (and renamed) in close()
        self.closed = False

    def write(self, data: Any) -> int:
        return self._f.write(data)

    def flush(self) -> None:
        self._f.flush()

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False

    def seekable(self) -> bool:
        return False

    def tell(self) -> int:
        return self._f.tell()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        os.replace(self.tmp, self.path)


class AtomicLocalHandler(pafs.FileSystemHandler):
    """pyarrow's local filesystem, except that output streams are written atomically."""

    def __init__(self) -> None:
        self.fs = pafs.LocalFileSystem()

    def __reduce__(self) -> tuple:  # Tune pickles its run config, storage filesystem included
        return (AtomicLocalHandler, ())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AtomicLocalHandler)

    def __ne__(self, other: object) -> bool:
        return not self == other

    def __hash__(self) -> int:
        return hash(AtomicLocalHandler)

    def get_type_name(self) -> str:
        return "foldwise-atomic-local"

    def normalize_path(self, path: str) -> str:
        return self.fs.normalize_path(path)

    def get_file_info(self, paths: list[str]) -> list[pafs.FileInfo]:
        return self.fs.get_file_info(paths)

    def get_file_info_selector(self, selector: pafs.FileSelector) -> list[pafs.FileInfo]:
        return self.fs.get_file_info(selector)

    def create_dir(self, path: str, recursive: bool) -> None:
        self.fs.create_dir(path, recursive=recursive)

    def delete_dir(self, path: str) -> None:
        self.fs.delete_dir(path)

    def delete_dir_contents(self, path: str, missing_dir_ok: bool = False) -> None:
        self.fs.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self) -> None:
        raise OSError("foldwise's sweep storage never empties the root folder")

    def delete_file(self, path: str) -> None:
        self.fs.delete_file(path)

    def move(self, src: str, dest: str) -> None:
        self.fs.move(src, dest)

    def copy_file(self, src: str, dest: str) -> None:
        with self.fs.open_input_stream(src) as source, self.open_output_stream(dest, {}) as sink:
            while chunk := source.read(1 << 20):
                sink.write(chunk)

    def open_input_stream(self, path: str) -> Any:
        return self.fs.open_input_stream(path)

    def open_input_file(self, path: str) -> Any:
        return self.fs.open_input_file(path)

    def open_output_stream(self, path: str, metadata: Any) -> Any:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        return pa.PythonFile(_RenameOnClose(path), mode="w")

    def open_append_stream(self, path: str, metadata: Any) -> Any:
        return self.fs.open_append_stream(path)


def atomic_local_filesystem() -> pafs.FileSystem:
    """The filesystem Tune writes a local sweep folder through (see the module docstring)."""
    return pafs.PyFileSystem(AtomicLocalHandler())
