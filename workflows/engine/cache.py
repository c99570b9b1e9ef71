"""Content-addressed cache of DAG node results: never compute the same thing twice.

A node's key hashes what its result depends on: its inputs' keys or fingerprints, its
own config, and the code version (a hash of the `tasks` package and of any user adapter
module). Entries are written atomically (temp file + rename) and carry an HMAC-SHA256 of their
name and payload under a secret key (`cache_key`), checked before anything is unpickled: a
truncated, altered, moved or forged entry reads as a miss and is recomputed, never loaded (a
pickle runs code, so an unkeyed checksum would let anyone who can write the cache run code on
every machine that reads it). The root is a local folder (default `.foldwise/cache`) or an fsspec
URI (s3://, gs://, ...) so cluster nodes can share it; they share the key too.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import pickle
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from foldwise.infra import secrets
from foldwise.workflows.errors import InputError

DEFAULT_ROOT = ".foldwise/cache"
_MAGIC = b"FWC2"  # FWC1 entries (unkeyed SHA-256) are never loaded: they read as a miss
_HEADER = len(_MAGIC) + 32 + 8  # magic, HMAC-SHA256 of name + payload, payload length


def cache_key() -> bytes:
    """The secret entries are signed with ($FOLDWISE_CACHE_KEY, else ~/.config/foldwise/cache.key, created
    0600 on first use); InputError (exit 2, before anything runs) for a key too short or readable by others."""
    try:
        return secrets.cache_key()
    except secrets.SecretError as e:
        raise InputError(str(e)) from None


def resolve_root(explicit: str | None = None) -> str:
    """--cache, then $FOLDWISE_CACHE, then .foldwise/cache in the working directory."""
    return explicit or os.environ.get("FOLDWISE_CACHE") or DEFAULT_ROOT


def key_of(*parts: Any) -> str:
    """A stable hash of JSON-able parts (dicts are key-sorted)."""
    text = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Entry:
    kind: str
    key: str
    bytes: int
    modified: float  # unix seconds


class Cache:
    """get/put of pickled results under <root>/<kind>/<key>.pkl; `enabled=False` makes every get miss."""

    def __init__(self, root: str | None = None, enabled: bool = True, key: bytes | None = None) -> None:
        self.root = resolve_root(root)
        self.enabled = enabled
        self._key = key  # loaded on first get/put: `cache ls` and `prune` need no key
        self.corrupt: list[str] = []  # entries found damaged, altered or forged and dropped this session
        self._read_seconds = self._write_seconds = 0.0
        if "://" in self.root:
            import fsspec

            self.fs, self.base = fsspec.core.url_to_fs(self.root)
        else:
            self.fs, self.base = None, str(Path(self.root).resolve())

    @property
    def key(self) -> bytes:
        if self._key is None:
            self._key = cache_key()
        return self._key

    def _path(self, kind: str, key: str) -> str:
        return f"{self.base}/{kind}/{key}.pkl"

    def get(self, kind: str, key: str) -> Any | None:
        if not self.enabled:
            return None
        tick = time.perf_counter()
        try:
            return self._get(kind, key)
        finally:
            self._read_seconds += time.perf_counter() - tick

    def has(self, kind: str, key: str) -> bool:
        """Whether an entry is there, without reading it (a damaged one still reads as a miss in `get`)."""
        if not self.enabled:
            return False
        path = self._path(kind, key)
        return bool(self.fs.exists(path)) if self.fs is not None else os.path.exists(path)

    def _get(self, kind: str, key: str) -> Any | None:
        path = self._path(kind, key)
        try:
            blob = self._read(path)
        except FileNotFoundError:
            return None
        payload = _verify(blob, self.key, kind, key)
        if payload is None:
            self.corrupt.append(f"{kind}/{key}")
            print(f"foldwise: cache entry {kind}/{key} fails its integrity check (truncated, altered, or signed "
                  "with another cache key); not loaded, recomputing it", file=sys.stderr)
            self._remove(path)
            return None
        return pickle.loads(payload)  # only after the HMAC matched: written by a holder of the key

    def put(self, kind: str, key: str, value: Any) -> None:
        tick = time.perf_counter()
        try:
            self._put(kind, key, value)
        finally:
            self._write_seconds += time.perf_counter() - tick

    def io_seconds(self) -> dict[str, float]:
        """Driver seconds spent reading and writing entries so far (part of the run's phases, not extra)."""
        return {"cache_read": self._read_seconds, "cache_write": self._write_seconds}

    def _put(self, kind: str, key: str, value: Any) -> None:
        payload = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        blob = _MAGIC + _mac(self.key, kind, key, payload) + len(payload).to_bytes(8, "little") + payload
        path = self._path(kind, key)
        if self.fs is not None:
            self.fs.makedirs(os.path.dirname(path), exist_ok=True)
            self.fs.pipe_file(path, blob)  # object stores write whole objects or nothing
            return
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{uuid.uuid4().hex}.{os.getpid()}-{_HOST}.tmp"  # names its writer: `prune` drops it once that is gone
        with open(tmp, "wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic: readers see the old entry, or the whole new one

    def entries(self) -> list[Entry]:
        out = []
        if self.fs is not None:
            found = self.fs.find(self.base, detail=True) if self.fs.exists(self.base) else {}
            for path, info in found.items():
                if path.endswith(".pkl"):
                    kind, name = path.rstrip("/").split("/")[-2:]
                    mtime = info.get("mtime") or info.get("LastModified") or 0
                    out.append(Entry(kind, name[:-4], int(info.get("size", 0)), _seconds(mtime)))
            return sorted(out, key=lambda e: e.modified)
        base = Path(self.base)
        if base.exists():
            for p in base.glob("*/*.pkl"):
                st = p.stat()
                out.append(Entry(p.parent.name, p.stem, st.st_size, st.st_mtime))
        return sorted(out, key=lambda e: e.modified)

    def prune(self, older_than_seconds: float | None = None, dry_run: bool = False) -> list[Entry]:
        """Remove entries older than the given age (all entries when None).

        Also removes temp files a writer killed mid-write left behind (kind `partial`): at once
        when their writer (named in the file name) was a process of this machine that has ended,
        else once they are an hour old, so a live writer's file is never pulled from under it.
        """
        now = time.time()
        cutoff = now - older_than_seconds if older_than_seconds is not None else float("inf")
        removed = [e for e in self.entries() if e.modified < cutoff]
        removed += [e for e in self.partial_writes()
                    if _writer_gone(e) or e.modified < min(cutoff, now - 3600)]
        if not dry_run:
            for e in removed:
                self._remove(self._path(e.kind, e.key) if e.kind != "partial" else f"{self.base}/{e.key}")
        return removed

    def partial_writes(self) -> list[Entry]:
        """Temp files of writes that never finished (a killed driver); never read as results."""
        if self.fs is not None or not Path(self.base).exists():
            return []  # object stores write whole objects: no temp files
        out = []
        for p in Path(self.base).glob("*/*.tmp"):
            try:
                st = p.stat()
            except FileNotFoundError:  # renamed into place meanwhile: it finished
                continue
            out.append(Entry("partial", str(p.relative_to(self.base)), st.st_size, st.st_mtime))
        return out

    def _read(self, path: str) -> bytes:
        if self.fs is not None:
            if not self.fs.exists(path):
                raise FileNotFoundError(path)
            return self.fs.cat_file(path)
        with open(path, "rb") as f:
            return f.read()

    def _remove(self, path: str) -> None:
        try:
            if self.fs is not None:
                self.fs.rm(path)
            else:
                os.remove(path)
        except FileNotFoundError:
            pass


def _host_tag() -> str:
    import socket

    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


_HOST = _host_tag()


def _writer_gone(entry: Entry) -> bool:
    """A temp file whose writer was a process of this machine that is no longer running (or whose pid now
    belongs to a process started after the file was written). Files of other machines: unknown, False."""
    parts = entry.key.rsplit(".", 2)
    if len(parts) != 3 or parts[2] != "tmp" or "-" not in parts[1]:
        return False
    pid_text, _, host = parts[1].partition("-")
    if host != _HOST or not pid_text.isdigit():
        return False
    import psutil

    try:
        return psutil.Process(int(pid_text)).create_time() > entry.modified + 1.0
    except psutil.NoSuchProcess:
        return True
    except psutil.Error:
        return False


def _mac(secret: bytes, kind: str, key: str, payload: bytes) -> bytes:
    """HMAC-SHA256 over the entry's name and payload: an entry copied under another name fails too."""
    mac = hmac.new(secret, f"{kind}/{key}\0".encode(), hashlib.sha256)
    mac.update(payload)
    return mac.digest()


def _verify(blob: bytes, secret: bytes, kind: str, key: str) -> bytes | None:
    if len(blob) < _HEADER or not blob.startswith(_MAGIC):
        return None
    digest, length = blob[4:36], int.from_bytes(blob[36:44], "little")
    payload = blob[_HEADER:]
    if len(payload) != length or not hmac.compare_digest(_mac(secret, kind, key, payload), digest):
        return None
    return payload


def _seconds(mtime: Any) -> float:
    if hasattr(mtime, "timestamp"):
        return float(mtime.timestamp())
    return float(mtime)


def source_stamp(source: str | None) -> Any:
    """What identifies a data source's content cheaply: path + size + mtime (or URI info)."""
    if source is None:
        return None
    if source.startswith("sklearn:"):
        import sklearn

        return [source, sklearn.__version__]
    if "://" in source:
        import fsspec

        fs, path = fsspec.core.url_to_fs(source)
        info = fs.info(path)
        return [source, info.get("size"), str(info.get("ETag") or info.get("mtime") or info.get("LastModified"))]
    st = os.stat(source)
    return [str(Path(source).resolve()), st.st_size, st.st_mtime_ns]
