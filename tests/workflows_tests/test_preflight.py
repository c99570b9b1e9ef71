"""Every checkable bad input is refused before Ray starts: exit 2, one line, nothing written.

The cases are the malformed inputs of issue 21 that used to end in a traceback, in exit 1 after
every fold ran, or in exit 2 with something left behind. All run through the real CLI in ONE
subprocess (tests/workflows_tests/preflight_driver.py), which records per case the exit code,
file descriptor 2, whether an exception escaped, whether Ray started, and the workspace's files
before and after; each case is then its own test here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from foldwise.workflows.pipeline.preflight import local_capacity

DRIVER = Path(__file__).with_name("preflight_driver.py")
REPO = Path(__file__).resolve().parents[2]
LR = "sklearn.linear_model.LogisticRegression"


def base_spec(train: str = "d.csv", **changes) -> dict:
    spec = {"name": "fuzz", "data": {"train": train, "target": "y"}, "cv": {"folds": 3, "seed": 1},
            "models": [{"name": "lr", "estimator": LR}]}
    spec.update(changes)
    return spec


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


BOMB = ("a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n"
        + "".join(f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8)))


def write_workspace(ws: Path) -> dict[str, list[str]]:
    """Data files, specs and the argv of each case (run from `ws`, the working directory)."""
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(60, 3)), columns=["x0", "x1", "x2"])
    frame["y"] = (frame.x0 > 0).astype(int)
    frame.to_csv(ws / "d.csv", index=False)
    frame.assign(x0=np.nan, x1=np.nan, x2=np.nan).to_csv(ws / "all_nan.csv", index=False)
    (ws / "dup.csv").write_text("x0,x1,x0,y\n" + "".join(f"{i},{i * 2},{i * 3},{i % 2}\n" for i in range(30)))
    (ws / "not_gzip.csv.gz").write_text("x0,y\n1,0\n")
    (ws / "folder.csv").mkdir()
    os.symlink("loop_b.csv", ws / "loop_a.csv")
    os.symlink("loop_a.csv", ws / "loop_b.csv")
    (ws / "a_file").write_text("not a folder\n")
    (ws / "raising_adapter.py").write_text("raise RuntimeError('adapter module is broken at import')\n")

    def spec_file(name: str, spec: dict | str) -> str:
        path = ws / "specs" / f"{name}.yaml"
        path.parent.mkdir(exist_ok=True)
        path.write_text(spec if isinstance(spec, str) else yaml.safe_dump(spec))
        return str(path.relative_to(ws))

    good = spec_file("good", base_spec("../d.csv"))
    uri = ["--tracking-uri", "sqlite:///m.db"]
    run = ["run", good, *uri, "--no-progress"]
    deep = yaml.safe_dump(base_spec("../d.csv")) + f"slices: {{x: {nested(300)}}}\n"
    bomb_in_params = (yaml.safe_dump(base_spec("../d.csv", ensemble={"method": "stack"})).replace("ensemble:\n", "")
                      .replace("  method: stack\n", "") + BOMB.replace("\n", "\n  ").join(["ensemble:\n  method: stack\n  params:\n    ", "\n"]))
    cases = {
        "yaml nested 300 levels in the file": ["run", spec_file("deep", deep), *uri],
        "yaml nested 3000 levels in --set": [*run, "--set", f"models.0.params.C={nested(3000)}"],
        "alias bomb under ensemble.params": ["run", spec_file("bomb", bomb_in_params), *uri],
        "--set key of 30000 segments": [*run, "--set", "a" + ".a" * 30000 + "=1"],
        "data path is a folder (run)": ["run", spec_file("folder", base_spec("../folder.csv")), *uri],
        "data path is a folder (check)": ["check", spec_file("folder", base_spec("../folder.csv")), *uri],
        "csv.gz that is not gzip": ["run", spec_file("gz", base_spec("../not_gzip.csv.gz")), *uri],
        "symlink loop": ["run", spec_file("loop", base_spec("../loop_a.csv")), *uri],
        "unreachable http data": ["run", spec_file("http", base_spec("http://127.0.0.1:9/d.csv")), *uri],
        "--cache names a file": [*run, "--cache", "a_file"],
        "cv.seed above 2**32-1": [*run, "--set", "cv.seed=4294967296"],
        "cv.seed negative": [*run, "--set", "cv.seed=-1"],
        "cv.seed above 2**32-1 with --no-checks": [*run, "--no-checks", "--set", "cv.seed=4294967296"],
        "adapter module raises at import": [*run, "--set", "models.0.type=raising_adapter:Adapter"],
        "metric module raises at import": [*run, "--set", "metric=raising_adapter:score"],
        "estimator is collections.OrderedDict": [*run, "--set", "models.0.estimator=collections.OrderedDict"],
        "estimator is os.getcwd": [*run, "--set", "models.0.estimator=os.getcwd"],
        "--out names a file": [*run, "--out", "a_file"],
        "--out under a read-only filesystem": [*run, "--out", "/proc/foldwise-out"],
        "--out is /dev/null/x": [*run, "--out", "/dev/null/x"],
        "--tracking-uri with an unknown scheme": ["run", good, "--tracking-uri", "nosuch://x"],
        "stack meta that does not import": [*run, "--set", "ensemble.method=stack",
                                            "--set", "ensemble.meta=nosuch_module.Model"],
        "every feature column NaN": ["run", spec_file("nan", base_spec("../all_nan.csv")), *uri],
        "--address nonsense": [*run, "--address", "nonsense"],
        "--address where nothing listens": [*run, "--address", "127.0.0.1:9"],
        "duplicate column names": ["run", spec_file("dup", base_spec("../dup.csv")), *uri],
        "unknown ensemble.params": [*run, "--set", "ensemble.method=stack", "--set", "ensemble.params.nope=1"],
        "ensemble.params for a method without a meta-model": [*run, "--set", "ensemble.method=mean",
                                                              "--set", "ensemble.params.C=1"],
        "resources.cpus 1000": [*run, "--set", "models.0.resources.cpus=1000"],
        "resources.memory beyond the machine": [*run, "--set", "models.0.resources.memory=100TiB"],
        "sweep --out names a file": ["sweep", good, *uri, "--out", "a_file", "--set", "search.space.C.loguniform=[0.1,1]"],
        "ablate --address nonsense": ["ablate", good, *uri, "--address", "nonsense"],
    }
    if local_capacity()["gpus"] == 0:  # None (GPUs this machine shows but cannot count) is never refused
        cases["resources.gpus 1 without a GPU"] = [*run, "--set", "models.0.resources.gpus=1"]
    return cases


# What each refusal must name (the key, flag or value), so a case cannot pass by failing for another reason.
EXPECTED = {
    "yaml nested 300 levels in the file": "nested too deeply",
    "yaml nested 3000 levels in --set": "--set models.0.params.C is nested too deeply",
    "alias bomb under ensemble.params": "YAML aliases",
    "--set key of 30000 segments": "30001 key segments",
    "data path is a folder (run)": "is a folder",
    "data path is a folder (check)": "is a folder",
    "csv.gz that is not gzip": "Not a gzipped file",
    "symlink loop": "Too many levels of symbolic links",
    "unreachable http data": "cannot read 'http://127.0.0.1:9/d.csv'",
    "--cache names a file": "--cache 'a_file'",
    "cv.seed above 2**32-1": "cv.seed",
    "cv.seed negative": "cv.seed",
    "cv.seed above 2**32-1 with --no-checks": "cv.seed",
    "adapter module raises at import": "RuntimeError: adapter module is broken at import",
    "metric module raises at import": "RuntimeError: adapter module is broken at import",
    "estimator is collections.OrderedDict": "is not an estimator class",
    "estimator is os.getcwd": "is not an estimator class",
    "--out names a file": "--out 'a_file'",
    "--out under a read-only filesystem": "--out '/proc/foldwise-out'",
    "--out is /dev/null/x": "--out '/dev/null/x'",
    "--tracking-uri with an unknown scheme": "no tracking store for scheme 'nosuch'",
    "stack meta that does not import": "nosuch_module",
    "every feature column NaN": "every feature column",
    "--address nonsense": "--address 'nonsense'",
    "--address where nothing listens": "--address 127.0.0.1:9: nothing answers",
    "duplicate column names": "repeats column name(s) 'x0'",
    "unknown ensemble.params": "no parameter(s) 'nope'",
    "ensemble.params for a method without a meta-model": "only method stack takes params",
    "resources.cpus 1000": "models.0.resources.cpus (lr): 1000 CPU(s) asked",
    "resources.memory beyond the machine": "models.0.resources.memory (lr)",
    "resources.gpus 1 without a GPU": "models.0.resources.gpus (lr): 1 GPU(s) asked, but this machine has 0",
    "sweep --out names a file": "--out 'a_file'",
    "ablate --address nonsense": "--address 'nonsense'",
}


@pytest.fixture(scope="module")
def refusals(tmp_path_factory) -> dict[str, dict]:
    ws = tmp_path_factory.mktemp("fuzz")
    cases = write_workspace(ws)
    side = tmp_path_factory.mktemp("fuzz-driver")
    (side / "cases.json").write_text(json.dumps(cases))
    env = os.environ | {"FOLDWISE_CACHE": "", "FOLDWISE_OUTPUTS": "", "PYTHONPATH": str(REPO)}
    env = {k: v for k, v in env.items() if v != ""}  # the defaults: .foldwise/cache and outputs/ in ws
    done = subprocess.run([sys.executable, str(DRIVER), str(side / "cases.json"), str(side / "results.json")],
                          cwd=ws, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((side / "results.json").read_text())
    assert set(results) == set(cases)
    return results


@pytest.mark.parametrize("case", list(EXPECTED))
def test_bad_input_is_refused_before_anything_starts(refusals: dict[str, dict], case: str) -> None:
    if case not in refusals:
        pytest.skip("this machine has a GPU")
    r = refusals[case]
    assert r["escaped"] is None, f"an exception escaped the CLI:\n{r['escaped']}"
    lines = [line for line in r["stderr"].splitlines() if line.strip()]
    assert r["rc"] == 2, f"exit {r['rc']}, stderr:\n{r['stderr'][-2000:]}"
    assert len(lines) == 1 and lines[0].startswith("foldwise: error: "), r["stderr"][-2000:]
    assert "Traceback" not in r["stderr"]
    assert EXPECTED[case] in lines[0], lines[0]
    assert not r["ray_started"] and not r["children"], "Ray was not started"
    assert r["new_files"] == [] and r["changed_files"] == [], "nothing written (no MLflow store, cache or outputs)"


def test_the_workspace_accepts_a_good_spec(refusals: dict[str, dict], tmp_path: Path) -> None:
    """The control: the same workspace's good spec passes every pre-flight check (so the refusals above
    come from the bad part of each case, not from the workspace)."""
    from foldwise.workflows.pipeline.preflight import preflight
    from foldwise.workflows.pipeline.spec import load_spec

    (tmp_path / "d.csv").write_text("x0,y\n1,0\n2,1\n3,0\n4,1\n5,0\n6,1\n")
    spec = load_spec(base_spec(str(tmp_path / "d.csv")))
    preflight(spec, task="binary", out=tmp_path / "out", cache_root=str(tmp_path / "cache"))
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists(), "the probe leaves nothing"


@pytest.mark.parametrize(("visible", "gpus"), [("0,1", 2.0), ("3", 1.0), ("", 0.0), ("-1", 0.0)])
def test_gpus_follow_cuda_visible_devices_as_ray_counts_them(monkeypatch, visible: str, gpus: float) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert local_capacity()["gpus"] == gpus
