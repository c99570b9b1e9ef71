"""Clean stops: SIGTERM to `foldwise run` stops everything it started and leaves no run RUNNING;
partial cache writes are pruned once their writer is gone; a failure writing the outputs leaves
the model runs FAILED with their parent, not FINISHED."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest
import yaml

from foldwise.workflows.commands.run import run_cv
from foldwise.workflows.engine.cache import Cache
from foldwise.workflows.errors import RunFailed

REPO = Path(__file__).resolve().parents[2]
SLOW = "tests.workflows_tests.adapters:SlowLogistic"


@pytest.fixture()
def data(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(200, 4)), columns=list("pqrs"))
    frame["y"] = (frame.p + rng.normal(size=200) > 0).astype(int)
    frame.to_csv(tmp_path / "d.csv", index=False)
    return tmp_path / "d.csv"


def statuses(uri: str, experiment: str) -> dict[str, str]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    return {r.info.run_name: r.info.status for r in client.search_runs([exp.experiment_id])}


def test_sigterm_stops_a_run_and_everything_it_started(tmp_path: Path, data: Path) -> None:
    spec = {"name": "sigterm", "data": {"train": str(data), "target": "y"}, "cv": {"folds": 6, "seed": 1},
            "models": [{"name": "slow", "type": SLOW, "params": {"sleep": 2.0}}]}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    cache = tmp_path / "cache"
    proc = subprocess.Popen([sys.executable, "-m", "foldwise", "run", str(tmp_path / "s.yaml"), "--tracking-uri", uri,
                             "--no-progress", "--cache", str(cache), "--executor", "ray"], cwd=REPO, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    started: list[psutil.Process] = []
    try:
        deadline = time.time() + 180
        while time.time() < deadline and proc.poll() is None and len(list((cache / "fold").glob("*.pkl"))
                                                                      if (cache / "fold").exists() else []) < 1:
            time.sleep(0.2)
        assert proc.poll() is None, "the run ended before it could be stopped"
        started = psutil.Process(proc.pid).children(recursive=True)
        assert any("raylet" in p.name() or "gcs_server" in p.name() for p in started), [p.name() for p in started]
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 1 and "interrupted" in err, err[-2000:]
    assert "Traceback" not in err
    _, left = psutil.wait_procs(started, timeout=30)
    assert [p for p in left if p.status() != psutil.STATUS_ZOMBIE] == [], "nothing it started keeps running"
    runs = statuses(uri, "sigterm")
    assert runs and set(runs.values()) == {"FAILED"}, runs
    assert len(list((cache / "fold").glob("*.pkl"))) >= 1, "finished folds stay cached"


def test_partial_writes_of_a_gone_writer_are_pruned_at_once(tmp_path: Path) -> None:
    cache = Cache(str(tmp_path / "cache"), key=b"k" * 32)
    cache.put("fold", "done", {"score": 1.0})
    tag = Path(next((tmp_path / "cache" / "fold").glob("*.pkl")).name)  # fold/done.pkl
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    from foldwise.workflows.engine import cache as cache_mod

    host = cache_mod._HOST
    gone = tmp_path / "cache" / "fold" / f"a.pkl.{'0' * 32}.{dead_pid}-{host}.tmp"
    live = tmp_path / "cache" / "fold" / f"b.pkl.{'1' * 32}.{os.getpid()}-{host}.tmp"
    foreign = tmp_path / "cache" / "fold" / f"c.pkl.{'2' * 32}.{dead_pid}-00000000.tmp"
    for p in (gone, live, foreign):
        p.write_bytes(b"partial")
    removed = {e.key for e in cache.prune(older_than_seconds=30 * 86400)}
    assert removed == {f"fold/{gone.name}"}, "only the dead writer's temp file goes, however young"
    assert live.exists() and foreign.exists(), "a live writer's file, and another machine's, are kept"
    assert (tmp_path / "cache" / "fold" / tag).exists()


def test_a_failure_writing_outputs_leaves_the_model_runs_failed(ray_cluster, tmp_path: Path, data: Path) -> None:
    spec = {"name": "outputs-fail", "data": {"train": str(data), "target": "y"}, "cv": {"folds": 3, "seed": 1},
            "models": [{"name": "lr", "estimator": "sklearn.linear_model.LogisticRegression"}]}
    out = tmp_path / "out"
    (out / "oof.parquet").mkdir(parents=True)  # the OOF file cannot be written: a folder holds its name
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    with pytest.raises(RunFailed):
        run_cv(spec, out=out, tracking_uri=uri, cache_root=str(tmp_path / "cache"))
    runs = statuses(uri, "outputs-fail")
    assert runs.get("lr") == "FAILED" and len(runs) == 2 and set(runs.values()) == {"FAILED"}, runs


def _noop() -> int:
    return 1


def test_a_task_no_node_can_hold_says_why_it_waits(ray_cluster, capfd) -> None:
    """On a cluster this process joined (here the session's 2-CPU one), a request larger than every node
    is not refused (an autoscaler may add one) but named at once, with the largest node, never silent."""
    from foldwise.workflows.engine.executor import RayExecutor, Slot

    ex = RayExecutor()
    capfd.readouterr()
    fits = ex.submit(_noop, slot=Slot(cpus=1), name="fits")
    assert ex.get(fits) == 1
    assert "warning" not in capfd.readouterr().err
    waits = ex.submit(_noop, slot=Slot(cpus=3), name="too_big")
    ex.submit(_noop, slot=Slot(cpus=3), name="too_big_again")
    err = capfd.readouterr().err
    ex.cancel([waits])
    node = ray_cluster.nodes()[0]["NodeManagerAddress"]
    assert f"foldwise: warning: too_big: asks for 3 CPU, but the largest node of the cluster ({node}) has 2 CPU" in err
    assert "too_big_again" not in err, "said once per kind of request"
