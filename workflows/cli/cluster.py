"""`foldwise cluster up|down|status`: a persistent desktop cluster (Ray head + MLflow server).

The cluster itself (what is started, recorded and stopped) is `foldwise.infra.cluster`; this
module parses the flags, prints the addresses and turns its errors into exit codes: bad flags
or taken ports 2 (nothing started), a cluster that cannot start or stop 1.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from foldwise.infra.cluster_state import DEFAULT_DIR

if TYPE_CHECKING:
    from foldwise.infra.cluster import ClusterConfig, ClusterState


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=("up", "down", "status"), help="start, stop, or show the desktop cluster")
    p.add_argument("--dir", default=DEFAULT_DIR, help=f"state and data: MLflow store, cache, outputs (default {DEFAULT_DIR})")
    p.add_argument("--gpus", type=int, help="GPUs Ray may schedule on this machine (default: detected)")
    p.add_argument("--cpus", type=int, help="CPUs Ray may schedule on this machine (default: detected)")
    p.add_argument("--ray-port", type=int, default=6379, help="Ray (GCS) port (default 6379)")
    p.add_argument("--dashboard-port", type=int, default=8265, help="dashboard / Jobs API port on --listen (default 8265)")
    p.add_argument("--mlflow-port", type=int, default=5000, help="MLflow server port on 127.0.0.1 (default 5000)")
    p.add_argument("--backend-store-uri", help="MLflow store (default sqlite in DIR/mlflow; or postgresql://...)")
    p.add_argument("--artifacts-destination", help="MLflow artifacts (default DIR/mlflow/artifacts; or s3://...)")
    p.add_argument("--mlflow-basic-auth", action="store_true", help="MLflow basic auth (jobs get the admin credentials)")
    p.add_argument("--cache", help="cache root for jobs: a path or s3://, gs:// URI (default DIR/cache)")
    p.add_argument("--outputs", help="outputs root for jobs: a path or URI (default DIR/outputs)")
    p.add_argument("--temp-dir", help="Ray's temp dir (default a per-port folder under the system temp dir)")
    p.add_argument("--no-warm", dest="warm", action="store_false",
                   help="do not start the warm command server (by default commands run from this folder skip "
                        "~5 s of imports by forking from it; docs/clusters.md)")
    p.add_argument("--listen", default="127.0.0.1", metavar="ADDRESS",
                   help="address Ray binds and advertises (default 127.0.0.1: every Ray port on loopback, no other "
                        "machine can join); this machine's network address lets other nodes join, and then Ray "
                        "listens on every interface: firewall the ports docs/clusters.md lists")


def command(args: argparse.Namespace) -> int:
    from foldwise.infra import cluster
    from foldwise.workflows.cli.main import EXIT_FAILED, EXIT_OK, bad_input, failed

    directory = Path(args.dir).expanduser().resolve()
    if args.action == "status":
        return status(directory)
    if args.action == "down":
        return EXIT_OK if down(directory) else EXIT_FAILED
    config = cluster_config(args)
    try:
        cluster.check_config(directory, config)
    except cluster.ClusterConfigError as e:
        return bad_input(str(e))
    try:
        started = cluster.up(directory, config)
    except cluster.ClusterError as e:
        return failed(str(e))
    if started.already_up:
        print(f"the desktop cluster in {directory} is already up", file=sys.stderr)
    else:
        print(started.token_note)
    print_addresses(started.state)
    return EXIT_OK


def cluster_config(args: argparse.Namespace) -> ClusterConfig:
    from foldwise.infra.cluster import ClusterConfig

    return ClusterConfig(gpus=args.gpus, cpus=args.cpus, ray_port=args.ray_port, dashboard_port=args.dashboard_port,
                         mlflow_port=args.mlflow_port, backend_store_uri=args.backend_store_uri,
                         artifacts_destination=args.artifacts_destination, mlflow_basic_auth=args.mlflow_basic_auth,
                         cache=args.cache, outputs=args.outputs, temp_dir=args.temp_dir, listen=args.listen,
                         warm=args.warm)


def down(directory: Path) -> bool:
    """Stop the recorded cluster; True when nothing of it is left running."""
    from foldwise.infra import cluster
    from foldwise.workflows.cli.main import failed

    stopped = cluster.down(directory)
    if stopped.state is None:
        print(f"no desktop cluster recorded in {directory} (nothing to stop)")
        return True
    if stopped.left:
        failed(f"still running after SIGKILL: pids {sorted(stopped.left)}")
        return False
    print(f"stopped the desktop cluster ({', '.join(s.name for s in stopped.state.services)}); "
          f"runs, artifacts, cache and outputs kept in {directory}")
    return True


def status(directory: Path) -> int:
    from foldwise.infra.cluster import ClusterState, alive
    from foldwise.workflows.cli.main import EXIT_OK

    state = ClusterState.load(directory)
    if state is None:
        print(f"no desktop cluster in {directory} (start one with `foldwise cluster up`)")
        return EXIT_OK
    for s in state.services:
        print(f"{s.name:<7}{'running' if alive(s) else 'NOT RUNNING'}  pid {s.pid}  log {s.log}")
    print_addresses(state)
    return EXIT_OK


def print_addresses(state: ClusterState) -> None:
    joins = ("foldwise run/check/ablate/sweep from this folder join it" if state.dir.endswith(DEFAULT_DIR)
             else f"drivers on this machine: foldwise run SPEC --address {state.gcs_address}")
    print(f"Ray head         {state.gcs_address}   ({joins})")
    if state.listen == "127.0.0.1":
        print("Ray ports        all on 127.0.0.1 (no other machine can join; `cluster up --listen ADDRESS` for that)")
    else:
        print(f"Ray ports        on every interface or {state.listen}: firewall them (docs/clusters.md): "
              + ", ".join(str(p) for p in sorted(state.ports.values())) + " and the workers' OS-assigned ports")
    print(f"Ray dashboard    {state.dashboard_url}   (Jobs API; submit here)")
    print(f"MLflow           {state.mlflow_url}   (tracking server and UI)")
    for k in ("FOLDWISE_CACHE", "FOLDWISE_OUTPUTS"):
        print(f"{k:<17}{state.env.get(k, '')}")
    if any(s.name == "warm" for s in state.services):
        print(f"warm server      {state.dir}/warm.sock   (commands from this folder fork from its imports; "
              "FOLDWISE_WARM=0 opts out)")
    print(f"state and logs   {state.dir}")
    print("submit a job:    foldwise submit workflows/examples/breast_cancer.yaml "
          f"--address {state.dashboard_url} --wait")
    print("stop:            foldwise cluster down" + ("" if state.dir.endswith(DEFAULT_DIR) else f" --dir {state.dir}"))
