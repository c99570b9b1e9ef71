"""cluster.yaml passes Ray's own cluster-config validation (the checks `ray up` runs before it
touches a cloud), for AWS and for the commented GCP variant; and it keeps its promises:
only SSH open, token auth on every node, services on 127.0.0.1, the project installed as README does."""

from __future__ import annotations

import copy

import jsonschema
import pytest
import yaml

# private: no public API to validate a cluster config without `ray up` in Ray 2.60 (see
# https://github.com/ray-project/ray/issues/5293); these are the functions `ray up` calls first.
from ray.autoscaler._private.util import prepare_config, validate_config

from tests.infra_tests.conftest import REPO

CLUSTER_YAML = REPO / "cluster.yaml"


def ray_validate(config: dict) -> dict:
    """What `ray up` does first (commands._bootstrap_config): fill in defaults, then validate."""
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


@pytest.fixture(scope="module")
def aws() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def gcp_variant(aws: dict) -> dict:
    """cluster.yaml with its commented GCP block uncommented in place of provider/auth/node types."""
    text = CLUSTER_YAML.read_text().split("# GCP variant", 1)[1]
    lines = [line[2:] if line.startswith("# ") else "" for line in text.splitlines()[1:] if line.startswith("#")]
    block = "\n".join(lines)
    block = block[block.index("provider:"):block.index("and for outputs")]
    variant = yaml.safe_load(block)
    assert set(variant) == {"provider", "auth", "available_node_types"}
    return aws | variant


def test_aws_config_passes_rays_validation(aws):
    prepared = ray_validate(aws)
    assert prepared["provider"]["type"] == "aws"
    workers = prepared["available_node_types"]["gpu_worker"]
    assert (workers["min_workers"], workers["max_workers"]) == (0, 4)
    assert workers["node_config"]["InstanceType"] == "g5.12xlarge"  # 4 GPUs per worker node
    assert prepared["head_node_type"] == "head"


def test_gcp_variant_passes_rays_validation(aws):
    prepared = ray_validate(gcp_variant(aws))
    assert prepared["provider"]["type"] == "gcp"
    assert prepared["available_node_types"]["gpu_worker"]["resources"]["GPU"] == 4


def test_the_validator_rejects_a_broken_config(aws):
    broken = copy.deepcopy(aws)
    broken["available_node_types"]["gpu_worker"]["node_confg"] = broken["available_node_types"]["gpu_worker"].pop("node_config")
    with pytest.raises(jsonschema.ValidationError):
        ray_validate(broken)
    too_many = copy.deepcopy(aws)
    too_many["available_node_types"]["gpu_worker"]["min_workers"] = 9
    with pytest.raises(ValueError, match="max_workers"):
        ray_validate(too_many)


def test_only_ssh_is_open_and_services_stay_on_localhost(aws):
    assert aws["provider"]["security_group"]["IpPermissions"] == []  # Ray adds SSH + intra-cluster only
    head = " ".join(aws["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head
    assert "python -m foldwise.infra.mlflow_server" in head and "--host" not in head  # the launcher binds 127.0.0.1
    assert "MLFLOW_TRACKING_URI=http://127.0.0.1:5000" in head


def test_token_auth_on_every_node(aws):
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = [c for c in aws[key] if "ray start" in c]
        assert start and all("RAY_AUTH_MODE=token" in c for c in start), key
    assert aws["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"


def test_setup_installs_the_project_like_readme(aws):
    setup = " && ".join(aws["setup_commands"])
    assert "python3 -m venv .venv" in setup and ". .venv/bin/activate" in setup and "pip install -q -c constraints-dev.txt -e '.[cluster]'" in setup
    import ray

    assert f"ray[default]=={ray.__version__}" in setup  # the cluster runs the client's Ray version
    assert aws["file_mounts"]["~/foldwise"] == "."


def test_kuberay_rayjob_manifest_runs_foldwise_with_token_auth():
    job = yaml.safe_load((REPO / "infra" / "k8s" / "rayjob.yaml").read_text())
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    assert job["spec"]["entrypoint"].split("&&")[-1].split()[:2] == ["foldwise", "run"]
    cluster = job["spec"]["rayClusterSpec"]
    assert cluster["authOptions"] == {"mode": "token"}
    import ray

    assert cluster["rayVersion"] == ray.__version__
    worker = cluster["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == "4"
    dockerfile = (REPO / "infra" / "Dockerfile").read_text()
    assert f"rayproject/ray:{ray.__version__}-" in dockerfile and "RAY_AUTH_MODE=token" in dockerfile


def test_running_head_is_the_recorded_ray_process_only_while_it_lives(tmp_path) -> None:
    """Commands join a desktop cluster only when its recorded Ray head is the very process `up`
    started: a dead pid, a reused pid (other start time) or an unreadable record means no cluster."""
    import dataclasses
    import os

    import psutil

    from foldwise.infra.cluster_state import ClusterState, Service, running_head

    me = psutil.Process(os.getpid())
    ray = Service(name="ray", pid=me.pid, pgid=os.getpgid(me.pid), create_time=me.create_time(), log="ray.log")
    state = ClusterState(dir=str(tmp_path), gcs_address="127.0.0.1:6390", dashboard_url="http://127.0.0.1:8270",
                         mlflow_url="http://127.0.0.1:5010", temp_dir=str(tmp_path), services=(ray,), env={})
    assert running_head(tmp_path) is None  # nothing recorded
    state.save()
    assert running_head(tmp_path).gcs_address == "127.0.0.1:6390"
    dataclasses.replace(state, services=(dataclasses.replace(ray, create_time=ray.create_time - 100),)).save()
    assert running_head(tmp_path) is None  # the pid now belongs to another process
    dead = psutil.Popen(["true"])
    dead.wait()
    dataclasses.replace(state, services=(dataclasses.replace(ray, pid=dead.pid),)).save()
    assert running_head(tmp_path) is None
    (tmp_path / "cluster.json").write_text("{not json")
    assert running_head(tmp_path) is None
