"""A real desktop cluster other nodes can join: `foldwise cluster up --listen ADDRESS` (Ray head with its own ports and
temp dir + the MLflow server from infra/), a second Ray node joined to it, jobs submitted with
`foldwise submit` through the Ray Jobs API with token auth on, outputs and cache on a real
S3-compatible server, and `foldwise cluster down` leaving no process behind.

One cluster serves the whole module (tests run in file order; the last one stops it)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import requests

from tests.infra_tests.conftest import REPO, alive, foldwise_cmd, free_port, process_tree, short_tmp_dir, terminate

SPEC = "workflows/examples/breast_cancer.yaml"
TWO_NODES = "tests/infra_tests/two_nodes.yaml"


@dataclass
class Cluster:
    dir: Path
    dashboard: str
    mlflow: str
    gcs: str
    env: dict[str, str]
    token: str
    head_procs: list[psutil.Process]
    node2: subprocess.Popen
    node2_procs: list[psutil.Process]
    up_stdout: str = ""

    def foldwise(self, *args: str, timeout: float = 300, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([*foldwise_cmd(), *args], cwd=REPO, env=env or self.env, capture_output=True,
                              text=True, timeout=timeout)

    def api(self, path: str, token: str | None = "ok") -> requests.Response:
        headers = {} if token is None else {"Authorization": f"Bearer {self.token if token == 'ok' else token}"}
        return requests.get(f"{self.dashboard}{path}", headers=headers, timeout=30)


def _clean_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "MLFLOW_TRACKING_URI", "FOLDWISE_OUTPUTS")}
    return env | extra


@pytest.fixture(scope="module")
def cluster(ray_token, s3_server):
    base = short_tmp_dir()
    env = _clean_env(s3_server["env"] | {"RAY_AUTH_TOKEN_PATH": str(ray_token), "RAY_DEDUP_LOGS": "0"})
    dash_port, mlflow_port, ray_port = free_port(), free_port(), free_port()
    node2 = None
    try:
        up = subprocess.run([*foldwise_cmd(), "cluster", "up", "--dir", str(base / "c"), "--ray-port", str(ray_port),
                             "--dashboard-port", str(dash_port), "--mlflow-port", str(mlflow_port), "--cpus", "1", "--gpus", "2",
                             "--temp-dir", str(base / "ray"), "--listen", outward_ip(), "--no-warm"], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=300)
        assert up.returncode == 0, up.stdout + up.stderr
        state = json.loads((base / "c" / "cluster.json").read_text())
        assert [s["name"] for s in state["services"]] == ["mlflow", "ray"]  # --no-warm: no warm command server
        head_procs = [p for s in state["services"] for p in process_tree(s["pid"])]
        ports = [str(free_port()) for _ in range(6)]
        with open(base / "node2.log", "wb") as log:
            node2 = subprocess.Popen(
                [sys.executable, "-m", "ray.scripts.scripts", "start", "--address", state["gcs_address"], "--block",
                 "--num-cpus", "1", "--disable-usage-stats", "--temp-dir", str(base / "ray"),
                 "--node-manager-port", ports[0], "--object-manager-port", ports[1],
                 "--dashboard-agent-listen-port", ports[2], "--dashboard-agent-grpc-port", ports[3],
                 "--runtime-env-agent-port", ports[4], "--metrics-export-port", ports[5]],
                env=env | {"RAY_AUTH_MODE": "token"}, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        c = Cluster(dir=base / "c", dashboard=state["dashboard_url"], mlflow=state["mlflow_url"],
                    gcs=state["gcs_address"], env=env, token=ray_token.read_text().strip(), head_procs=head_procs,
                    node2=node2, node2_procs=[], up_stdout=up.stdout)
        deadline = time.monotonic() + 120
        while len(alive_nodes(c)) < 2:
            assert node2.poll() is None, (base / "node2.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the second node never joined"
            time.sleep(0.5)
        c.node2_procs = process_tree(node2.pid)
        yield c
    finally:
        if (base / "c" / "cluster.json").exists():  # a test failed before the last one ran `down`
            subprocess.run([*foldwise_cmd(), "cluster", "down", "--dir", str(base / "c")], cwd=REPO, env=env,
                           capture_output=True, timeout=120)
        if node2 is not None:
            terminate(process_tree(node2.pid))
        shutil.rmtree(base, ignore_errors=True)


def outward_ip() -> str:
    """This machine's network address: a second node can join only a head that listens there
    (`cluster up --listen`; the default, 127.0.0.1, is for one machine: test_cluster_ports.py)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("192.0.2.1", 9))  # no packet is sent for a UDP connect
        return s.getsockname()[0]


