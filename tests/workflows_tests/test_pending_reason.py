"""A task waiting for a node that has not joined yet: after the threshold the driver prints Ray's
reason (no alive node has the resources, Ray's pending demand, nothing launching), and the task
completes once such a node joins. A real two-node Ray (ray.cluster_utils.Cluster) in a child
process, since this process may already drive the session's Ray; the threshold is 1 s."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from foldwise.workflows.engine.pending import PENDING_WARN_ENV, pending_warn_seconds
from foldwise.workflows.errors import InputError

# The GPU node joins only after the reason was printed (the stderr tee sees it), so the order
# reason -> join -> result is the program's, not a race. The task on the GPU node says which node ran it.
DRIVER = r"""
import shutil, sys, tempfile, threading, time
from ray.cluster_utils import Cluster
from foldwise.workflows.engine.executor import RayExecutor, Slot

class Tee:
    def __init__(self, inner):
        self.inner, self.seen = inner, threading.Event()
    def write(self, text):
        if "pending for" in text:
            self.seen.set()
        return self.inner.write(text)
    def __getattr__(self, name):  # fileno, isatty, ...: the real stream's
        return getattr(self.inner, name)

sys.stderr = tee = Tee(sys.stderr)
temp_dir = tempfile.mkdtemp(prefix="fw-ray-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "temp_dir": temp_dir,
                                                         "include_dashboard": False})
try:
    ex = RayExecutor(address=cluster.address, pending_warn_s=1.0)

    def fold():
        import ray
        return f"ran on {ray.get_runtime_context().get_node_id()}"

    def sleeper():  # fits the head: running past the threshold is not waiting, never reported
        time.sleep(4)
        return "slept"

    slow = ex.submit(sleeper, slot=Slot(cpus=1), name="cpu-fold")
    handle = ex.submit(fold, slot=Slot(cpus=1, gpus=1), name="gpu-fold")

    results = []  # the driver waits in a thread; nodes are added from the main thread (Ray needs that)
    getter = threading.Thread(target=lambda: results.extend([ex.get(handle), ex.get(slow)]), daemon=True)
    getter.start()
    assert tee.seen.wait(120), "no pending reason within 120 s"
    node = cluster.add_node(num_cpus=1, num_gpus=1, temp_dir=temp_dir)
    print(f"JOINED {node.node_id}", flush=True)
    getter.join(120)
    print("\n".join(results), flush=True)
    ex.close()
finally:
    cluster.shutdown()
    shutil.rmtree(temp_dir, ignore_errors=True)
"""


def test_a_task_waiting_for_a_node_says_why_then_runs_when_the_node_joins(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", PENDING_WARN_ENV)}
    env["RAY_AUTH_MODE"] = "disabled"  # the Cluster runs without a token; never ask for one
    done = subprocess.run([sys.executable, "-c", DRIVER], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=240)
    assert done.returncode == 0, done.stderr[-4000:]
    reason = [line for line in done.stderr.splitlines() if "pending for" in line]
    assert reason, done.stderr[-4000:]
    line = reason[0]
    assert line.startswith("foldwise: 1 task(s) pending for ") and "(gpu-fold)" in line
    assert "asks for 1 GPU, but the largest node of the cluster" in line and "has 0 GPU" in line
    assert "Ray's pending demand: {'CPU': 1.0, 'GPU': 1.0} x1" in line  # the autoscaler state's own words
    assert "no node is being launched" in line
    out = done.stdout.splitlines()
    joined = next(i for i, x in enumerate(out) if x.startswith("JOINED "))
    node_id = out[joined].split()[1]
    assert out[joined + 1:] == [f"ran on {node_id}", "slept"]  # ran after the join, on the node that joined
    assert len(reason) == 1 and "cpu-fold" not in done.stderr  # said once; the running task never


@pytest.mark.parametrize("raw", ["0", "-3", "soon", "nan"])
def test_a_bad_threshold_is_refused(monkeypatch, raw):
    monkeypatch.setenv(PENDING_WARN_ENV, raw)
    with pytest.raises(InputError, match=f"{PENDING_WARN_ENV}: '{raw}' is not a positive number of seconds"):
        pending_warn_seconds()


def test_preflight_refuses_a_bad_threshold_before_compute(monkeypatch, tmp_path):
    from foldwise.workflows.pipeline.preflight import preflight
    from foldwise.workflows.pipeline.spec import load_spec
    from tests.workflows_tests.test_preflight import base_spec

    (tmp_path / "d.csv").write_text("x0,y\n1,0\n2,1\n3,0\n4,1\n5,0\n6,1\n")
    monkeypatch.setenv(PENDING_WARN_ENV, "soon")
    with pytest.raises(InputError, match=PENDING_WARN_ENV):
        preflight(load_spec(base_spec(str(tmp_path / "d.csv"))), task="binary", out=tmp_path / "out",
                  cache_root=str(tmp_path / "cache"))
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()
