"""Never compute twice: which nodes a rerun recomputes (fits are counted, not timed)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from foldwise.workflows.commands.run import run_cv
from foldwise.workflows.engine.cache import Cache


def spec(data: Path, log: Path, **changes) -> dict:
    s = {"name": "cache-test", "data": {"train": str(data), "target": "y"}, "cv": {"folds": 4, "seed": 1},
         "models": [{"name": "a", "type": "tests.workflows_tests.adapters:SlowLogistic", "params": {"C": 1.0, "log": str(log)}},
                    {"name": "b", "type": "tests.workflows_tests.adapters:SlowLogistic", "params": {"C": 0.1, "log": str(log)}}],
         "ensemble": {"method": "mean"}}
    s.update(changes)
    return s


@pytest.fixture()
def workspace(tmp_path: Path, ray_cluster):
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(400, 5)), columns=list("pqrst"))
    frame["y"] = (frame.p + rng.normal(size=400) > 0).astype(int)
    frame.to_csv(tmp_path / "d.csv", index=False)
    return tmp_path


def fits(log: Path) -> int:
    return len(log.read_text().splitlines()) if log.exists() else 0


def go(s: dict, ws: Path, **kw):
    return run_cv(s, out=ws / f"out{time.monotonic_ns()}", tracking_uri=f"sqlite:///{ws / 'm.db'}",
                  cache_root=str(ws / "cache"), **kw).summary


def test_rerun_rules(workspace: Path) -> None:
    log = workspace / "fits.log"
    base = spec(workspace / "d.csv", log)
    first = go(base, workspace)
    assert fits(log) == 8 and not any(first["models"]["a"]["cached"])

    again = go(base, workspace)
    assert fits(log) == 8, "an unchanged spec fits nothing"
    assert all(again["models"]["a"]["cached"] + again["models"]["b"]["cached"]) and again["ensemble"]["cached"]
    assert again["startup_seconds"] == 0.0, "a fully cached rerun does not even start Ray"
    assert again["models"] == first["models"] | {m: first["models"][m] | {"cached": [True] * 4} for m in "ab"}

    renamed_ens = go(base | {"ensemble": {"method": "rank_mean"}}, workspace)
    assert fits(log) == 8 and not renamed_ens["ensemble"]["cached"], "a new ensemble method recomputes only the ensemble"

    renamed = spec(workspace / "d.csv", log)
    renamed["models"][0]["name"] = "a2"
    out = go(renamed, workspace)
    assert fits(log) == 8 and all(out["models"]["a2"]["cached"]), "renaming a model refits nothing"
    assert set(out["ensemble"]["weights"]) == {"a2", "b"}, "the ensemble speaks of the new name"

    more = spec(workspace / "d.csv", log)
    more["models"] = base["models"] + [{"name": "c", "type": "tests.workflows_tests.adapters:SlowLogistic",
                                        "params": {"C": 10.0, "log": str(log)}}]
    added = go(more, workspace)
    assert fits(log) == 12, "adding a model fits only its folds"
    assert added["models"]["c"]["cached"] == [False] * 4 and all(added["models"]["a"]["cached"])

    changed = spec(workspace / "d.csv", log)
    changed["models"][1]["params"]["C"] = 0.2
    out = go(changed, workspace)
    assert fits(log) == 16, "a changed param refits only that model"
    assert all(out["models"]["a"]["cached"]) and not any(out["models"]["b"]["cached"])

    frame = pd.read_csv(workspace / "d.csv")
    frame.loc[0, "p"] += 1.0
    frame.to_csv(workspace / "d.csv", index=False)
    go(base, workspace)
    assert fits(log) == 24, "changed data invalidates every fold"

    go(base, workspace, no_cache=True)
    assert fits(log) == 32, "--no-cache recomputes everything"


def test_damaged_entry_is_detected_and_recomputed(workspace: Path, capfd) -> None:
    log = workspace / "fits.log"
    s = spec(workspace / "d.csv", log)
    go(s, workspace)
    cache = Cache(str(workspace / "cache"))
    victim = next(e for e in cache.entries() if e.kind == "fold")
    path = workspace / "cache" / "fold" / f"{victim.key}.pkl"
    path.write_bytes(path.read_bytes()[: victim.bytes // 2])  # a torn write
    summary = go(s, workspace)
    assert fits(log) == 9, "exactly the damaged fold is refitted"
    assert sum(not c for m in "ab" for c in summary["models"][m]["cached"]) == 1
    assert f"cache entry fold/{victim.key} fails its integrity check" in capfd.readouterr().err


def test_cache_entries_and_prune(workspace: Path) -> None:
    log = workspace / "fits.log"
    go(spec(workspace / "d.csv", log), workspace)
    cache = Cache(str(workspace / "cache"))
    kinds = {e.kind for e in cache.entries()}
    assert kinds == {"checks", "data", "plan", "fold", "ensemble"}
    assert cache.prune(older_than_seconds=3600) == []
    assert len(cache.prune()) == 1 + 1 + 1 + 8 + 1  # checks, data, plan, 2 models x 4 folds, ensemble
    assert cache.entries() == []


def test_sigkill_of_the_driver_then_rerun_resumes(workspace: Path) -> None:
    """Completed folds survive a SIGKILL of the driver; the rerun marks the dead run FAILED."""
    from mlflow.tracking import MlflowClient

    log = workspace / "fits.log"
    s = spec(workspace / "d.csv", log)
    for m in s["models"]:
        m["params"]["sleep"] = 1.5
    s["cv"]["folds"] = 6
    spec_path = workspace / "slow.yaml"
    spec_path.write_text(yaml.safe_dump(s))
    uri = f"sqlite:///{workspace / 'm.db'}"
    env = os.environ | {"FOLDWISE_CACHE": str(workspace / "cache")}
    exe = Path(sys.executable).with_name("foldwise")
    proc = subprocess.Popen([str(exe), "run", str(spec_path), "--tracking-uri", uri, "--no-progress",
                             "--executor", "ray"],
                            cwd=Path(__file__).resolve().parents[2], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    fold_dir = workspace / "cache" / "fold"
    deadline = time.time() + 120
    try:
        while (time.time() < deadline and proc.poll() is None
               and len(list(fold_dir.glob("*.pkl")) if fold_dir.exists() else []) < 3):
            time.sleep(0.2)
        assert proc.poll() is None, "the driver finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # Ray's own processes from that session
        except ProcessLookupError:
            pass
    done_before = len(list(fold_dir.glob("*.pkl")))
    assert 3 <= done_before < 12
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("cache-test")
    killed = client.search_runs([exp.experiment_id], "tags.`foldwise.command` = 'run'")
    assert len(killed) == 3 and {r.info.status for r in killed} == {"RUNNING"}  # parent + 2 model runs

    fits_before = fits(log)
    summary = run_cv(spec_path, out=workspace / "resumed", tracking_uri=uri, cache_root=str(workspace / "cache")).summary
    cached = sum(c for m in "ab" for c in summary["models"][m]["cached"])
    assert cached == done_before
    assert fits(log) - fits_before == 12 - done_before, "only the folds in flight or not started are refitted"
    assert {client.get_run(r.info.run_id).info.status for r in killed} == {"FAILED"}, "never left RUNNING"
