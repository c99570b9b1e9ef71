"""Never lose work: worker death, a lost node, a raising fold, an out-of-memory kill, `foldwise cache`.

Fit attempts are counted from the adapters' logs (tests/workflows_tests/fault_adapters.py),
never timed. Scenarios that need their own Ray (a multi-node Cluster, a memory monitor
with a low threshold) run in a subprocess, because this session already holds one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.model_selection import StratifiedKFold

from foldwise.workflows.cli.main import main
from foldwise.workflows.commands.run import run_cv
from foldwise.workflows.engine.cache import Cache
from foldwise.workflows.errors import RunFailed, SpecError
from foldwise.workflows.pipeline.spec import load_spec
from tests.workflows_tests.fault_adapters import attempts

REPO = Path(__file__).resolve().parents[2]
ADAPTERS = "tests.workflows_tests.fault_adapters"


def write_data(path: Path, rows: int = 600, cols: int = 5, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(rng.normal(size=(rows, cols)), columns=[f"x{i}" for i in range(cols)])
    frame["y"] = (frame.x0 + rng.normal(size=rows) > 0).astype(int)
    frame.to_csv(path, index=False)
    return frame


def spec(data: Path, *models: dict, folds: int = 4) -> dict:
    return {"name": "faults", "data": {"train": str(data), "target": "y"}, "cv": {"folds": folds, "seed": 7},
            "models": list(models), "ensemble": {"method": "mean"}}


def go(s: dict, ws: Path, **kw):
    return run_cv(s, out=ws / f"out{time.monotonic_ns()}", tracking_uri=f"sqlite:///{ws / 'm.db'}",
                  cache_root=str(ws / "cache"), **kw)


def starts(log: Path) -> Counter:
    return Counter(tag for event, tag, _ in attempts(str(log)) if event == "start")


@pytest.fixture()
def ws(tmp_path: Path) -> Path:
    write_data(tmp_path / "d.csv")
    return tmp_path


def test_a_crashed_worker_is_retried_and_the_oof_is_unchanged(ray_cluster, ws: Path) -> None:
    log, marker = ws / "attempts.log", ws / "died"
    s = spec(ws / "d.csv", {"name": "m", "type": f"{ADAPTERS}:DiesOnce", "params": {"log": str(log), "marker": str(marker)}})
    faulty = go(s, ws)
    died = marker.read_text().strip()
    counts = starts(log)
    assert counts[died] == 2, "the fold whose worker was SIGKILLed ran again"
    assert sum(counts.values()) == 5 and len(counts) == 4, "every other fold ran once"
    clean = go(s, ws, no_cache=True)  # the marker exists now: nothing dies
    assert sum(starts(log).values()) == 9
    pd.testing.assert_frame_equal(faulty.oof, clean.oof, check_exact=True)


def test_a_raising_fold_fails_fast_without_retries_and_completed_folds_stay_cached(ray_cluster, ws: Path) -> None:
    from mlflow.tracking import MlflowClient

    frame = pd.read_csv(ws / "d.csv")
    log, switch = ws / "attempts.log", ws / "bug-present"
    switch.write_text("")
    bad = {"name": "bad", "type": f"{ADAPTERS}:RaisesOnHeldOutRow",
           "params": {"log": str(log), "column": "x1", "value": float(frame.x1[0]), "switch": str(switch), "delay": 3.0}}
    good = {"name": "good", "type": f"{ADAPTERS}:LoggedLogistic", "params": {"log": str(log), "sleep": 1.5}}
    s = spec(ws / "d.csv", bad, good)
    with pytest.raises(RunFailed) as failure:
        go(s, ws)
    splitter = StratifiedKFold(4, shuffle=True, random_state=7)
    fold_of_row0 = next(k for k, (_, valid) in enumerate(splitter.split(frame, frame.y)) if 0 in valid)
    message = str(failure.value)
    assert message == (f"train_fold[model=bad, fold={fold_of_row0}]: "
                       "ValueError: in the held-out fold (planted user error)"), "model, fold and the error's last line"
    client = MlflowClient(f"sqlite:///{ws / 'm.db'}")
    assert client.get_run(failure.value.run_id).info.status == "FAILED"
    rows = attempts(str(log))
    failed_tag = next(tag for event, tag, _ in rows if event == "start" and
                      not any(e == "end" and t == tag for e, t, _ in rows))
    assert failed_tag.startswith("bad-") and starts(log)[failed_tag] == 1, "a user error is never retried"
    good_done = sum(1 for event, tag, _ in rows if event == "end" and tag.startswith("good-"))
    assert good_done < 4, "fails fast: the good model's slow folds were not all run to the end"

    entries = Cache(str(ws / "cache")).entries()
    kept_folds = sum(e.kind == "fold" for e in entries)
    assert kept_folds >= 1 and {"data", "plan"} <= {e.kind for e in entries}
    switch.unlink()  # the user fixes the bug (outside the spec: nothing in the keys changes)
    idle_by = time.time() + 60  # a task Ray had already handed to a worker may still run after the cancel
    while time.time() < idle_by and ray_cluster.available_resources().get("CPU", 0) < ray_cluster.cluster_resources()["CPU"]:
        time.sleep(0.2)
    time.sleep(0.5)
    before = sum(starts(log).values())
    rerun = go(s, ws).summary
    cached = sum(sum(m["cached"]) for m in rerun["models"].values())
    assert cached == kept_folds, "every fold completed before the failure comes from the cache"
    assert sum(starts(log).values()) - before == 8 - kept_folds, "only the rest is fitted"


def test_memory_reservation_reaches_ray_and_changing_it_refits_nothing(ray_cluster, ws: Path) -> None:
    log, granted = ws / "attempts.log", ws / "granted.jsonl"
    model = {"name": "m", "type": f"{ADAPTERS}:AssignedResources", "params": {"log": str(log), "resources_log": str(granted)},
             "resources": {"cpus": 1, "memory": "256MiB"}}
    s = spec(ws / "d.csv", model, folds=2)
    first = go(s, ws).summary
    assert [json.loads(line)["memory"] for line in granted.read_text().splitlines()] == [256 * 1024**2] * 2
    raised = json.loads(json.dumps(s))
    raised["models"][0]["resources"]["memory"] = "512MiB"
    again = go(raised, ws).summary
    assert again["models"]["m"]["cached"] == [True, True] and sum(starts(log).values()) == 2
    assert again["models"]["m"]["fold_scores"] == first["models"]["m"]["fold_scores"]


@pytest.mark.parametrize(("given", "bytes_"), [("4GiB", 4 * 1024**3), ("512MB", 512 * 1000**2), (1048576, 1048576),
                                               ("1.5G", 1_500_000_000), (None, None)])
def test_resources_memory_accepts_sizes(given, bytes_) -> None:
    s = load_spec({"name": "x", "data": {"train": "sklearn:iris"},
                   "models": [{"name": "m", "type": "lightgbm", "resources": {"memory": given}}]})
    assert s.models[0].resources.memory == bytes_


def test_a_bad_memory_size_is_one_line_naming_the_key(tmp_path: Path, capsys) -> None:
    with pytest.raises(SpecError, match=r"'models.0.resources.memory': expected a size such as 4GiB.*'lots'"):
        load_spec({"name": "x", "data": {"train": "sklearn:iris"},
                   "models": [{"name": "m", "type": "lightgbm", "resources": {"memory": "lots"}}]})
    path = tmp_path / "s.yaml"
    path.write_text("name: x\ndata: {train: 'sklearn:iris'}\nmodels: [{name: m, type: lightgbm}]\n")
    code = main(["run", str(path), "--set", "models.0.resources.memory=-1GiB", "--out", str(tmp_path / "o"),
                 "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "models.0.resources.memory" in err
    assert not (tmp_path / "o").exists() and not (tmp_path / "m.db").exists()


def test_out_of_memory_kill_is_reported_with_model_fold_and_remedy(tmp_path: Path) -> None:
    """A real kill by Ray's memory monitor, in a `foldwise run` subprocess with its own local Ray.

    The threshold is set below what the node already uses, so the kill does not hinge on
    what the other processes of this shared machine allocate meanwhile (the monitor then
    kills a fold within its first 100 ms, before the fold's own 512 MiB are touched). The
    data and fold plan come from the cache (filled by an in-process run first), so the
    folds are the only Ray tasks the monitor can pick.
    """
    import psutil

    write_data(tmp_path / "d.csv", rows=300)
    base = spec(tmp_path / "d.csv", {"name": "logreg", "type": "sklearn",
                                     "estimator": "sklearn.linear_model.LogisticRegression"}, folds=2)
    hog = spec(tmp_path / "d.csv", {"name": "hog", "type": f"{ADAPTERS}:MemoryHog", "params": {"mb": 512, "hold": 60}},
               folds=2)
    (tmp_path / "hog.yaml").write_text(yaml.safe_dump(hog))
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    run_cv(base, out=tmp_path / "base-out", tracking_uri=uri, cache_root=str(tmp_path / "cache"), executor="local")
    vm = psutil.virtual_memory()
    used = (vm.total - vm.available) / vm.total
    env = os.environ | {"FOLDWISE_CACHE": str(tmp_path / "cache"), "RAY_memory_monitor_refresh_ms": "100",
                        "RAY_task_oom_retry_delay_base_ms": "100",
                        "RAY_memory_usage_threshold": f"{max(0.01, used - 0.05):.4f}"}
    env.pop("RAY_task_oom_retries", None)
    env.pop("RAY_ADDRESS", None)
    exe = str(Path(sys.executable).with_name("foldwise"))
    run = subprocess.run([exe, "run", str(tmp_path / "hog.yaml"), "--tracking-uri", uri, "--no-progress",
                          "--executor", "ray"], cwd=REPO,
                         env=env, capture_output=True, text=True, timeout=240)
    assert run.returncode == 1, run.stderr[-3000:]
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("foldwise: failed: train_fold[model=hog, fold="), last
    for words in ("out of memory", "Ray's memory monitor killed", "models.0.resources.memory",
                  "--set models.0.resources.memory=4GiB", "fewer folds concurrently", "OutOfMemoryError: node memory",
                  "marked FAILED"):
        assert words in last, words
    # Ray alone retries OOM kills forever (the run would never end); foldwise bounds them.
    assert "There are 1 oom retries remaining" in run.stdout + run.stderr, "OOM_RETRIES = 2 reached Ray"
    from mlflow.tracking import MlflowClient

    run_id = last.split("MLflow run ")[1].split()[0]
    assert MlflowClient(uri).get_run(run_id).info.status == "FAILED"


def test_losing_a_worker_node_mid_fold_gives_the_fault_free_oof(tmp_path: Path) -> None:
    """A head (no CPUs) and worker nodes from ray.cluster_utils.Cluster; tests/workflows_tests/node_loss.py."""
    write_data(tmp_path / "d.csv", rows=3000, cols=10)  # prepared data > 100 KiB: it lives in the object store
    log = tmp_path / "attempts-prepared.log"
    s = spec(tmp_path / "d.csv", {"name": "m", "type": f"{ADAPTERS}:LoggedLogistic",
                                  "params": {"log": str(log), "sleep": 1.5}})
    (tmp_path / "spec.json").write_text(json.dumps(s))
    env = os.environ | {"FOLDWISE_CACHE": str(tmp_path / "cache")}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "workflows_tests" / "node_loss.py"), str(tmp_path)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads((tmp_path / "result.json").read_text())
    for scenario in ("prepared", "cached"):
        facts = result[scenario]
        assert facts["in_flight"], f"{scenario}: a fold was running on the node when it was removed"
        for tag in facts["in_flight"]:
            assert facts["starts"][tag] >= 2, f"{scenario}: the fold in flight on the lost node ran again"
        assert len(facts["starts"]) == 4 and facts["cached"] == [False] * 4
        faulty = pd.read_parquet(tmp_path / f"{scenario}-faulty.parquet")
        clean = pd.read_parquet(tmp_path / f"{scenario}-clean.parquet")
        pd.testing.assert_frame_equal(faulty, clean, check_exact=True)
    assert result["alive_nodes"] == 2  # the head and the last node added


def test_cache_ls_and_prune(tmp_path: Path, capsys) -> None:
    root = tmp_path / "cache"
    cache = Cache(str(root))
    now = time.time()
    for kind, key, size, age_days in (("data", "d1", 3000, 10), ("plan", "p1", 100, 10), ("fold", "f1", 2048, 9),
                                      ("fold", "f2", 4096, 1), ("ensemble", "e1", 50, 0)):
        cache.put(kind, key, b"x" * size)
        os.utime(root / kind / f"{key}.pkl", (now - age_days * 86400, now - age_days * 86400))
    partial = root / "fold" / "f3.pkl.abc.tmp"  # a write a killed driver never finished
    partial.write_bytes(b"FWC1" + b"y" * 10)
    os.utime(partial, (now - 2 * 86400, now - 2 * 86400))

    assert main(["cache", "ls", "--cache", str(root)]) == 0
    out = capsys.readouterr().out
    fold_row = next(line for line in out.splitlines() if line.strip().strip("│┃ ").startswith("fold"))
    assert "2 " in fold_row and "6.1 KiB" in fold_row and "1d" in fold_row and "9d" in fold_row
    assert "partial" in out and "total" in out

    assert main(["cache", "prune", "--older-than", "7d", "--cache", str(root)]) == 0
    out = capsys.readouterr().out
    assert "removed 3 entries older than 7d" in out and "kept 2" in out, out
    assert {e.key for e in cache.entries()} == {"f2", "e1"}
    assert partial.exists(), "a 2-day-old partial write is kept by --older-than 7d"
    assert cache.get("fold", "f2") is not None, "what is kept still reads back"

    assert main(["cache", "prune", "--cache", str(root), "--dry-run"]) == 0
    assert "would remove 3 entries" in capsys.readouterr().out and len(cache.entries()) == 2
    assert main(["cache", "prune", "--cache", str(root)]) == 0
    assert cache.entries() == [] and not partial.exists()
    assert main(["cache", "ls", "--cache", str(root)]) == 0
    assert "is empty" in capsys.readouterr().out

    assert main(["cache", "prune", "--older-than", "a week", "--cache", str(root)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--older-than" in err and "7d" in err


def test_abandoned_runs_are_failed_even_when_their_pid_was_reused(tmp_path: Path) -> None:
    """A restarted container's driver often gets the dead driver's pid: the pid alone is not enough."""
    from foldwise.workflows.tracking import tracker as tk

    tracker = tk.Tracker(f"sqlite:///{tmp_path / 'm.db'}", "abandoned")
    mine = tracker.start_run("live", tk.process_tags())
    reused = tracker.client.create_run(tracker.experiment_id, start_time=int((time.time() - 30) * 1000),
                                       run_name="killed", tags=tk.process_tags()).info.run_id
    newcomer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        tracker.client.set_tag(reused, tk.TAG_PID, str(newcomer.pid))  # that pid now belongs to a younger process
        assert tracker.fail_abandoned_runs() == [reused]
    finally:
        newcomer.kill()
        newcomer.wait()
    assert tracker.run_status(reused) == "FAILED" and tracker.run_status(mine) == "RUNNING"
