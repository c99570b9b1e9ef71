"""Shared fixtures: one local Ray per test session (num_cpus=2), and one real end-to-end
run of the breast-cancer example that many tests read (Metaflow-style)."""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "workflows" / "examples"


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory):
    """Tests never read or write the repo's .foldwise/cache: results come from this session."""
    root = tmp_path_factory.mktemp("cache")
    os.environ["FOLDWISE_CACHE"] = str(root)
    os.environ["FOLDWISE_CACHE_KEY"] = os.urandom(32).hex()  # entries signed with a key of this session only
    os.environ["FOLDWISE_DATA"] = str(tmp_path_factory.mktemp("datasets"))  # built-in image data, before Ray starts
    yield root
    os.environ.pop("FOLDWISE_CACHE", None)
    os.environ.pop("FOLDWISE_CACHE_KEY", None)
    os.environ.pop("FOLDWISE_DATA", None)


@pytest.fixture(scope="session")
def ray_cluster():
    import ray

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    # address="local": always a fresh cluster of our own, never one a `ray start` left on this machine
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def session_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("foldwise")


@pytest.fixture(scope="session")
def breast_cancer_run(ray_cluster, session_dir):
    """The README's main job, run once through the Python API on the session cluster."""
    from foldwise.workflows.commands.run import run_cv

    uri = f"sqlite:///{session_dir / 'mlflow.db'}"
    return run_cv(EXAMPLES / "breast_cancer.yaml", out=session_dir / "bc-out", tracking_uri=uri)


@pytest.fixture
def toplevel_module(tmp_path: Path, monkeypatch):
    """A user's top-level module `<name>` (class M) that imports K from the file beside it,
    `<name>_util`, on sys.path: (name, folder). Both leave sys.modules afterwards."""
    name = f"toplevel_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(f"from {name}_util import K\nclass M: ...\n")
    (tmp_path / f"{name}_util.py").write_text("K = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    yield name, tmp_path
    sys.modules.pop(name, None)
    sys.modules.pop(f"{name}_util", None)


def store_state(db: Path) -> bytes | None:
    """The sqlite store's bytes (None when absent): 'nothing logged' means this is unchanged."""
    return db.read_bytes() if db.exists() else None
