"""Lose a worker node while folds run on it; the run must finish with the fault-free OOF.

Run by test_faults.py in its own process (a process can `ray.init` only once and the
pytest session already holds a Ray): `python node_loss.py WORKDIR`, with WORKDIR/spec.json
(one model, type fault_adapters:LoggedLogistic, sleeping in fit). Writes
WORKDIR/result.json and WORKDIR/<scenario>-{faulty,clean}.parquet for the test to check.

A `ray.cluster_utils.Cluster` on this machine: a head with no CPUs (the driver's node,
where nothing runs) and worker nodes with 2 CPUs each. Two scenarios:

- `prepared`: the data is prepared by a task on worker node 1 (the only node with CPUs),
  so its output, the fold plan and the folds in flight all live on node 1 when it is
  killed (SIGKILL of its raylet, no graceful shutdown). Only then does node 2 join. (The
  driver has fetched the data and plan for its own use by then, so Ray may take them from
  that copy rather than re-run their tasks; either way no fold may come out different.)
- `cached`: same data, another C, so the prepared data and fold plan come from the cache
  and enter Ray by a driver-side put (their primary copy on the head); node 2 is killed
  mid-fold and node 3 joins.

The fault-free OOF of both specs comes first, in this process without Ray (`--executor
local`, which gives Ray's OOF bit for bit: test_run_more.py) and without the adapter's
sleep (it only widens the window in which a node is killed; it changes no prediction).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parents[2]))  # the repo root: tasks, workflows, tests importable


def in_flight(log: str) -> list[str]:
    from tests.workflows_tests.fault_adapters import attempts

    rows = attempts(log)
    started = Counter(tag for event, tag, _ in rows if event == "start")
    ended = Counter(tag for event, tag, _ in rows if event == "end")
    return sorted(tag for tag in started if started[tag] > ended[tag])


def faulty_run(cluster, victim, spec: dict, work: Path, name: str, temp_dir: str) -> tuple[dict, object]:
    """Run the spec in a thread; here (node changes need the main thread) kill `victim` (no
    grace) as soon as a fold is fitting on it, then add a fresh node."""
    from foldwise.workflows.commands.run import run_cv
    from tests.workflows_tests.fault_adapters import attempts

    log = spec["models"][0]["params"]["log"]
    box: dict = {}

    def run() -> None:
        try:
            box["result"] = run_cv(spec, out=work / f"{name}-out", tracking_uri=f"sqlite:///{work / 'm.db'}",
                                   cache_root=str(work / "cache"))
        except BaseException as e:  # noqa: BLE001 - re-raised in the main thread
            box["error"] = e

    thread = threading.Thread(target=run, daemon=True)
    t0 = time.time()
    thread.start()
    while time.time() - t0 < 180 and thread.is_alive() and not in_flight(log):
        time.sleep(0.05)
    fitting = in_flight(log)
    cluster.remove_node(victim, allow_graceful=False)
    removed_after = time.time() - t0
    new_node = cluster.add_node(num_cpus=2, temp_dir=temp_dir)
    thread.join(timeout=240)
    if "error" in box or "result" not in box:
        raise RuntimeError(f"{name}: the run did not finish") from box.get("error")
    result = box["result"]
    result.oof.to_parquet(work / f"{name}-faulty.parquet")
    starts = Counter(tag for event, tag, _ in attempts(log) if event == "start")
    facts = {"in_flight": fitting, "removed_after_s": removed_after, "starts": dict(starts),
             "cached": result.summary["models"]["m"]["cached"], "cv_score": result.summary["ensemble"]["cv_score"],
             "wall_seconds": result.summary["wall_seconds"]}
    return facts, new_node


def main(work: Path) -> None:
    import ray
    from ray.cluster_utils import Cluster

    from foldwise.workflows.commands.run import run_cv

    t0 = time.time()
    spec = json.loads((work / "spec.json").read_text())
    cached_spec = json.loads(json.dumps(spec))
    cached_spec["models"][0]["params"]["C"] = 0.3
    cached_spec["models"][0]["params"]["log"] = str(work / "attempts-cached.log")
    os.environ["FAULT_ADAPTERS_NO_SLEEP"] = "1"  # the sleep only widens the window to kill a node in
    for name, s in (("prepared", spec), ("cached", cached_spec)):
        clean = run_cv(s, out=work / f"{name}-clean-out", tracking_uri=f"sqlite:///{work / 'm.db'}",
                       cache_root=str(work / "clean-cache"), no_cache=True, executor="local")
        clean.oof.to_parquet(work / f"{name}-clean.parquet")
    del os.environ["FAULT_ADAPTERS_NO_SLEEP"]  # before any node starts: its workers inherit the environment
    for s in (spec, cached_spec):
        Path(s["models"][0]["params"]["log"]).unlink()  # count only the attempts on the cluster
    temp_dir = tempfile.mkdtemp(prefix="fw-ray-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "temp_dir": temp_dir,
                                                             "include_dashboard": False})
    out: dict = {"seconds": {"clean_runs": time.time() - t0}}
    try:
        node1 = cluster.add_node(num_cpus=2, temp_dir=temp_dir)
        ray.init(address=cluster.address, logging_level="ERROR", log_to_driver=False)
        out["seconds"]["cluster_up"] = time.time() - t0
        out["prepared"], node2 = faulty_run(cluster, node1, spec, work, "prepared", temp_dir)
        out["cached"], _ = faulty_run(cluster, node2, cached_spec, work, "cached", temp_dir)
        out["seconds"]["done"] = time.time() - t0
        out["alive_nodes"] = sum(1 for n in ray.nodes() if n["Alive"])
    finally:
        (work / "result.json").write_text(json.dumps(out, indent=2))
        ray.shutdown()
        cluster.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
