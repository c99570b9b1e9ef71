"""`foldwise ui` stops everything it started: SIGTERM (a service manager, `kill`) and SIGINT (Ctrl-C)
leave no `mlflow server` process and no worker behind, and the port is free again."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

START_TIMEOUT = 90.0
STOP_TIMEOUT = 30.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answers(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _group_members(groups: set[int]) -> list[int]:
    """Live (non-zombie) processes in any of these process groups."""
    found = []
    for p in psutil.process_iter():
        try:
            if os.getpgid(p.pid) in groups and _alive(p):
                found.append(p.pid)
        except (ProcessLookupError, psutil.NoSuchProcess):
            continue
    return found


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_ui_stops_its_whole_server_group(tmp_path: Path, sig: signal.Signals) -> None:
    store = tmp_path / "mlflow.db"
    store.touch()  # an existing store; `mlflow server` creates its tables
    port = _free_port()
    exe = Path(sys.executable).with_name("foldwise")
    log = tmp_path / "ui.log"
    with log.open("wb") as sink:  # a file, not a pipe nobody reads: the server's log cannot block it
        ui = subprocess.Popen([str(exe), "ui", "--tracking-uri", f"sqlite:///{store}", "--port", str(port)],
                              cwd=tmp_path, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
    started: dict[int, psutil.Process] = {}
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not _answers(port):
            assert ui.poll() is None, log.read_text(errors="replace")[-3000:]
            assert time.monotonic() < deadline, f"the UI did not answer on port {port} within {START_TIMEOUT}s"
            time.sleep(0.3)
        time.sleep(1.0)  # let the server start its workers
        me = psutil.Process(ui.pid)
        started = {p.pid: p for p in me.children(recursive=True)}
        assert started, "foldwise ui started no server process"
        groups = {os.getpgid(pid) for pid in started if _alive(started[pid])}
        assert ui.pid not in groups, "the server must run in its own process group"

        ui.send_signal(sig)
        assert ui.wait(timeout=STOP_TIMEOUT) == 0
        deadline = time.monotonic() + STOP_TIMEOUT
        while [p for p in started.values() if _alive(p)] or not _port_free(port):
            left = [f"{p.pid} {p.cmdline()[:4]}" for p in started.values() if _alive(p)]
            assert time.monotonic() < deadline, f"after {sig.name}: still running {left}, port free {_port_free(port)}"
            time.sleep(0.2)
        assert not _group_members(groups), "a process of the server's group is still running"
    finally:
        for p in [*started.values(), psutil.Process(ui.pid) if ui.poll() is None else None]:
            if p is not None and _alive(p):
                p.kill()
        ui.wait(timeout=10)


def test_ui_switches_off_mlflows_job_runner_unless_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    from foldwise.workflows.cli.ui import server_environment

    monkeypatch.delenv("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", raising=False)
    assert server_environment()["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    monkeypatch.setenv("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "true")
    assert server_environment()["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "true"
