"""The MLflow UI as a person uses it: a real `mlflow server` on 127.0.0.1, two foldwise runs
(one param changed), `foldwise compare`, then headless Chromium (Debian `chromium`, driven by
Playwright's Python package) checks the runs, their params and the write-up as B's description.

Skipped, with the reason, only when chromium or playwright cannot be found (.ci/run installs
chromium with apt-get when it is missing). Never `playwright install`: the system browser is used.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run"]
SPEC = {
    "name": "ui-test",
    "data": {"train": "sklearn:breast_cancer"},
    "task": "binary",
    "metric": "roc_auc",
    "cv": {"scheme": "stratified", "folds": 3, "seed": 42},
    "models": [{"name": "logreg", "type": "sklearn", "estimator": "sklearn.linear_model.LogisticRegression",
                "params": {"C": 1.0, "max_iter": 2000}, "preprocess": ["standard_scaler"]}],
    "slices": {"large": "`mean radius` > 15"},
}
SEARCH = {"model": "logreg", "trials": 3, "pruner": "none", "space": {"C": {"loguniform": [0.01, 10.0]}}}
SCREENSHOTS = Path(__file__).resolve().parents[2] / "outputs" / "ui-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    from foldwise.workflows.cli.ui import server_command

    root = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    log = (root / "server.log").open("w")
    proc = subprocess.Popen(server_command(f"sqlite:///{root / 'mlflow.db'}", port,
                                           artifacts_destination=str(root / "artifacts")),
                            cwd=root, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            urllib.request.urlopen(f"{url}/health", timeout=2).read()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"mlflow server did not start: {(root / 'server.log').read_text()[-2000:]}")
            time.sleep(0.3)
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.fixture(scope="module")
def two_runs_compared(ray_cluster, mlflow_server, tmp_path_factory) -> dict[str, str]:
    from mlflow import MlflowClient

    from foldwise.workflows.commands.compare import compare
    from foldwise.workflows.commands.run import run_cv
    from foldwise.workflows.commands.sweep import run_sweep
    from foldwise.workflows.pipeline.spec import load_spec

    out = tmp_path_factory.mktemp("ui-runs")
    a = run_cv(load_spec(SPEC), out=out / "a", tracking_uri=mlflow_server).run_id
    b = run_cv(load_spec(SPEC, ["models.0.params.C=0.05"]), out=out / "b", tracking_uri=mlflow_server).run_id
    compare(a, b, tracking_uri=mlflow_server, out=out / "compare", n_boot=50)
    # a small sweep beside them: its trial runs must show their sampled params in the UI
    sweep = run_sweep(load_spec(SPEC | {"name": "ui-sweep", "search": SEARCH}), concurrency=2, out=out / "sweep",
                      tracking_uri=mlflow_server, storage=str(out / "sweep-state"))
    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name("ui-test").experiment_id
    sweep_exp = client.get_experiment_by_name("ui-sweep").experiment_id
    trials = {r.info.run_id: r.data.params["C"] for r in client.search_runs(
        [sweep_exp], f"tags.mlflow.parentRunId = '{sweep.summary['run_id']}' and tags.`foldwise.trial_id` != ''")}
    return {"url": mlflow_server, "a": a, "b": b, "experiment": exp, "sweep_experiment": sweep_exp,
            "sweep": sweep.summary["run_id"], "trials": trials}


def test_runs_params_and_writeup_in_the_browser(two_runs_compared) -> None:
    if CHROMIUM is None:
        pytest.skip("chromium not found (apt-get install -y chromium); the MLflow UI browser test needs it")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the Python package playwright is not installed")
    url, exp, a, b = (two_runs_compared[k] for k in ("url", "experiment", "a", "b"))
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1100})
            page.set_default_timeout(60_000)
            # the experiment's runs list: both parent runs are there
            page.goto(f"{url}/#/experiments/{exp}/runs")
            for run_id in (a, b):
                page.locator(f'a[href*="{run_id}"]').first.wait_for()
            page.screenshot(path=str(SCREENSHOTS / "runs.png"))
            # each run's page lists its params; the changed one has each run's value
            for run_id, value in ((a, "1.0"), (b, "0.05")):
                page.goto(f"{url}/#/experiments/{exp}/runs/{run_id}")
                page.get_by_placeholder("Search parameters").fill("models.0.params.C")
                row = page.get_by_role("row").filter(has_text="models.0.params.C")
                row.first.wait_for()
                assert value in row.first.inner_text()
            # B's description is the compare write-up
            page.goto(f"{url}/#/experiments/{exp}/runs/{b}")
            page.get_by_text("Description").first.wait_for()
            page.get_by_text("Headline:", exact=False).first.wait_for()
            more = page.get_by_text("Show more")
            if more.count():
                more.first.click()
            body = page.inner_text("body")
            for needle in ("Compare: A = ", "What changed", "models.0.params.C", "paired t-test", "Conclusion"):
                assert needle in body, needle
            page.get_by_text("Conclusion").first.scroll_into_view_if_needed()
            page.screenshot(path=str(SCREENSHOTS / "run_b_description.png"), full_page=True)
            # the sweep's trial runs, each with the C it sampled
            trials = two_runs_compared["trials"]
            assert len(trials) == 3
            page.goto(f"{url}/#/experiments/{two_runs_compared['sweep_experiment']}/runs")
            page.locator(f'a[href*="{two_runs_compared["sweep"]}"]').first.wait_for()
            page.screenshot(path=str(SCREENSHOTS / "sweep_runs.png"))
            for run_id, value in trials.items():
                page.goto(f"{url}/#/experiments/{two_runs_compared['sweep_experiment']}/runs/{run_id}")
                page.get_by_placeholder("Search parameters").fill("C")
                row = page.get_by_role("row").filter(has_text=value)
                row.first.wait_for()
        finally:
            browser.close()
    assert (SCREENSHOTS / "run_b_description.png").stat().st_size > 10_000
