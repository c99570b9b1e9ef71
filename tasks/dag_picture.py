"""The node graph as a picture: Graphviz DOT (rendered to PNG/SVG when `dot` is installed) and Mermaid.

Plain text builders over `DagNode`s, so `foldwise dag` and `foldwise run` draw the same graph;
the cache state colours each node (cached: green, to run: orange, the data files: grey).
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

CACHED, TO_RUN, SOURCE = "cached", "to run", "source"
_COLOURS = {CACHED: "#c8e6c9", TO_RUN: "#ffe0b2", SOURCE: "#e0e0e0"}


@dataclass(frozen=True)
class DagNode:
    """One node of a command's DAG, before it runs."""

    id: str  # unique, stable: 'step:ratios', 'fold:lgbm:3'
    kind: str  # raw | step | checks | data | plan | fold | predict_test | ensemble
    label: str
    inputs: tuple[str, ...]  # ids of the nodes it reads
    key: str  # its content key ('' for none)
    state: str  # cached | to run | source

    def as_dict(self) -> dict[str, object]:
        return {"id": self.id, "kind": self.kind, "label": self.label, "inputs": list(self.inputs), "key": self.key,
                "state": self.state}


def _safe(node_id: str) -> str:
    return "n_" + "".join(c if c.isalnum() else "_" for c in node_id)


def to_dot(nodes: Sequence[DagNode], title: str = "foldwise") -> str:
    lines = [f'digraph "{title}" {{', "  rankdir=LR;", '  node [shape=box, style="rounded,filled", fontname="Helvetica"];']
    for n in nodes:
        label = f"{n.label}\\n{n.state}" + (f"\\n{n.key[:8]}" if n.key else "")
        lines.append(f'  {_safe(n.id)} [label="{label}", fillcolor="{_COLOURS.get(n.state, "#ffffff")}"];')
    for n in nodes:
        lines += [f"  {_safe(i)} -> {_safe(n.id)};" for i in n.inputs]
    lines.append("}")
    return "\n".join(lines) + "\n"


def to_mermaid(nodes: Sequence[DagNode]) -> str:
    lines = ["flowchart LR"]
    for n in nodes:
        label = f"{n.label}<br/>{n.state}" + (f"<br/>{n.key[:8]}" if n.key else "")
        lines.append(f'  {_safe(n.id)}["{label}"]:::{n.state.replace(" ", "_")}')
    for n in nodes:
        lines += [f"  {_safe(i)} --> {_safe(n.id)}" for i in n.inputs]
    lines += [f"  classDef {state.replace(' ', '_')} fill:{colour}" for state, colour in _COLOURS.items()]
    return "\n".join(lines) + "\n"


def write_pictures(nodes: Sequence[DagNode], folder: Path, title: str = "foldwise") -> dict[str, str]:
    """dag.dot and dag.mmd always; dag.png and dag.svg too when Graphviz's `dot` is on the PATH.
    Returns {format: path}."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {"dot": folder / "dag.dot", "mermaid": folder / "dag.mmd"}
    out["dot"].write_text(to_dot(nodes, title))
    out["mermaid"].write_text(to_mermaid(nodes))
    dot = shutil.which("dot")
    if dot:
        for fmt in ("png", "svg"):
            target = folder / f"dag.{fmt}"
            done = subprocess.run([dot, f"-T{fmt}", str(out["dot"]), "-o", str(target)], capture_output=True,
                                  timeout=60, check=False)
            if done.returncode == 0:
                out[fmt] = target
    return {k: str(v) for k, v in out.items()}