def alive_nodes(c: Cluster) -> list[dict]:
    try:
        r = c.api("/api/v0/nodes?limit=100&detail=1")
    except requests.RequestException:
        return []
    if r.status_code != 200:
        return []
    return [n for n in r.json()["data"]["result"]["result"] if n["state"] == "ALIVE"]


@pytest.fixture(scope="module")
def bc_job(cluster):
    """README's main job, submitted to the cluster and waited for."""
    tick = time.monotonic()
    done = cluster.foldwise("submit", SPEC, "--address", cluster.dashboard, "--wait")
    return done, time.monotonic() - tick


def job_id_of(done: subprocess.CompletedProcess) -> str:
    first = next(line for line in done.stdout.splitlines() if line.startswith("submitted job "))
    return first.split()[2]


# --------------------------------------------------------------------------- the main job


def test_cluster_up_prints_addresses_and_how_to_submit(cluster):
    out = cluster.up_stdout
    assert "Ray token authentication: on" in out
    assert f"Ray dashboard    {cluster.dashboard}" in out and f"MLflow           {cluster.mlflow}" in out
    assert f"Ray head         {cluster.gcs}" in out
    assert f"foldwise submit workflows/examples/breast_cancer.yaml --address {cluster.dashboard} --wait" in out
    head = next(n for n in alive_nodes(cluster) if n["is_head_node"])
    assert head["resources_total"]["GPU"] == 2 and head["resources_total"]["CPU"] == 1  # --gpus 2 --cpus 1
    status = cluster.foldwise("cluster", "status", "--dir", str(cluster.dir), timeout=60)
    assert status.returncode == 0 and status.stdout.count(" running  pid ") == 2


