"""A desktop cluster (`foldwise cluster up`, no --listen) keeps every listening socket on loopback:
the head's processes (GCS, raylet, object manager, Ray client server, dashboard, its agents, the
runtime-env agent, every metrics exporter), a task's worker, a driver that joined with
`--address 127.0.0.1:PORT`, a job's driver, and the MLflow server. Read from the kernel (psutil),
so anything new that Ray opens on another interface fails the test. Also: bad --listen values
are refused with one line, exit 2, nothing started or written."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import psutil
import pytest
import requests

from foldwise.infra.cluster import PORT_ENV, PORT_FLAGS, ClusterConfig, ClusterConfigError, check_config
from tests.infra_tests.conftest import REPO, alive, foldwise_cmd, free_port, process_tree, short_tmp_dir

LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}

# A driver that joins like `foldwise run --address 127.0.0.1:PORT` (foldwise's executor), runs one
# task that reports its worker's listening sockets, and reports its own.
DRIVER = """
import json, os, sys, psutil
from foldwise.workflows.engine.executor import RayExecutor, Slot

def listening(pid):
    return [[c.laddr.ip, c.laddr.port] for c in psutil.Process(pid).net_connections("inet")
            if c.status == psutil.CONN_LISTEN]

def task():
    return os.getpid(), listening(os.getpid())

ex = RayExecutor(address=sys.argv[1])
worker_pid, worker = ex.get(ex.submit(task, slot=Slot(cpus=1)))
print(json.dumps({"worker_pid": worker_pid, "worker": worker, "driver": listening(os.getpid())}))
ex.close()
"""


def listening(procs: list[psutil.Process]) -> list[tuple[str, int, str]]:
    out = []
    for p in alive(procs):
        try:
            out += [(c.laddr.ip, c.laddr.port, p.name()) for c in p.net_connections("inet")
                    if c.status == psutil.CONN_LISTEN]
        except psutil.Error:
            pass
    return out


def outward_ip() -> str:
    """This machine's address on its network (what Ray would advertise without the loopback switch)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("192.0.2.1", 9))  # no packet is sent for a UDP connect
        return s.getsockname()[0]


