"""Ray started early: a cold command that will need Ray starts it on a thread while the driver
still reads and checks the data, gets the same DAG (cache keys, OOF, MLflow records) as the lazy
start at the first task, stops it on bad data (exit 2), and leaves no Ray process behind."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest
import yaml

from foldwise.workflows.commands.check import run_check
from foldwise.workflows.commands.run import run_cv
from foldwise.workflows.engine.cache import Cache
from foldwise.workflows.engine.early import EARLY_ENV
from foldwise.workflows.engine.lazy import LazyExecutor, Work
from tests.workflows_tests.test_auto_executor import _records, two_model_project

BIG = Work(rows=100_000, features=40, fits=10)  # past the small-work rule: `auto` would use Ray
TINY = Work(rows=300, features=4, fits=6)  # small


@pytest.fixture()
def project(tmp_path: Path) -> Path:
    two_model_project(tmp_path, "early")
    frame = pd.read_csv(tmp_path / "d.csv")
    spec = yaml.safe_load((tmp_path / "early.yaml").read_text())
    frame.assign(id=np.arange(300)).to_csv(tmp_path / "d_id.csv", index=False)
    test = frame.drop(columns="y").iloc[:50].assign(id=np.arange(50) // 2)  # duplicate ids: a blocking data check
    test.to_csv(tmp_path / "t_dup.csv", index=False)
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(spec | {"data": {"train": "d_id.csv", "test": "t_dup.csv",
                                                                       "target": "y", "id": "id"}}))
    return tmp_path


def _cli(project: Path, *args: str) -> tuple[subprocess.CompletedProcess, list[psutil.Process]]:
    """The CLI in a session of its own; with every process of that session (Ray's too) still alive
    after it exited, once they had a few seconds to go."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "FOLDWISE_CACHE", EARLY_ENV)}
    proc = subprocess.Popen([sys.executable, "-m", "foldwise.workflows.cli", *args, "--no-progress"], cwd=project,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=400)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
    session = re.compile(rf"session_\S+_{proc.pid}\b")

    def ours(p: psutil.Process) -> bool:
        try:
            return os.getsid(p.pid) == proc.pid or bool(session.search(" ".join(p.cmdline())))
        except (psutil.Error, ProcessLookupError, PermissionError):
            return False

    deadline = time.time() + 10
    left = [p for p in psutil.process_iter() if ours(p)]
    while left and time.time() < deadline:
        time.sleep(0.5)
        left = [p for p in left if p.is_running() and p.status() != psutil.STATUS_ZOMBIE and ours(p)]
    done = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    done.pid = proc.pid  # type: ignore[attr-defined]
    return done, left


def _ray_started_by(r: subprocess.CompletedProcess) -> bool:
    """Ray made its session folder (named after the driver's pid) for this command."""
    pid = getattr(r, "pid", None)
    return pid is not None and any(Path("/tmp/ray").glob(f"session_*_{pid}"))


def _double(x: int) -> int:
    return 2 * x


def test_the_early_start_rule(monkeypatch, ray_cluster) -> None:
    """Only work that needs Ray starts it early; `auto` then stays on Ray; the switch turns it off."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv(EARLY_ENV, raising=False)
    assert not LazyExecutor("local").expect_early(BIG), "in-process work never starts Ray"
    # (small work under `auto` starts nothing early: test_auto_executor's CLI run stays in process)
    monkeypatch.setenv(EARLY_ENV, "0")
    off = LazyExecutor("ray")
    assert not off.expect_early(BIG) and not off.started
    monkeypatch.delenv(EARLY_ENV)
    ex = LazyExecutor("auto")
    assert ex.expect_early(BIG) and ex.started and ex.kind == "ray"
    ex.expect(TINY)  # settled on Ray already: stays there
    assert ex.get(ex.submit(_double, 21)) == 42 and ex.chosen == "ray"
    assert ex.startup_seconds <= ex.start_seconds + 1e-9
    ex.close()
    assert ray_cluster.is_initialized(), "a cluster this process had joined before is not stopped"


def test_a_cold_run_starts_ray_before_its_data_checks_end_and_is_the_same_dag(project: Path, ray_cluster,
                                                                              monkeypatch) -> None:
    r, left = _cli(project, "run", "early.yaml", "--executor", "ray", "--cache", "cache-early", "--out", "out-early",
                   "--tracking-uri", "sqlite:///early.db")
    assert r.returncode == 0, r.stderr[-3000:]
    assert left == [], f"Ray processes left after the command exited: {[p.name() for p in left]}"
    early = json.loads((project / "out-early" / "summary.json").read_text())
    t = early["timeline"]
    assert early["executor"] == "ray"
    assert t["ray_asked"] <= t["checks_done"], t  # asked for before the checks ran, not at the first task
    assert t["ray_ready"] >= t["ray_asked"] and early["ray_start_seconds"] > 0
    assert early["startup_seconds"] <= early["ray_start_seconds"], "only the uncovered part is waited for"

    monkeypatch.setenv(EARLY_ENV, "0")  # the lazy path: Ray at the first task (here: the session's)
    lazy = run_cv(project / "early.yaml", executor="ray", cache_root=str(project / "cache-lazy"),
                  out=project / "out-lazy", tracking_uri=f"sqlite:///{project / 'lazy.db'}").summary
    assert "ray_asked" not in lazy["timeline"]
    keys = {(e.kind, e.key) for e in Cache(str(project / "cache-early")).entries()}
    assert keys and keys == {(e.kind, e.key) for e in Cache(str(project / "cache-lazy")).entries()}, "same keys"
    for name in ("oof", "test_predictions"):
        pd.testing.assert_frame_equal(pd.read_parquet(project / early["outputs"][name]),
                                      pd.read_parquet(lazy["outputs"][name]), check_exact=False, rtol=0, atol=1e-12)
    for m in ("lr", "gbm"):
        assert early["models"][m]["fold_scores"] == pytest.approx(lazy["models"][m]["fold_scores"], abs=1e-12)
    assert _records(f"sqlite:///{project / 'early.db'}", early["run_id"]) == \
        _records(f"sqlite:///{project / 'lazy.db'}", lazy["run_id"])


def test_bad_data_found_after_the_early_start_exits_2_and_stops_ray(project: Path) -> None:
    r, left = _cli(project, "run", "bad.yaml", "--executor", "ray", "--cache", "cache-bad", "--out", "out-bad",
                   "--tracking-uri", "sqlite:///bad.db")
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2, r.stderr[-3000:]
    assert _ray_started_by(r), "Ray had started before the data checks found the bad column"
    assert len(lines) == 1 and lines[0].startswith("foldwise: error: ") and "duplicate" in lines[0], r.stderr[-3000:]
    assert left == [], f"Ray processes left after the command exited: {[p.name() for p in left]}"
    assert not (project / "out-bad").exists() and not (project / "bad.db").exists(), "nothing written"


def test_check_asks_for_ray_before_its_data_checks(project: Path, ray_cluster) -> None:
    result = run_check(project / "early.yaml", executor="ray", out=project / "out-check",
                       tracking_uri=f"sqlite:///{project / 'check.db'}")
    t = result.summary["timeline"]
    assert t["ray_asked"] <= t["checks_done"], t
    assert result.adversarial is not None and "tracking_setup" in result.summary["phase_seconds"]
