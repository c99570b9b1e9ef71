"""The sweep's folder on disk: Ray Tune's state plus `sweep.json`, the pointer `--resume` finds it by."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from foldwise.workflows.commands.sweep.plan import spec_hash
from foldwise.workflows.errors import InputError
from foldwise.workflows.pipeline.spec import WorkflowSpec
from foldwise.workflows.tracking import tracker as tk

DEFAULT_STORAGE = ".foldwise/sweeps"
STATE_FILE = "sweep.json"


@dataclass(frozen=True)
class SweepState:
    """`<storage>/<spec name>/<parent run id>/sweep.json`: how `--resume` finds the sweep."""

    parent_run_id: str
    spec_name: str
    experiment: str
    tracking_uri: str
    spec_hash: str
    trials: int
    timeout: float | None
    out_dir: str  # a folder (absolute) or a URI
    tune_path: str
    status: str  # running | interrupted | failed | finished
    started: str
    resumes: int = 0

    @property
    def folder(self) -> Path:
        return Path(self.tune_path).parent

    def save(self, **changes: Any) -> SweepState:
        new = replace(self, **changes)
        path = new.folder / STATE_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(new), indent=2))
        os.replace(tmp, path)
        return new


def resolve_storage(storage: str | None) -> Path:
    """--storage, then $FOLDWISE_SWEEPS, then .foldwise/sweeps in the working directory."""
    return Path(storage or os.environ.get("FOLDWISE_SWEEPS") or DEFAULT_STORAGE).resolve()


def find_sweep(storage: Path, spec: WorkflowSpec, which: str) -> SweepState:
    """The sweep to resume: the latest unfinished one of this spec, or the one whose parent run id is given."""
    root = storage / spec.name
    states = []
    for path in sorted(root.glob(f"*/{STATE_FILE}")) if root.exists() else []:
        try:
            states.append(SweepState(**json.loads(path.read_text())))
        except (ValueError, TypeError):
            continue
    if which != "latest":
        found = [s for s in states if s.parent_run_id == which]
        if not found:
            raise InputError(f"--resume {which}: no sweep with that run id under {root}")
        state = found[0]
    else:
        open_ = sorted((s for s in states if s.status != "finished"), key=lambda s: s.started)
        if not open_:
            raise InputError(f"--resume: no unfinished sweep of spec {spec.name!r} under {root}")
        state = open_[-1]
    if state.status == "finished":
        raise InputError(f"--resume: sweep {state.parent_run_id} already finished; start a new sweep")
    return state


def resumable(storage: Path, spec: WorkflowSpec, which: str, *, trials: int | None, timeout: float | None,
              tracking_uri: str | None) -> SweepState:
    """The sweep `--resume` continues, or InputError when the spec or a flag contradicts it (exit 2)."""
    prior = find_sweep(storage, spec, which)
    if prior.spec_hash != spec_hash(spec):
        raise InputError(f"--resume: the spec changed since sweep {prior.parent_run_id} started; "
                         "resume with the same spec, or start a new sweep")
    if trials is not None and trials != prior.trials:
        raise InputError(f"--resume: sweep {prior.parent_run_id} was started with --trials {prior.trials}; "
                         "a resume continues to that total")
    if timeout is not None and timeout != prior.timeout:
        raise InputError(f"--resume: sweep {prior.parent_run_id} was started with --timeout {prior.timeout}; "
                         "a resume keeps it (Tune restores its time budget)")
    uri = tk.resolve_uri(tracking_uri, spec.tracking.uri)
    if tracking_uri and uri != prior.tracking_uri:
        raise InputError(f"--resume: sweep {prior.parent_run_id} is tracked in {prior.tracking_uri}, not {uri}")
    if tk.store_missing(prior.tracking_uri):
        raise InputError(f"--resume: {tk.store_missing(prior.tracking_uri)}")
    return prior
