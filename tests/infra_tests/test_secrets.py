"""Secret files are private from their first byte, whatever the umask: Ray's token, the cache key,
MLflow's auth files (those are checked on a live server in test_mlflow_server.py)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

from foldwise.infra.secrets import write_private


def test_a_new_ray_token_is_0600_under_a_permissive_umask(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH_TOKEN")} | {"HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", "import os; os.umask(0o022)\n"
                           "from foldwise.infra.ray_token import ensure_ray_token; print(ensure_ray_token())"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "new token written to ~/.ray/auth_token" in done.stdout
    token = tmp_path / ".ray" / "auth_token"
    assert stat.S_IMODE(token.stat().st_mode) == 0o600, "the token is readable by its owner only"
    assert stat.S_IMODE(token.parent.stat().st_mode) & 0o077 == 0
    assert len(token.read_text().strip()) >= 32


def test_write_private_never_exposes_or_replaces(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        assert write_private(tmp_path / "d" / "s", b"one")
        assert not write_private(tmp_path / "d" / "s", b"two"), "an existing secret is kept"
        assert write_private(tmp_path / "d" / "s", b"three", replace=True)
    finally:
        os.umask(old)
    assert (tmp_path / "d" / "s").read_bytes() == b"three"
    assert stat.S_IMODE((tmp_path / "d" / "s").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o700
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["s"], "no temp file left"


def test_cluster_jobs_get_the_cache_key(tmp_path: Path, monkeypatch) -> None:
    """`cluster up` hands its jobs the cache key as it hands them Ray's token: the same key signs and checks."""
    from foldwise.infra.cluster import ClusterConfig, job_environment, mlflow_config

    monkeypatch.delenv("FOLDWISE_CACHE_KEY", raising=False)
    monkeypatch.delenv("FOLDWISE_CACHE_KEY_FILE", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    config = ClusterConfig()
    env = job_environment(tmp_path / "cluster", config, mlflow_config(tmp_path / "cluster", config))
    key = Path(env["FOLDWISE_CACHE_KEY_FILE"])
    assert key == tmp_path / "config" / "foldwise" / "cache.key" and stat.S_IMODE(key.stat().st_mode) == 0o600
    monkeypatch.setenv("FOLDWISE_CACHE_KEY", "k" * 32)  # jobs inherit the variable itself
    env = job_environment(tmp_path / "cluster", config, mlflow_config(tmp_path / "cluster", config))
    assert "FOLDWISE_CACHE_KEY_FILE" not in env
