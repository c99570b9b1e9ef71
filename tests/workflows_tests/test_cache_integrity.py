"""The cache never loads an entry its key did not sign: a forged pickle never runs.

Entries are pickles, and unpickling runs code; each entry carries an HMAC-SHA256 under the
cache key, checked before `pickle.loads`. A sentinel file written by the forged payload proves
whether it ran.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import stat
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from foldwise.infra import secrets as secrets_mod
from foldwise.workflows.commands.run import run_cv
from foldwise.workflows.engine.cache import Cache, cache_key
from foldwise.workflows.errors import InputError


class Payload:
    """Unpickling this runs a shell command that creates `sentinel` (what an attacker would plant)."""

    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self):
        return os.system, (f"touch {self.sentinel}",)


def forged_blobs(sentinel: Path, kind: str, key: str) -> dict[str, bytes]:
    """Entries an attacker without the key can write: each with a valid-looking checksum."""
    payload = pickle.dumps(Payload(sentinel))
    length = len(payload).to_bytes(8, "little")
    import hmac

    other_key = hmac.new(b"not-the-cache-key-0123456789", f"{kind}/{key}\0".encode(), hashlib.sha256)
    other_key.update(payload)
    return {
        "old format, plain sha256": b"FWC1" + hashlib.sha256(payload).digest() + length + payload,
        "new format, plain sha256": b"FWC2" + hashlib.sha256(payload).digest() + length + payload,
        "new format, another key": b"FWC2" + other_key.digest() + length + payload,
    }


@pytest.mark.parametrize("forgery", ["old format, plain sha256", "new format, plain sha256", "new format, another key"])
def test_a_forged_entry_is_refused_and_never_unpickled(tmp_path: Path, forgery: str, capfd) -> None:
    sentinel = tmp_path / "payload-ran"
    cache = Cache(str(tmp_path / "cache"), key=b"k" * 32)
    cache.put("fold", "abc", {"score": 0.9})
    path = tmp_path / "cache" / "fold" / "abc.pkl"
    path.write_bytes(forged_blobs(sentinel, "fold", "abc")[forgery])
    assert cache.get("fold", "abc") is None, "a forged entry reads as a miss"
    assert not sentinel.exists(), "the forged payload never ran"
    assert not path.exists() and cache.corrupt == ["fold/abc"], "it is dropped (and recomputed by the caller)"
    assert "cache entry fold/abc fails its integrity check" in capfd.readouterr().err
    assert pickle.loads(pickle.dumps(Payload(sentinel))) == 0 and sentinel.exists(), "the payload does run when unpickled"


def test_a_signed_entry_copied_under_another_name_is_refused(tmp_path: Path) -> None:
    cache = Cache(str(tmp_path / "cache"), key=b"k" * 32)
    cache.put("fold", "a", {"score": 0.1})
    cache.put("fold", "b", {"score": 0.9})
    (tmp_path / "cache" / "fold" / "a.pkl").write_bytes((tmp_path / "cache" / "fold" / "b.pkl").read_bytes())
    assert cache.get("fold", "b") == {"score": 0.9}
    assert cache.get("fold", "a") is None, "the name is signed too: b's result never stands in for a's"
    assert Cache(str(tmp_path / "cache"), key=b"j" * 32).get("fold", "b") is None, "another key reads nothing"


def test_the_key_file_is_created_0600_from_its_first_byte(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("FOLDWISE_CACHE_KEY", raising=False)
    monkeypatch.delenv("FOLDWISE_CACHE_KEY_FILE", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    modes_at_write: list[int] = []
    real_write = os.write

    def watched_write(fd: int, data: bytes) -> int:
        modes_at_write.append(stat.S_IMODE(os.fstat(fd).st_mode))
        return real_write(fd, data)

    monkeypatch.setattr(secrets_mod.os, "write", watched_write)
    old_umask = os.umask(0)  # a careless umask must not matter
    try:
        key = cache_key()
    finally:
        os.umask(old_umask)
    path = tmp_path / "config" / "foldwise" / "cache.key"
    assert modes_at_write == [0o600], "the key was never in a file others could read"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert len(key) == 64 and cache_key() == key, "created once, then read back"
    assert not [p for p in path.parent.iterdir() if p.name != "cache.key"], "no temp file left behind"


def test_a_key_others_can_read_or_a_short_key_is_refused(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("FOLDWISE_CACHE_KEY", raising=False)
    shared = tmp_path / "cache.key"
    shared.write_text("x" * 64)
    shared.chmod(0o644)
    monkeypatch.setenv("FOLDWISE_CACHE_KEY_FILE", str(shared))
    with pytest.raises(InputError, match=r"readable or writable by others \(mode 644\).*chmod 600"):
        cache_key()
    monkeypatch.setenv("FOLDWISE_CACHE_KEY", "short")
    with pytest.raises(InputError, match=r"\$FOLDWISE_CACHE_KEY is 5 bytes; a cache key needs at least 16"):
        cache_key()


def test_a_planted_fold_entry_does_not_run_and_the_fold_is_recomputed(ray_cluster, tmp_path: Path, capfd) -> None:
    """The issue's attack end to end: an entry under a fold's key, its checksum recomputed."""
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(300, 4)), columns=list("pqrs"))
    frame["y"] = (frame.p + rng.normal(size=300) > 0).astype(int)
    frame.to_csv(tmp_path / "d.csv", index=False)
    spec = {"name": "tamper", "data": {"train": str(tmp_path / "d.csv"), "target": "y"}, "cv": {"folds": 3, "seed": 1},
            "models": [{"name": "lr", "estimator": "sklearn.linear_model.LogisticRegression"}]}

    def go() -> dict:
        return run_cv(spec, out=tmp_path / f"out{time.monotonic_ns()}", tracking_uri=f"sqlite:///{tmp_path / 'm.db'}",
                      cache_root=str(tmp_path / "cache")).summary

    first = go()
    sentinel = tmp_path / "payload-ran"
    victim = sorted((tmp_path / "cache" / "fold").glob("*.pkl"))[0]  # names are visible by listing the folder
    victim.write_bytes(forged_blobs(sentinel, "fold", victim.stem)["new format, plain sha256"])
    capfd.readouterr()
    again = go()
    assert not sentinel.exists(), "the planted payload never ran"
    assert f"cache entry fold/{victim.stem} fails its integrity check" in capfd.readouterr().err
    assert sorted(again["models"]["lr"]["cached"]) == [False, True, True], "exactly the planted fold is recomputed"
    assert again["models"]["lr"]["fold_scores"] == first["models"]["lr"]["fold_scores"]
