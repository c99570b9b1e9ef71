"""The warm command server (`foldwise.workflows.cli.warm`): a real server on a temp state dir, real
`foldwise` client processes in its folder, real MLflow stores. A command run through it gives what
the same command gives in its own process (summary, MLflow records, output streams, exit codes), the
client's environment reaches it, signals to the client reach the command, a killed client's command
is stopped cleanly, and a client whose code or import-time environment differs runs the command
itself. One server serves the module (its imports take seconds)."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from foldwise.workflows.cli.warm_client import SOCKET_NAME, code_fingerprint

REPO = Path(__file__).resolve().parents[2]
SPEC = REPO / "workflows" / "examples" / "breast_cancer.yaml"
SMALL = ["--set", "cv.folds=3", "--set", "models.1.params.n_estimators=40", "--no-progress", "--no-cache"]
NOTE = "running in the desktop cluster's warm server"

# The user's own code in the folder the command runs from (imported by the child from its cwd).
SLOW_ADAPTER = '''
import time
from sklearn.linear_model import LogisticRegression

class SlowLogistic:
    def __init__(self, config, ctx):
        self.sleep = float(config.params.get("sleep", 0.0))
        self.model = LogisticRegression(max_iter=2000)

    def fit(self, X, y):
        time.sleep(self.sleep)
        self.model.fit(X.to_numpy(), y)

    def predict(self, X):
        return self.model.predict_proba(X.to_numpy())[:, 1]
'''


def foldwise_cmd() -> list[str]:
    """The installed console script next to this interpreter (what a user types)."""
    script = Path(sys.executable).parent / "foldwise"
    return [str(script)] if script.exists() else [sys.executable, "-m", "foldwise.workflows.cli"]


class Warm:
    def __init__(self, base: Path, env: dict[str, str], proc: subprocess.Popen) -> None:
        self.base, self.env, self.proc = base, env, proc
        self.state = base / ".foldwise" / "cluster"

    def foldwise(self, *args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run([*foldwise_cmd(), *args], cwd=self.base, env=self.env | (env or {}), capture_output=True,
                              text=True, timeout=timeout)

    def log(self) -> str:
        return (self.state / "warm-server.log").read_text()


@pytest.fixture(scope="module")
def warm(tmp_path_factory) -> Warm:
    base = tmp_path_factory.mktemp("warm")
    state = base / ".foldwise" / "cluster"
    state.mkdir(parents=True, mode=0o700)
    os.chmod(state, 0o700)
    (base / "slowfit.py").write_text(SLOW_ADAPTER)
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS", "FOLDWISE_WARM")}
    with open(state / "warm-server.log", "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "foldwise.workflows.cli.warm", str(state)], env=env, cwd=base,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while not (state / SOCKET_NAME).exists():
            assert proc.poll() is None, (state / "warm-server.log").read_text()
            assert time.monotonic() < deadline, "the warm server was not ready within 240 s"
            time.sleep(0.2)
        yield Warm(base, env, proc)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, (state / "warm-server.log").read_text()
    assert not (state / SOCKET_NAME).exists(), "the socket outlived its server"


def runs(db: Path) -> list[tuple[str, str]]:
    """(run name, status) of every run in a sqlite MLflow store, read with sqlite3 (no MLflow import)."""
    with sqlite3.connect(db) as con:
        return sorted((untimed(name), status) for name, status in con.execute("select name, status from runs"))


def untimed(name: str) -> str:
    return "run-TIME" if name.startswith("run-20") else name  # the parent run is named after its start time


def metrics(db: Path) -> dict[tuple[str, str], float]:
    with sqlite3.connect(db) as con:
        rows = con.execute("select r.name, m.key, m.value from latest_metrics m join runs r on m.run_uuid = r.run_uuid")
        return {(untimed(name), key): value for name, key, value in rows
                if not any(word in key for word in ("seconds", "_s", "time", "memory", "bytes"))}


def test_socket_and_folder_are_private_and_the_server_forks_with_one_thread(warm: Warm) -> None:
    assert (warm.state.stat().st_mode & 0o777) == 0o700
    assert (os.stat(warm.state / SOCKET_NAME).st_mode & 0o777) == 0o600
    done = warm.foldwise("dag", str(SPEC))
    assert done.returncode == 0, done.stderr
    assert NOTE in done.stderr and "FOLDWISE_WARM=0" in done.stderr
    forks = [line for line in warm.log().splitlines() if "threads at fork:" in line]
    assert forks and all(line.endswith("threads at fork: 1)") for line in forks), warm.log()


def on_a_terminal(warm: Warm, args: list[str], env: dict[str, str]) -> tuple[int, bytes]:
    """A command whose stdout is a terminal (a pty): its exit code and what it wrote there."""
    import pty

    primary, secondary = pty.openpty()
    try:
        proc = subprocess.Popen([*foldwise_cmd(), *args], cwd=warm.base, env=warm.env | env, stdout=secondary,
                                stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
        os.close(secondary)
        chunks = []
        while True:
            try:
                chunk = os.read(primary, 65536)
            except OSError:  # EIO: every writer closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
        stderr = proc.communicate(timeout=120)[1].decode()
        assert (NOTE in stderr) == ("FOLDWISE_WARM" not in env), stderr
        return proc.returncode, b"".join(chunks)
    finally:
        os.close(primary)


def test_a_terminal_stays_a_terminal(warm: Warm) -> None:
    """The child writes to the client's terminal itself: rich sees a tty and colours its table, as it
    does for a command in its own process (and not when stdout is a pipe)."""
    args = ["dag", str(SPEC), "--out", str(warm.base / "dag-tty")]
    rc_warm, tty_warm = on_a_terminal(warm, args, {})
    rc_cold, tty_cold = on_a_terminal(warm, args, {"FOLDWISE_WARM": "0"})
    assert rc_warm == rc_cold == 0
    assert b"\x1b[" in tty_warm and b"\x1b[" in tty_cold
    piped = warm.foldwise(*args)
    assert piped.returncode == 0 and "\x1b[" not in piped.stdout


def test_a_run_through_the_server_matches_a_run_in_its_own_process(warm: Warm) -> None:
    out = {}
    for name, extra in (("warm", {}), ("cold", {"FOLDWISE_WARM": "0"})):
        db = warm.base / f"{name}.db"
        # MLFLOW_TRACKING_URI is set on the client only: the store it names is the one written.
        done = warm.foldwise("run", str(SPEC), *SMALL, "--out", str(warm.base / name),
                             env={"MLFLOW_TRACKING_URI": f"sqlite:///{db}", **extra})
        assert done.returncode == 0, done.stderr
        assert (NOTE in done.stderr) == (name == "warm"), done.stderr
        summary = json.loads((warm.base / name / "summary.json").read_text())
        out[name] = (summary, done.stdout, runs(db), metrics(db))
    (sw, stdout_w, runs_w, metrics_w), (sc, stdout_c, runs_c, metrics_c) = out["warm"], out["cold"]
    assert set(sw["models"]) == {"logreg", "lgbm"}
    for name in sw["models"]:
        assert sw["models"][name]["fold_scores"] == sc["models"][name]["fold_scores"]
        assert sw["models"][name]["cv_score"] == sc["models"][name]["cv_score"]
    for key in ("weights", "cv_score", "fold_scores"):
        assert sw["ensemble"][key] == sc["ensemble"][key]
    assert sw["data_fingerprint"] == sc["data_fingerprint"] and sw["dag"]["nodes"] == sc["dag"]["nodes"]
    assert runs_w == runs_c and all(status == "FINISHED" for _, status in runs_w)
    assert metrics_w and metrics_w == metrics_c
    # stdout is the client's: the table with each score (its fit times differ) and where the run went.
    for stdout in (stdout_w, stdout_c):
        assert all(f"{model['cv_score']:.5f}" in stdout for model in sw["models"].values()), stdout
        assert "MLflow run" in stdout and "summary.json" in stdout


def test_a_forked_command_starts_a_private_ray_with_address_local(warm: Warm) -> None:
    """The server imported Ray (token mode on); its child re-reads Ray's config from the client's
    environment and starts, uses and shuts down a Ray of its own."""
    done = warm.foldwise("run", str(SPEC), "--set", "cv.folds=2", "--set", "models.1.params.n_estimators=20",
                         "--no-progress", "--no-cache", "--executor", "ray", "--address", "local",
                         "--out", str(warm.base / "private"), env={"MLFLOW_TRACKING_URI": f"sqlite:///{warm.base / 'p.db'}"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert NOTE in done.stderr and "joining" not in done.stderr
    summary = json.loads((warm.base / "private" / "summary.json").read_text())
    assert summary["executor"] == "ray" and summary["startup_seconds"] > 0
    assert all(status == "FINISHED" for _, status in runs(warm.base / "p.db"))


def test_bad_input_exits_2_with_its_line_on_the_clients_stderr_and_writes_nothing(warm: Warm) -> None:
    before = sorted(p for p in warm.base.rglob("*") if "warm-server.log" not in p.name)
    done = warm.foldwise("run", "missing.yaml", env={"MLFLOW_TRACKING_URI": f"sqlite:///{warm.base / 'bad.db'}"})
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert NOTE in lines[0] and lines[1:] == ["foldwise: error: spec file 'missing.yaml' does not exist"], done.stderr
    assert sorted(p for p in warm.base.rglob("*") if "warm-server.log" not in p.name) == before


def start_slow_run(warm: Warm, name: str) -> tuple[subprocess.Popen, Path, int]:
    """A run of a slow user model through the server, once its MLflow runs are RUNNING: (client, store, child pid)."""
    data = warm.base / "slow.csv"
    if not data.exists():
        import numpy as np
        import pandas as pd

        rng = np.random.default_rng(0)
        frame = pd.DataFrame(rng.normal(size=(200, 3)), columns=list("abc"))
        frame["y"] = (frame.a + rng.normal(size=200) > 0).astype(int)
        frame.to_csv(data, index=False)
    spec = {"name": name, "data": {"train": str(data), "target": "y"}, "cv": {"folds": 4, "seed": 1},
            "models": [{"name": "slow", "type": "slowfit:SlowLogistic", "params": {"sleep": 30.0}}]}
    (warm.base / f"{name}.yaml").write_text(yaml.safe_dump(spec))
    db = warm.base / f"{name}.db"
    stderr = open(warm.base / f"{name}.err", "w+")  # noqa: SIM115 - read while the client runs
    client = subprocess.Popen([*foldwise_cmd(), "run", f"{name}.yaml", "--no-progress", "--executor", "local",
                               "--tracking-uri", f"sqlite:///{db}", "--out", str(warm.base / name)], cwd=warm.base,
                              env=warm.env, stdout=subprocess.DEVNULL, stderr=stderr, text=True)
    deadline = time.monotonic() + 180
    while not (db.exists() and any(status == "RUNNING" for _, status in safe_runs(db))):
        assert client.poll() is None, (warm.base / f"{name}.err").read_text()
        assert time.monotonic() < deadline, "the run did not start within 180 s"
        time.sleep(0.2)
    text = (warm.base / f"{name}.err").read_text()
    assert NOTE in text, text
    pid = int(text.split("(pid ")[1].split(";")[0])
    return client, db, pid


def safe_runs(db: Path) -> list[tuple[str, str]]:
    try:
        return runs(db)
    except sqlite3.Error:  # the store is still being created
        return []


def test_ctrl_c_to_the_client_stops_the_command_cleanly(warm: Warm) -> None:
    client, db, child = start_slow_run(warm, "sigint")
    client.send_signal(signal.SIGINT)
    assert client.wait(timeout=120) == 1
    err = (warm.base / "sigint.err").read_text()
    assert "foldwise: failed: interrupted (MLflow run" in err and "marked FAILED" in err, err
    statuses = [status for _, status in runs(db)]
    assert "FAILED" in statuses and "RUNNING" not in statuses, statuses
    assert not psutil.pid_exists(child) or psutil.Process(child).status() == psutil.STATUS_ZOMBIE


def test_a_killed_client_gets_its_command_stopped_cleanly(warm: Warm) -> None:
    client, db, child = start_slow_run(warm, "sigkill")
    client.kill()
    client.wait()
    deadline = time.monotonic() + 120
    while psutil.pid_exists(child) and psutil.Process(child).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "the command outlived its client by 120 s"
        time.sleep(0.2)
    statuses = [status for _, status in runs(db)]
    assert "FAILED" in statuses and "RUNNING" not in statuses, statuses
    assert f"the client of pid {child} went away: SIGTERM to it" in warm.log()


# Values nobody's environment holds (a suite run may have set RAY_DEDUP_LOGS=0 before the server started).
@pytest.mark.parametrize("env", [{"OMP_NUM_THREADS": "3"}, {"RAY_FOLDWISE_TEST_SENTINEL": "1"}])
def test_an_import_time_variable_the_server_lacks_runs_the_command_here(warm: Warm, env: dict[str, str]) -> None:
    done = warm.foldwise("run", "missing.yaml", env=env)
    assert done.returncode == 2
    name = next(iter(env))
    assert f"not using the warm server ({name} differs from its environment (read at import))" in done.stderr
    assert NOTE not in done.stderr and "spec file 'missing.yaml' does not exist" in done.stderr


def test_edited_foldwise_code_runs_the_command_here(warm: Warm) -> None:
    source = REPO / "workflows" / "units.py"
    st = source.stat()
    before = code_fingerprint()
    try:
        os.utime(source, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # an edit, as far as mtimes tell
        assert code_fingerprint() != before
        done = warm.foldwise("run", "missing.yaml")
    finally:
        os.utime(source, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert done.returncode == 2
    assert "not using the warm server (foldwise's code changed since it started)" in done.stderr, done.stderr
    assert NOTE not in done.stderr


def test_opt_outs_and_commands_that_never_go_to_the_server(warm: Warm) -> None:
    done = warm.foldwise("run", "missing.yaml", env={"FOLDWISE_WARM": "0"})
    assert done.returncode == 2 and "warm server" not in done.stderr
    done = warm.foldwise("run", "--help")
    assert done.returncode == 0 and "warm server" not in done.stderr and "--executor" in done.stdout
    done = warm.foldwise("cluster", "status", "--dir", str(warm.base / "none"))
    assert done.returncode == 0 and "warm server" not in done.stderr


def test_a_stale_socket_runs_the_command_here_without_a_word(tmp_path: Path) -> None:
    state = tmp_path / ".foldwise" / "cluster"
    state.mkdir(parents=True)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:  # bound, never listening: a dead server's file
        s.bind(str(state / SOCKET_NAME))
    env = {k: v for k, v in os.environ.items() if k != "FOLDWISE_WARM"}
    done = subprocess.run([*foldwise_cmd(), "run", "missing.yaml"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == ["foldwise: error: spec file 'missing.yaml' does not exist"]
