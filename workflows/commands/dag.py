"""`foldwise dag SPEC`: the run's node graph, each node's inputs, key and cache state, and a picture.

Nothing runs and nothing is logged: the spec is validated against the data (exit 2 on bad input),
the keys are computed as `foldwise run` computes them, and the cache is asked which entries exist.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from foldwise.infra import storage
from foldwise.tasks.dag_picture import CACHED, TO_RUN, DagNode, write_pictures
from foldwise.tasks.report import write_json
from foldwise.workflows.engine.cache import Cache
from foldwise.workflows.pipeline.dag import node_keys
from foldwise.workflows.pipeline.dag_nodes import dag_nodes
from foldwise.workflows.pipeline.plan import plan_run
from foldwise.workflows.pipeline.spec import WorkflowSpec, load_spec


@dataclass(frozen=True)
class DagResult:
    summary: dict[str, Any]
    out_dir: Path
    nodes: tuple[DagNode, ...] = field(default=(), repr=False)


def show_dag(spec: WorkflowSpec | str | Path, *, overrides: Sequence[str] = (), out: str | Path | None = None,
             tracking_uri: str | None = None, cache_root: str | None = None, checks: bool = True) -> DagResult:
    """The Python API of `foldwise dag` (same data as summary.json). Raises SpecError/InputError."""
    if not isinstance(spec, WorkflowSpec):
        spec = load_spec(spec, overrides)
    plan = plan_run(spec, tracking_uri)
    keys = node_keys(spec, plan.inputs, list(plan.models), plan.version)
    nodes = dag_nodes(spec, plan.inputs, plan.models, keys, Cache(cache_root), checks=checks)
    out_dir = Path(out) if out else Path(storage.outputs_root()) / spec.name / f"dag-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}"
    pictures = write_pictures(nodes, out_dir, spec.name)
    summary = {"command": "dag", "experiment": spec.experiment, "nodes": [n.as_dict() for n in nodes],
               "counts": {"nodes": len(nodes), CACHED: sum(n.state == CACHED for n in nodes),
                          "to_run": sum(n.state == TO_RUN for n in nodes)},
               "pictures": pictures}
    write_json(out_dir / "summary.json", summary)
    return DagResult(summary=summary, out_dir=out_dir, nodes=tuple(nodes))