@pytest.fixture(scope="module")
def loopback_cluster(ray_token):
    base = short_tmp_dir()
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "MLFLOW_TRACKING_URI", "FOLDWISE_OUTPUTS",
                        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")}
    env |= {"RAY_AUTH_TOKEN_PATH": str(ray_token), "FOLDWISE_CACHE_KEY": "ab" * 32}
    ports = {"--ray-port": free_port(), "--dashboard-port": free_port(), "--mlflow-port": free_port()}
    try:
        up = subprocess.run([*foldwise_cmd(), "cluster", "up", "--dir", str(base / "c"), "--cpus", "1",
                             "--temp-dir", str(base / "ray"), *[str(x) for kv in ports.items() for x in kv]],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert up.returncode == 0, up.stdout + up.stderr
        yield base, env, json.loads((base / "c" / "cluster.json").read_text()), up.stdout
    finally:
        if (base / "c" / "cluster.json").exists():
            subprocess.run([*foldwise_cmd(), "cluster", "down", "--dir", str(base / "c")], cwd=REPO, env=env,
                           capture_output=True, timeout=120)
        shutil.rmtree(base, ignore_errors=True)


def submit_job(state: dict, token: str, entrypoint: str) -> str:
    headers = {"Authorization": f"Bearer {token}"}
    r = requests.post(f"{state['dashboard_url']}/api/jobs/", json={"entrypoint": entrypoint}, headers=headers,
                      timeout=30)
    assert r.status_code == 200, r.text
    job = r.json()["submission_id"]
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        info = requests.get(f"{state['dashboard_url']}/api/jobs/{job}", headers=headers, timeout=30).json()
        if info["status"] in ("SUCCEEDED", "FAILED", "STOPPED"):
            logs = requests.get(f"{state['dashboard_url']}/api/jobs/{job}/logs", headers=headers, timeout=30)
            assert info["status"] == "SUCCEEDED", logs.text[-3000:]
            return logs.json()["logs"]
        time.sleep(0.5)
    raise AssertionError(f"job {job} did not finish within 180 s")


def test_every_listening_socket_of_a_desktop_cluster_is_on_loopback(loopback_cluster, ray_token):
    base, env, state, up_stdout = loopback_cluster
    assert state["listen"] == "127.0.0.1" and state["gcs_address"] == f"127.0.0.1:{state['ports']['--port']}"
    assert "all on 127.0.0.1" in up_stdout
    assert set(state["ports"]) == {*PORT_FLAGS, *PORT_ENV}

    driver = subprocess.run([sys.executable, "-c", DRIVER, state["gcs_address"]], cwd=base, env=env | {
        "RAY_AUTH_MODE": "token"}, capture_output=True, text=True, timeout=180)
    assert driver.returncode == 0, driver.stderr[-3000:]
    joined = json.loads(driver.stdout.strip().splitlines()[-1])
    # A job's driver inherits the head's environment and joins through RAY_ADDRESS (127.0.0.1:PORT).
    job_logs = submit_job(state, ray_token.read_text().strip(),
                          "python -c \"import ray; ray.init(); print('job-node', ray.util.get_node_ip_address())\"")
    assert "job-node 127.0.0.1" in job_logs

    procs = [p for s in state["services"] for p in process_tree(s["pid"])]
    sockets = listening(procs)
    sockets += [(ip, port, "driver") for ip, port in joined["driver"]]
    sockets += [(ip, port, f"worker {joined['worker_pid']}") for ip, port in joined["worker"]]
    public = [s for s in sockets if s[0] not in LOOPBACK]
    assert not public, f"listening beyond loopback: {public}"

    # Not vacuous: every port cluster up fixed is open (on loopback), and so are the worker's and the driver's.
    ports = {port for _, port, _ in sockets}
    missing = {name: port for name, port in state["ports"].items() if port not in ports}
    assert not missing, f"not listening: {missing}; listening: {sorted(sockets)}"
    assert int(state["mlflow_url"].rsplit(":", 1)[1]) in ports
    assert joined["worker"] and joined["driver"]
    # and the head answers on loopback but not on this machine's network address
    gcs_port = state["ports"]["--port"]
    socket.create_connection(("127.0.0.1", gcs_port), timeout=3).close()
    with pytest.raises(OSError):
        socket.create_connection((outward_ip(), gcs_port), timeout=3).close()


def test_commands_from_the_clusters_folder_fork_from_its_warm_server_and_join_it(loopback_cluster):
    """`cluster up` started the warm command server as a recorded service; a `foldwise run` from the
    cluster's folder runs in it (said on stderr) and its forked child joins the desktop cluster's head
    (token auth, loopback switch); `up` again keeps the same server, or starts it again if it died."""
    base, env, state, up_stdout = loopback_cluster
    warm = [s for s in state["services"] if s["name"] == "warm"]
    assert len(warm) == 1 and "warm server" in up_stdout
    assert (base / "c").stat().st_mode & 0o777 == 0o700
    (base / ".foldwise").mkdir(exist_ok=True)
    if not (base / ".foldwise" / "cluster").exists():  # the cluster is in base/c; commands look in ./.foldwise/cluster
        (base / ".foldwise" / "cluster").symlink_to(base / "c")
    deadline = time.monotonic() + 240
    while not (base / "c" / "warm.sock").exists():
        assert time.monotonic() < deadline, (base / "c" / "warm-server.log").read_text()
        time.sleep(0.5)
    status = subprocess.run([*foldwise_cmd(), "cluster", "status", "--dir", str(base / "c")], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=60)
    assert f"warm   running  pid {warm[0]['pid']}" in status.stdout, status.stdout

    done = subprocess.run([*foldwise_cmd(), "run", str(REPO / "workflows/examples/breast_cancer.yaml"), "--executor", "ray",
                           "--set", "cv.folds=2", "--set", "models.1.params.n_estimators=20", "--no-progress",
                           "--tracking-uri", f"sqlite:///{base / 'warm.db'}", "--out", str(base / "warm-run")],
                          cwd=base, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "running in the desktop cluster's warm server" in done.stderr, done.stderr
    assert "joining the desktop cluster" in done.stderr, done.stderr
    summary = json.loads((base / "warm-run" / "summary.json").read_text())
    assert summary["executor"] == "ray" and summary["models"]["lgbm"]["fold_scores"]

    ports = ["--ray-port", str(state["ports"]["--port"]), "--dashboard-port", str(state["ports"]["--dashboard-port"]),
             "--mlflow-port", state["mlflow_url"].rsplit(":", 1)[1]]
    again = subprocess.run([*foldwise_cmd(), "cluster", "up", "--dir", str(base / "c"), *ports], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "already up" in again.stderr, again.stderr
    kept = [s for s in json.loads((base / "c" / "cluster.json").read_text())["services"] if s["name"] == "warm"]
    assert kept == warm

    # A warm server that died is started again by the next `up` (Ray and MLflow kept), and recorded.
    os.kill(warm[0]["pid"], signal.SIGKILL)
    psutil.wait_procs(process_tree(warm[0]["pid"]), timeout=10)
    again = subprocess.run([*foldwise_cmd(), "cluster", "up", "--dir", str(base / "c"), *ports], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "already up" in again.stderr, again.stderr
    services = json.loads((base / "c" / "cluster.json").read_text())["services"]
    assert [s for s in services if s["name"] != "warm"] == [s for s in state["services"] if s["name"] != "warm"]
    restarted = [s for s in services if s["name"] == "warm"]
    assert len(restarted) == 1 and restarted[0]["pid"] != warm[0]["pid"] and psutil.pid_exists(restarted[0]["pid"])


def test_cluster_down_stops_it(loopback_cluster):
    base, env, state, _ = loopback_cluster
    recorded = json.loads((base / "c" / "cluster.json").read_text())["services"]  # a warm server `up` restarted too
    procs = [p for s in (*state["services"], *recorded) for p in process_tree(s["pid"])]
    down = subprocess.run([*foldwise_cmd(), "cluster", "down", "--dir", str(base / "c")], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert down.returncode == 0, down.stderr
    psutil.wait_procs(procs, timeout=10)
    assert not alive(procs)


@pytest.mark.parametrize(("listen", "says"), [
    ("0.0.0.0", "names no single address"),
    ("127.0.0.2", "use 127.0.0.1"),
    ("nonsense", "is not an IP address"),
    ("203.0.113.7", "is not an address of this machine"),  # TEST-NET-3: never one of ours
])
def test_bad_listen_is_refused_before_anything_starts(tmp_path, listen, says):
    with pytest.raises(ClusterConfigError, match=says):
        check_config(tmp_path / "c", ClusterConfig(listen=listen, ray_port=free_port(), dashboard_port=free_port(),
                                                   mlflow_port=free_port()))


def test_bad_listen_on_the_command_line_exits_2_with_one_line(tmp_path):
    done = subprocess.run([*foldwise_cmd(), "cluster", "up", "--dir", str(tmp_path / "c"), "--listen", "0.0.0.0"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1 and "--listen: 0.0.0.0" in done.stderr
    assert not (tmp_path / "c").exists()