def test_submit_wait_succeeds_and_the_mlflow_server_holds_the_run(cluster, bc_job):
    from mlflow.tracking import MlflowClient

    done, _ = bc_job
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "SUCCEEDED" in done.stdout.splitlines()[-1]
    summary_path = next(line.strip() for line in reversed(done.stdout.splitlines()) if line.strip().endswith("summary.json"))
    # outputs went to the cluster's FOLDWISE_OUTPUTS, not into the job's temporary working dir
    assert summary_path.startswith(str(cluster.dir / "outputs" / "breast-cancer"))
    summary = json.loads(Path(summary_path).read_text())
    assert summary["tracking_uri"] == cluster.mlflow
    assert 0.98 < summary["ensemble"]["cv_score"] <= 1.0

    client = MlflowClient(tracking_uri=cluster.mlflow)
    run = client.get_run(summary["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.tags["foldwise.command"] == "run"
    assert run.data.metrics["cv_score"] == pytest.approx(summary["ensemble"]["cv_score"])
    children = client.search_runs([run.info.experiment_id], f"tags.`mlflow.parentRunId` = '{run.info.run_id}'")
    assert sorted(r.info.run_name for r in children) == ["lgbm", "logreg"]
    # artifacts are served by the server (mlflow-artifacts:/), stored under the cluster's data dir
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")
    assert {"summary.json", "oof.parquet", "leaderboard.md"} <= {a.path for a in client.list_artifacts(run.info.run_id)}
    local = client.download_artifacts(run.info.run_id, "summary.json", str(cluster.dir.parent / "dl"))
    assert json.loads(Path(local).read_text())["run_id"] == summary["run_id"]
    assert list((cluster.dir / "mlflow" / "artifacts").rglob("summary.json"))


def test_token_auth_is_on_and_works(cluster, bc_job):
    done, _ = bc_job
    assert cluster.api("/api/jobs/", token=None).status_code == 401
    assert cluster.api("/api/jobs/", token="not-the-token").status_code == 403
    wrong = cluster.foldwise("jobs", "--address", cluster.dashboard, env=cluster.env | {"RAY_AUTH_TOKEN": "not-the-token"},
                             timeout=60)
    assert wrong.returncode == 2
    assert wrong.stderr.strip().count("\n") == 0 and "rejected this machine's Ray token" in wrong.stderr
    listed = cluster.foldwise("jobs", "--address", cluster.dashboard, timeout=60)
    assert listed.returncode == 0, listed.stderr
    job = job_id_of(done)
    assert job in listed.stdout and "SUCCEEDED" in listed.stdout
    logs = cluster.foldwise("logs", job, "--address", cluster.dashboard, timeout=60)
    assert logs.returncode == 0 and "summary.json" in logs.stdout and "train_fold" not in logs.stderr
    missing = cluster.foldwise("logs", "no-such-job", "--address", cluster.dashboard, timeout=60)
    assert missing.returncode == 2 and "no job 'no-such-job'" in missing.stderr


def _driver_jobs(c: Cluster) -> list[dict]:
    r = c.api("/api/jobs/")
    assert r.status_code == 200, r.text[:300]
    return [j for j in r.json() if j.get("type") == "DRIVER"]


def test_a_run_from_the_clusters_folder_joins_its_head_instead_of_starting_a_ray(cluster, tmp_path):
    """`foldwise run` in the folder `cluster up` ran from (.foldwise/cluster there) drives the
    running head: its driver is one of the head's jobs, and no second Ray starts on these cores."""
    project = tmp_path / "project"
    (project / ".foldwise").mkdir(parents=True)
    (project / ".foldwise" / "cluster").symlink_to(cluster.dir)
    before = {j["job_id"] for j in _driver_jobs(cluster)}
    done = subprocess.run([*foldwise_cmd(), "run", str(REPO / SPEC), "--executor", "ray", "--no-progress",
                           "--out", str(tmp_path / "out")], cwd=project, env=cluster.env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"joining the desktop cluster in .foldwise/cluster (Ray head {cluster.gcs}" in done.stderr
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["executor"] == "ray" and 0.98 < summary["ensemble"]["cv_score"] <= 1.0
    new = [j for j in _driver_jobs(cluster) if j["job_id"] not in before]
    assert len(new) == 1 and new[0]["status"] == "SUCCEEDED", new
    # the run kept its own tracking (this folder's sqlite), not the cluster's server
    assert summary["tracking_uri"].startswith("sqlite:") and (project / "mlflow.db").exists()


# --------------------------------------------------------------------------- two nodes, shared storage on S3


@pytest.fixture(scope="module")
def s3_job(cluster, s3_server):
    """A job whose fold tasks spread over both nodes, with outputs and cache in the S3 bucket."""
    bucket = s3_server["bucket"]
    out, cache = f"s3://{bucket}/jobs/two-nodes", f"s3://{bucket}/cache"
    done = cluster.foldwise("submit", TWO_NODES, "--address", cluster.dashboard, "--wait", "--",
                            "--out", out, "--cache", cache)
    return done, out, cache


def test_fold_tasks_ran_on_both_nodes(cluster, s3_job):
    done, _, _ = s3_job
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    info = cluster.api(f"/api/jobs/{job_id_of(done)}").json()
    tasks = cluster.api(f"/api/v0/tasks?limit=1000&detail=1&filter_keys=job_id&filter_predicates=%3D"
                        f"&filter_values={info['job_id']}").json()["data"]["result"]["result"]
    folds = [t for t in tasks if t["name"].startswith("train_fold[") and t["state"] == "FINISHED"]
    assert len(folds) == 6
    nodes = {t["node_id"] for t in folds}
    assert len(alive_nodes(cluster)) == 2
    assert nodes == {n["node_id"] for n in alive_nodes(cluster)}, "both nodes should have run fold tasks"


def test_outputs_and_cache_on_s3_are_shared(cluster, s3_server, s3_job, tmp_path):
    from foldwise.workflows.commands.run import run_cv

    done, out, cache = s3_job
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    fs, bucket = s3_server["fs"], s3_server["bucket"]
    assert f"{out}/summary.json" in done.stdout
    fs.invalidate_cache()
    assert {p.rsplit("/", 1)[1] for p in fs.ls(f"{bucket}/jobs/two-nodes")} >= {"summary.json", "oof.parquet",
                                                                               "leaderboard.md", "spec.yaml"}
    summary = json.loads(fs.cat_file(f"{bucket}/jobs/two-nodes/summary.json"))
    assert summary["outputs"]["oof"] == f"{out}/oof.parquet"
    assert summary["models"]["slow_logreg"]["cached"] == [False] * 6
    assert len(fs.find(f"{bucket}/cache/fold")) == 6  # written by the job's driver on the cluster

    # this machine (no Ray at all) reuses every fold the cluster computed, through the bucket
    local = run_cv(REPO / TWO_NODES, out=f"s3://{bucket}/laptop/two-nodes", cache_root=cache, executor="local",
                   tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert local.summary["models"]["slow_logreg"]["cached"] == [True] * 6
    assert local.summary["ensemble"]["cv_score"] == pytest.approx(summary["ensemble"]["cv_score"], abs=1e-12)
    assert local.out_dir == f"s3://{bucket}/laptop/two-nodes"
    assert fs.exists(f"{bucket}/laptop/two-nodes/oof.parquet")


# --------------------------------------------------------------------------- submit without waiting, stop


def test_submit_without_wait_then_stop_marks_the_run_failed(cluster):
    from mlflow.tracking import MlflowClient

    # folds of 10 s (30 s of work on 2 CPUs): still mid-run whenever its runs open (at once here,
    # or once a CPU frees up) and however slowly this machine starts the job; stopped, it ends early
    done = cluster.foldwise("submit", TWO_NODES, "--address", cluster.dashboard, "--", "--no-cache",
                            "--set", "models.0.params.sleep=10", timeout=120)
    assert done.returncode == 0, done.stderr
    job = done.stdout.strip().splitlines()[-1]
    assert job == job_id_of(done) and job.startswith("foldwise-run-two-nodes-")
    client = MlflowClient(tracking_uri=cluster.mlflow)
    experiment = client.get_experiment_by_name("two-nodes").experiment_id  # created by the S3 job above
    deadline, parents = time.monotonic() + 120, []
    while not parents:  # stop it mid-run, once its parent run and its child exist
        assert time.monotonic() < deadline, cluster.api(f"/api/jobs/{job}").json()
        running = client.search_runs([experiment], "attributes.status = 'RUNNING' and tags.`foldwise.command` = 'run'")
        if len(running) == 2:
            parents = [r for r in running if "mlflow.parentRunId" not in r.data.tags]
        time.sleep(0.5)
    stopped = cluster.foldwise("stop", job, "--address", cluster.dashboard, timeout=120)
    assert stopped.returncode == 0, stopped.stderr
    assert f"job {job}: STOPPED" in stopped.stdout
    assert cluster.api(f"/api/jobs/{job}").json()["status"] == "STOPPED"
    run = client.get_run(parents[0].info.run_id)
    assert run.info.status == "FAILED"  # the driver was interrupted, not killed: it closed its runs
    kids = client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{run.info.run_id}'")
    assert [k.info.status for k in kids] == ["FAILED"]
    again = cluster.foldwise("stop", job, "--address", cluster.dashboard, timeout=60)
    assert again.returncode == 0 and "already ended: STOPPED" in again.stdout


# --------------------------------------------------------------------------- ports with --listen


def test_with_listen_only_the_documented_ports_listen_on_every_interface(cluster):
    """What docs/clusters.md tells users to firewall is exactly what listens beyond loopback and
    ADDRESS: a new wildcard port, or one Ray stops opening, fails this (after jobs ran: workers exist)."""
    from foldwise.infra.cluster import EVERY_INTERFACE_WITH_LISTEN

    state = json.loads((cluster.dir / "cluster.json").read_text())
    listen, ports = state["listen"], state["ports"]
    assert listen == outward_ip() and cluster.gcs == f"{listen}:{ports['--port']}"
    by_port = {port: name for name, port in ports.items()}
    wildcard, elsewhere, workers = set(), [], 0
    for p in alive([p for s in state["services"] for p in process_tree(s["pid"])]):
        try:
            conns = [c for c in p.net_connections("inet") if c.status == psutil.CONN_LISTEN]
            # a Ray core worker's gRPC port (OS-assigned): task workers, and the dashboard agent once it ran a job
            worker = any("default_worker.py" in part for part in p.cmdline()) or p.name() == "ray::DashboardAgent"
        except psutil.Error:
            continue
        for c in conns:
            ip = c.laddr.ip.removeprefix("::ffff:")
            if ip in ("127.0.0.1", "::1") or (ip == listen and c.laddr.port in by_port):
                continue
            if ip in ("0.0.0.0", "::") and c.laddr.port in by_port:
                wildcard.add(by_port[c.laddr.port])
            elif ip in ("0.0.0.0", "::") and worker:
                workers += 1
            else:
                elsewhere.append((ip, c.laddr.port, p.name()))
    assert not elsewhere, f"listening on an undocumented address or port: {elsewhere}"
    assert wildcard == set(EVERY_INTERFACE_WITH_LISTEN)
    assert workers, "the jobs' workers should be listening (documented: on every interface)"


# --------------------------------------------------------------------------- teardown (runs last)


def test_down_leaves_no_process_and_keeps_data(cluster):
    services = json.loads((cluster.dir / "cluster.json").read_text())["services"]
    procs = alive([*cluster.head_procs, *[p for s in services for p in process_tree(s["pid"])]])
    assert procs, "the cluster's processes should be running before `down`"
    terminate(process_tree(cluster.node2.pid))  # the extra node first (not part of the desktop cluster)
    assert not alive(cluster.node2_procs)
    down = cluster.foldwise("cluster", "down", "--dir", str(cluster.dir), timeout=120)
    assert down.returncode == 0, down.stderr
    assert not alive(procs), f"left running: {[(p.pid, p.name()) for p in alive(procs)]}"
    assert not (cluster.dir / "cluster.json").exists()
    assert (cluster.dir / "mlflow" / "mlflow.db").exists()  # data kept
    assert list((cluster.dir / "outputs" / "breast-cancer").glob("*/summary.json"))
    again = cluster.foldwise("cluster", "down", "--dir", str(cluster.dir), timeout=60)
    assert again.returncode == 0 and "nothing to stop" in again.stdout


# --------------------------------------------------------------------------- no cluster at all


def test_submit_to_an_address_where_nothing_listens_fails_fast():
    port = free_port()
    tick = time.monotonic()
    done = subprocess.run([*foldwise_cmd(), "submit", SPEC, "--address", f"http://127.0.0.1:{port}", "--wait"],
                          cwd=REPO, capture_output=True, text=True, timeout=60, env=_clean_env({}))
    seconds = time.monotonic() - tick
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0, done.stderr
    assert f"cannot reach a Ray cluster at http://127.0.0.1:{port} (connection refused)" in done.stderr
    assert seconds < 20  # seconds, not a hang (most of it is Python start-up on a busy machine)
