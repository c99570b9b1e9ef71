"""foldwise.infra.storage against a real S3-compatible server (moto's standalone server on 127.0.0.1):
outputs staged locally and published whole, nothing published on failure, the cache on s3://,
and the pyarrow view of the same bucket that Ray Tune / Ray Data take."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from foldwise.infra import storage
from foldwise.workflows.engine.cache import Cache


def test_paths_and_uris():
    assert storage.is_uri("s3://b/x") and storage.is_uri("gs://b/x")
    assert not storage.is_uri("outputs/x") and not storage.is_uri("file:///tmp/x")
    assert storage.join("s3://b/out/", "spec", "run") == "s3://b/out/spec/run"
    assert storage.join("outputs", "spec", "run") == str(Path("outputs", "spec", "run"))


def test_outputs_root_follows_the_environment(monkeypatch):
    monkeypatch.delenv(storage.OUTPUTS_ENV, raising=False)
    assert storage.outputs_root() == "outputs"
    monkeypatch.setenv(storage.OUTPUTS_ENV, "s3://bucket/foldwise")
    assert storage.outputs_root() == "s3://bucket/foldwise"


def test_local_target_is_written_in_place(tmp_path):
    target = tmp_path / "a" / "b"
    folder = storage.staging_folder(target)
    assert folder == target and folder.is_dir()
    (folder / "x.txt").write_text("x")
    storage.publish_folder(folder, target)  # nothing to do for a local target
    assert (target / "x.txt").read_text() == "x"
    assert storage.relocate(folder / "x.txt", folder, target) == str(target / "x.txt")


def test_uri_target_is_published_whole_and_staging_removed(s3_server):
    fs, bucket = s3_server["fs"], s3_server["bucket"]
    target = f"s3://{bucket}/storage-test/run-1"
    folder = storage.staging_folder(target)
    assert folder.is_dir() and not str(folder).startswith("s3:")
    (folder / "summary.json").write_text(json.dumps({"ok": True}))
    (folder / "plots").mkdir()
    (folder / "plots" / "p.png").write_bytes(b"\x89PNG")
    assert not fs.exists(f"{bucket}/storage-test/run-1")  # nothing visible before publishing
    assert storage.relocate(folder / "plots" / "p.png", folder, target) == f"{target}/plots/p.png"
    storage.publish_folder(folder, target)
    assert not folder.exists()
    fs.invalidate_cache()
    assert sorted(fs.find(f"{bucket}/storage-test/run-1")) == [f"{bucket}/storage-test/run-1/plots/p.png",
                                                               f"{bucket}/storage-test/run-1/summary.json"]
    assert json.loads(storage.read_bytes(f"{target}/summary.json")) == {"ok": True}
    assert storage.exists(f"{target}/plots/p.png") and not storage.exists(f"{target}/missing")


def test_cache_on_s3_round_trips_and_detects_damage(s3_server):
    fs, bucket = s3_server["fs"], s3_server["bucket"]
    cache = Cache(f"s3://{bucket}/cache-test")
    cache.put("fold", "k1", {"score": 0.9})
    assert Cache(f"s3://{bucket}/cache-test").get("fold", "k1") == {"score": 0.9}  # a fresh reader sees it
    fs.pipe_file(f"{bucket}/cache-test/fold/k1.pkl", fs.cat_file(f"{bucket}/cache-test/fold/k1.pkl")[:-3])
    damaged = Cache(f"s3://{bucket}/cache-test")
    assert damaged.get("fold", "k1") is None and damaged.corrupt == ["fold/k1"]


def test_arrow_filesystem_sees_the_same_bucket(s3_server):
    import pyarrow as pa
    import pyarrow.parquet as pq

    fs, bucket = s3_server["fs"], s3_server["bucket"]
    afs, path = storage.arrow_filesystem(f"s3://{bucket}/arrow-test")
    pq.write_table(pa.table({"a": [1, 2, 3]}), f"{path}/t.parquet", filesystem=afs)
    fs.invalidate_cache()
    assert fs.exists(f"{bucket}/arrow-test/t.parquet")
    assert pq.read_table(f"{path}/t.parquet", filesystem=afs).column("a").to_pylist() == [1, 2, 3]


def test_unknown_scheme_and_missing_driver_are_named():
    with pytest.raises(storage.StorageError, match="no filesystem for nosuchfs://"):
        storage.filesystem("nosuchfs://bucket/x")
    try:
        import gcsfs  # noqa: F401
    except ImportError:
        with pytest.raises(storage.StorageError, match=r"gs:// URIs \(pip install gcsfs"):
            storage.filesystem("gs://bucket/x")
