"""The node graph of `foldwise run` as data, with each node's key and cache state, before anything runs.

`foldwise dag` prints it and `foldwise run` draws it beside its outputs (logged on the parent
MLflow run): data files -> frame steps -> checks -> data -> fold plan -> model x fold -> ensemble.
A node is `cached` when its entry is in the cache, else `to run` (the files are `source`).
Reading the state costs one existence check per node; no entry is read.
"""

from __future__ import annotations

from collections.abc import Sequence

from foldwise.tasks.dag_picture import CACHED, SOURCE, TO_RUN, DagNode
from foldwise.tasks.models import ModelConfig
from foldwise.tasks.seeds import base_name
from foldwise.tasks.steps import RAW
from foldwise.workflows.engine.cache import Cache
from foldwise.workflows.pipeline.dag import NodeKeys, checks_key, ensemble_key
from foldwise.workflows.pipeline.inputs import Inputs
from foldwise.workflows.pipeline.spec import WorkflowSpec


def dag_nodes(spec: WorkflowSpec, inputs: Inputs, models: Sequence[ModelConfig], keys: NodeKeys, cache: Cache,
              checks: bool = True) -> list[DagNode]:
    """Every node of the run's DAG in dependency order, with its inputs, key and cache state."""

    def state(kind: str, key: str) -> str:
        return CACHED if cache.has(kind, key) else TO_RUN

    nodes: list[DagNode] = []
    raw_id = "raw"
    files = ", ".join(p.rsplit("/", 1)[-1] for p in (inputs.data.train, inputs.data.test) if p)
    nodes.append(DagNode(raw_id, "raw", f"data files ({files})", (), keys.steps.raw if keys.steps else "", SOURCE))
    step_ids = []
    if keys.steps is not None:
        for s in keys.steps.configs:
            node_id = f"step:{s.name}"
            ups = tuple(raw_id if i == RAW else f"step:{i}" for i in s.inputs)
            nodes.append(DagNode(node_id, "step", f"step {s.name} ({s.fn})", ups, keys.steps.steps[s.name],
                                 state("step", keys.steps.steps[s.name])))
            step_ids.append(node_id)
    frame_inputs = tuple(step_ids) or (raw_id,)
    data_inputs = frame_inputs
    if checks:
        key = checks_key(spec, keys)
        nodes.append(DagNode("checks", "checks", "data checks", frame_inputs, key, state("checks", key)))
        data_inputs = (*frame_inputs, "checks")
    nodes.append(DagNode("data", "data", "prepared data (object store)", data_inputs, keys.data, state("data", keys.data)))
    nodes.append(DagNode("plan", "plan", f"fold plan ({inputs.scheme}, {spec.cv.folds} folds, seed {spec.cv.seed})",
                         (raw_id,), keys.plan, state("plan", keys.plan)))
    for (name, k), key in keys.folds.items():  # k: split (repeat x fold); seed-averaging nodes named model@seed
        nodes.append(DagNode(f"fold:{name}:{k}", "fold", f"train_fold {name} split {k}", ("data", "plan"), key,
                             state("fold", key)))
    for (name, k), key in keys.tests.items():
        nodes.append(DagNode(f"test:{name}:{k}", "predict_test", f"predict_test {name} split {k}",
                             (f"fold:{name}:{k}", "data"), key, state("test", key)))
    names = spec.ensemble.models or [m.name for m in models]
    key = ensemble_key(spec, inputs, keys, names, spec.cv.folds * spec.cv.repeats)
    ens_inputs = tuple(n.id for n in nodes if n.kind in ("fold", "predict_test")
                       and base_name(n.id.split(":")[1]) in names)
    nodes.append(DagNode("ensemble", "ensemble", f"ensemble ({spec.ensemble.method})", ens_inputs, key,
                         state("ensemble", key)))
    return nodes
