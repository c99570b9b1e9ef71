"""What `foldwise cluster up` records about the desktop cluster it started (DIR/cluster.json).

Read by `foldwise.infra.cluster` (which writes it, and stops exactly the recorded process trees)
and by `foldwise.infra.jobs` (which finds the desktop cluster's dashboard when no --address is
given). Standard library only, so reading it costs nothing.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

DEFAULT_DIR = ".foldwise/cluster"
STATE_FILE = "cluster.json"
HOST = "127.0.0.1"


@dataclass(frozen=True)
class Service:
    """One started process tree: its root pid, process group and start time (to spot pid reuse)."""

    name: str
    pid: int
    pgid: int
    create_time: float
    log: str


@dataclass(frozen=True)
class ClusterState:
    dir: str
    gcs_address: str
    dashboard_url: str
    mlflow_url: str
    temp_dir: str
    services: tuple[Service, ...]
    env: dict[str, str]

    def save(self) -> None:
        path = Path(self.dir) / STATE_FILE
        path.write_text(json.dumps(asdict(self), indent=2))

    @staticmethod
    def load(directory: str | Path) -> ClusterState | None:
        path = Path(directory) / STATE_FILE
        if not path.exists():
            return None
        raw = json.loads(path.read_text())
        raw["services"] = tuple(Service(**s) for s in raw["services"])
        return ClusterState(**raw)
