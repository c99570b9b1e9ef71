"""`foldwise submit` checks the spec and the arguments for the job before any upload, and builds
the job the cluster will run (no cluster needed here; the real submissions are in test_cluster_jobs)."""

from __future__ import annotations

import argparse
import shlex

import pytest

from foldwise.infra import jobs
from foldwise.infra.jobs import JobsError
from foldwise.workflows.cli import submit
from foldwise.workflows.cli.submit import prepare_job
from tests.infra_tests.conftest import REPO

SPEC = str(REPO / "workflows" / "examples" / "breast_cancer.yaml")


def test_the_job_runs_foldwise_on_the_uploaded_project():
    job = prepare_job(SPEC, "run", ["--set", "cv.folds=3", "--out", "s3://b/x"], str(REPO), "http://127.0.0.1:5000")
    assert shlex.split(job.entrypoint) == ["foldwise", "run", "workflows/examples/breast_cancer.yaml",
                                           "--set", "cv.folds=3", "--out", "s3://b/x"]
    env = job.runtime_env
    assert env["working_dir"] == str(REPO)
    assert {".git", ".venv", "outputs", "mlflow.db", "mlruns", ".foldwise", "__pycache__"} <= set(env["excludes"])
    assert env["env_vars"]["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:5000"
    assert env["env_vars"]["RAY_JOB_STOP_SIGNAL"] == "SIGINT"
    assert job.submission_id.startswith("foldwise-run-breast-cancer-")
    assert job.metadata == {"foldwise.command": "run", "foldwise.spec": "workflows/examples/breast_cancer.yaml",
                            "foldwise.experiment": "breast-cancer"}
    without = prepare_job(SPEC, "run", [], str(REPO), None)
    assert "MLFLOW_TRACKING_URI" not in without.runtime_env["env_vars"]  # the cluster's own is used


@pytest.mark.parametrize("spec, command, extra, message", [
    (SPEC, "run", ["--set", "cv.foldz=3"], "spec key 'cv.foldz' is not allowed"),
    (SPEC, "run", ["--bogus"], "arguments after `--` for `foldwise run`: unrecognized arguments: --bogus"),
    (SPEC, "run", ["--address", "x:1"], "--address after `--`: a job always runs on the cluster"),
    (SPEC, "run", ["--executor=local"], "--executor after `--`"),
    ("OUTSIDE", "run", [], "is outside the uploaded project folder"),
    ("no/such/spec.yaml", "run", [], "spec 'no/such/spec.yaml' does not exist"),
])
def test_bad_input_is_caught_before_submitting(tmp_path, spec, command, extra, message):
    if spec == "OUTSIDE":
        spec = str(tmp_path / "spec.yaml")
        (tmp_path / "spec.yaml").write_text((REPO / "workflows" / "examples" / "breast_cancer.yaml").read_text())
    with pytest.raises(JobsError) as e:
        prepare_job(spec, command, extra, str(REPO), None)
    assert message in str(e.value)


def test_double_dash_passes_everything_after_it_to_the_job():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="command")
    submit.add_arguments(sub.add_parser("submit"))
    args = p.parse_args(["submit", "s.yaml", "--wait", "--address", "http://h:8265", "--", "--set", "a=1", "--wait"])
    assert (args.spec, args.wait, args.address, args.args) == ("s.yaml", True, "http://h:8265", ["--set", "a=1", "--wait"])
    assert p.parse_args(["submit", "s.yaml"]).args == []


def test_addresses():
    assert jobs.resolve_address("127.0.0.1:8265") == "http://127.0.0.1:8265"
    assert jobs.resolve_address("https://head.example:443/") == "https://head.example:443"
    with pytest.raises(JobsError, match="not a ray:// or GCS address"):
        jobs.resolve_address("ray://head:10001")


@pytest.mark.parametrize("args, message", [
    (["--backend-store-uri", "mysql://u@h/db"], "--backend-store-uri 'mysql://u@h/db': use sqlite:///PATH"),
    (["--ray-port", "7001", "--dashboard-port", "7001"], "ports must differ"),
    (["--mlflow-port", "0"], "--mlflow-port: 0 is not a TCP port"),
    (["--gpus", "-1"], "--gpus: -1 is negative"),
])
def test_cluster_up_bad_input_starts_and_writes_nothing(tmp_path, capsys, args, message):
    from foldwise.workflows.cli.main import main

    assert main(["cluster", "up", "--dir", str(tmp_path / "c"), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.strip().count("\n") == 0
    assert not (tmp_path / "c").exists()
