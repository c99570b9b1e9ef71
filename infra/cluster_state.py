"""What `foldwise cluster up` records about the desktop cluster it started (DIR/cluster.json).

Read by `foldwise.infra.cluster` (which writes it, and stops exactly the recorded process trees)
and by `foldwise.infra.jobs` (which finds the desktop cluster's dashboard when no --address is
given) and the Ray executor (which joins its head instead of starting a second Ray on the same
cores). Standard library only (psutil when a head is recorded), so reading it costs nothing.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
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
    listen: str = HOST  # the address Ray binds and advertises (`cluster up --listen`)
    ports: dict[str, int] = field(default_factory=dict)  # every port of the head, by the flag that set it

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


def alive(s: Service) -> bool:
    """The recorded process is running and is the one we started (not a reused pid)."""
    import psutil

    try:
        p = psutil.Process(s.pid)
        return abs(p.create_time() - s.create_time) < 1.0 and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def running_head(directory: str | Path = DEFAULT_DIR) -> ClusterState | None:
    """The desktop cluster recorded in `directory` (this folder's `.foldwise/cluster` by default),
    if its Ray head is still the process `up` started (not a reused pid); else None.

    An unreadable record counts as no cluster: `foldwise cluster status` is where it is reported."""
    try:
        state = ClusterState.load(Path(directory).resolve())
    except (OSError, ValueError, TypeError, KeyError):
        return None
    if state is None:
        return None
    return state if any(s.name == "ray" and alive(s) for s in state.services) else None
