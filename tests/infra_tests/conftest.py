"""Real services on loopback for the infra tests: an S3-compatible server (moto's standalone
server), a private Ray token, free ports, and a check that what a test started is gone."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def foldwise_cmd() -> list[str]:
    """The installed console script next to this interpreter (what a user types)."""
    script = Path(sys.executable).parent / "foldwise"
    return [str(script)] if script.exists() else [sys.executable, "-m", "foldwise.workflows.cli"]


def process_tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.Error:
            pass
    return out


def terminate(procs: list[psutil.Process]) -> None:
    """Stop what a test started (never by name): SIGTERM, then SIGKILL."""
    for p in alive(procs):
        try:
            p.terminate()
        except psutil.Error:
            pass
    _, left = psutil.wait_procs(alive(procs), timeout=10)
    for p in left:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(left, timeout=5)


@pytest.fixture(scope="session")
def ray_token(tmp_path_factory) -> Path:
    """A token only these tests use (RAY_AUTH_TOKEN_PATH), so ~/.ray/auth_token is never touched."""
    path = tmp_path_factory.mktemp("ray-token") / "auth_token"
    path.write_text(secrets.token_hex(32))
    return path


@pytest.fixture(scope="package")  # gone (and its AWS_* variables restored) after the infra tests
def s3_server(tmp_path_factory):
    """moto's standalone S3 server on 127.0.0.1, with a bucket; yields the env that reaches it."""
    pytest.importorskip("s3fs", reason="s3fs is in the dev extra")
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    env = {"AWS_ACCESS_KEY_ID": "foldwise-test", "AWS_SECRET_ACCESS_KEY": "foldwise-test",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                terminate(process_tree(proc.pid))
                pytest.fail(f"moto server did not start: {log.read_text()[-2000:]}")
            time.sleep(0.2)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # this process reads and writes the bucket too (s3fs reads these)
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem()
    fs.mkdir("foldwise-test")
    procs = process_tree(proc.pid)
    yield {"env": env, "bucket": "foldwise-test", "fs": fs, "url": env["AWS_ENDPOINT_URL"]}
    terminate(procs)
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    s3fs.S3FileSystem.clear_instance_cache()
    assert not alive(procs), "moto server still running"


def short_tmp_dir() -> Path:
    """A short temp folder (Ray's unix socket paths must stay under ~107 characters)."""
    path = Path(f"/tmp/fw-{secrets.token_hex(4)}")
    path.mkdir()
    return path
