"""infra/mlflow_server.py: bad locations are one clear line (exit 2) before anything starts;
with --basic-auth a real server on 127.0.0.1 refuses anonymous clients and serves the admin,
and the pid file is all it takes to stop it (the way cluster.yaml restarts it)."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys

import pytest
import requests

from tests.infra_tests.conftest import REPO, alive, free_port, process_tree


def launcher(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "foldwise.infra.mlflow_server", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.parametrize("args, message", [
    (["--backend-store-uri", "mysql://u@h/db"], "--backend-store-uri 'mysql://u@h/db': use sqlite:///PATH or postgresql://"),
    (["--backend-store-uri", "sqlite:////no/such/folder/m.db"], "folder '/no/such/folder' does not exist"),
    (["--artifacts-destination", "ftp://host/x"], "--artifacts-destination 'ftp://host/x': use a path"),
    (["--port", "70000"], "--port 70000: not a TCP port"),
])
def test_bad_locations_are_one_line_and_exit_2(tmp_path, args, message):
    done = launcher("--data-dir", str(tmp_path / "d"), *args, timeout=60)
    assert done.returncode == 2
    assert message in done.stderr and done.stderr.strip().count("\n") == 0
    assert not (tmp_path / "d").exists()  # nothing written


@pytest.mark.parametrize("scheme", ["postgresql", "postgresql+pg8000"])
def test_postgres_needs_its_driver(tmp_path, scheme):
    """The driver SQLAlchemy would load for the scheme (plain postgresql:// is psycopg from SQLAlchemy 2.1)."""
    import importlib.util

    from foldwise.infra.mlflow_server import postgres_driver

    driver = postgres_driver(scheme)
    if importlib.util.find_spec(driver) is not None:
        pytest.skip(f"{driver} is installed: the missing-driver message cannot be shown")
    done = launcher("--data-dir", str(tmp_path), "--backend-store-uri", f"{scheme}://u:p@127.0.0.1:1/mlflow", timeout=60)
    assert done.returncode == 2 and f"its driver {driver} is not installed (pip install" in done.stderr


def test_basic_auth_server_on_localhost(tmp_path):
    port = free_port()
    data = tmp_path / "mlflow"
    started = launcher("--data-dir", str(data), "--port", str(port), "--basic-auth", "--detach",
                       "--pid-file", str(tmp_path / "server.pid"))
    assert started.returncode == 0, started.stderr
    pid = int((tmp_path / "server.pid").read_text())
    procs = process_tree(pid)
    try:
        url = f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search?max_results=5"
        assert requests.get(url, timeout=30).status_code == 401
        password = (data / "mlflow-admin-password").read_text().strip()
        assert (data / "mlflow-admin-password").stat().st_mode & 0o077 == 0  # readable by its owner only
        assert requests.get(url, auth=("admin", "wrong"), timeout=30).status_code == 401
        ok = requests.get(url, auth=("admin", password), timeout=30)
        assert ok.status_code == 200 and "experiments" in ok.json()
        # bound to the loopback interface only
        listening = {c.laddr.ip for p in alive(procs) for c in p.net_connections("tcp")
                     if c.status == "LISTEN" and c.laddr.port == port}
        assert listening == {"127.0.0.1"}
        assert (data / "basic_auth.db").exists() and (data / "mlflow.db").exists()
        for secret in ("basic_auth.db", "basic_auth.ini", "mlflow-admin-password", "flask-secret-key", "mlflow.db"):
            assert stat.S_IMODE((data / secret).stat().st_mode) == 0o600, f"{secret} is private to its owner"
    finally:
        os.killpg(pid, signal.SIGTERM)
        import psutil

        _, left = psutil.wait_procs(alive(procs), timeout=20)
        for p in left:
            p.kill()
    assert not alive(procs)
