"""Secret files (the cache key, Ray's token, MLflow's auth files): private from their first byte.

A file made with `open()` and chmod-ed afterwards is readable by everyone in between (and stays
so if the process dies there); these are created with mode 0600 by `os.open` under a umask of
077, in a folder of mode 0700, and linked into place only once complete, so no reader ever sees
a partial or world-readable secret. Nothing here prints or knows exit codes.
"""

from __future__ import annotations

import os
import stat
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

CACHE_KEY_ENV, CACHE_KEY_FILE_ENV = "FOLDWISE_CACHE_KEY", "FOLDWISE_CACHE_KEY_FILE"
MIN_KEY_BYTES = 16


class SecretError(ValueError):
    """A secret that cannot be used safely: too short, readable by others, or not creatable."""


@contextmanager
def private_umask() -> Iterator[None]:
    """Files and folders made inside (also by child processes started inside) are private to this user."""
    old = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(old)


def write_private(path: Path, data: bytes, *, replace: bool = False) -> bool:
    """Write `data` to `path` with mode 0600 from the first byte; False when it existed (and not `replace`)."""
    with private_umask():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        if replace:
            os.replace(tmp, path)
            return True
        try:
            os.link(tmp, path)  # never replaces a file another process created meanwhile
        except FileExistsError:
            return False
        return True
    finally:
        if tmp.exists():
            tmp.unlink()


def cache_key_file() -> Path:
    """$FOLDWISE_CACHE_KEY_FILE, else $XDG_CONFIG_HOME (~/.config)/foldwise/cache.key."""
    if os.environ.get(CACHE_KEY_FILE_ENV):
        return Path(os.environ[CACHE_KEY_FILE_ENV]).expanduser()
    config = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(config) / "foldwise" / "cache.key"


def ensure_cache_key_file() -> Path:
    """The cache key file, created (32 random bytes, hex) when missing; SecretError when unusable."""
    path = cache_key_file()
    if not path.exists():
        try:
            write_private(path, os.urandom(32).hex().encode() + b"\n")
        except OSError as e:
            raise SecretError(f"cache key file {str(path)!r} cannot be created ({e.strerror}); "
                              f"set ${CACHE_KEY_ENV} or ${CACHE_KEY_FILE_ENV}") from None
    return path


def cache_key() -> bytes:
    """The secret cache entries are signed with: $FOLDWISE_CACHE_KEY, else the key file (created 0600 on first use)."""
    text = os.environ.get(CACHE_KEY_ENV)
    if text:
        if len(text.encode()) < MIN_KEY_BYTES:
            raise SecretError(f"${CACHE_KEY_ENV} is {len(text.encode())} bytes; a cache key needs at least "
                              f"{MIN_KEY_BYTES} (e.g. `python -c 'import secrets; print(secrets.token_hex(32))'`)")
        return text.encode()
    path = ensure_cache_key_file()
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise SecretError(f"cache key file {str(path)!r} is readable or writable by others (mode {mode:o}); "
                              f"anyone who can read it can forge cache entries: chmod 600 {path}")
        key = path.read_bytes().strip()
    except OSError as e:
        raise SecretError(f"cache key file {str(path)!r} cannot be read ({e.strerror})") from None
    if len(key) < MIN_KEY_BYTES:
        raise SecretError(f"cache key file {str(path)!r} holds {len(key)} bytes; a cache key needs at least "
                          f"{MIN_KEY_BYTES} (delete it and foldwise writes a new one)")
    return key
