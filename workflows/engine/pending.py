"""Why a task still waits for a node, said once it has waited longer than a threshold.

On a cluster foldwise joined (an autoscaling one, or one nodes join by hand) a task may ask
for more than any node now has: Ray then holds it, silently from the driver's side, until a
node that large joins. Preflight refuses such a request on a cluster it can size in full (a
local Ray); on a cluster that can grow it cannot know, so the executor submits the task and
this module reports, while the driver waits, what Ray says about it: the node table (no alive
node has the resources) and the autoscaler's view (the pending demand, nodes being launched,
launches that failed). A task that fits some node is only queued behind other tasks, or running;
the progress bar shows that, so nothing is printed for it.
"""

from __future__ import annotations

import os
import sys
import time
from typing import TYPE_CHECKING, Any, TextIO

from foldwise.workflows.errors import InputError

if TYPE_CHECKING:
    from foldwise.workflows.engine.executor import Slot

PENDING_WARN_ENV = "FOLDWISE_PENDING_WARN_S"
DEFAULT_PENDING_WARN_S = 60.0


def pending_warn_seconds() -> float:
    """The threshold: $FOLDWISE_PENDING_WARN_S, else 60 s."""
    raw = os.environ.get(PENDING_WARN_ENV)
    if raw is None:
        return DEFAULT_PENDING_WARN_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:  # also refuses nan
        raise InputError(f"${PENDING_WARN_ENV}: {raw!r} is not a positive number of seconds")
    return value


def oversized(slot: Slot, nodes: list[dict]) -> str | None:
    """Why no alive node of the cluster can hold `slot` (naming the largest node), else None."""
    alive = [n for n in nodes if n.get("Alive")]
    if not alive:
        return None
    asked = {"CPU": slot.cpus, "GPU": slot.gpus, "memory": float(slot.memory or 0)}
    for what, amount in asked.items():
        if amount <= 0:
            continue
        largest = max(alive, key=lambda n: n.get("Resources", {}).get(what, 0.0))
        have = largest.get("Resources", {}).get(what, 0.0)
        if amount > have:
            return (f"asks for {_quantity(what, amount)}, but the largest node of the cluster "
                    f"({largest.get('NodeManagerAddress', '?')}) has {_quantity(what, have)}")
    return None


def _quantity(what: str, value: float) -> str:
    return f"{value / 2**30:.1f} GiB of memory" if what == "memory" else f"{value:g} {what}"


def autoscaler_note(ray: Any) -> str:
    """What Ray's autoscaler state says about pending work: its demand, and nodes launching or failed."""
    try:
        from ray.autoscaler.v2.sdk import get_cluster_status  # what `ray status` reads

        status = get_cluster_status(ray.get_runtime_context().gcs_address)
    except Exception as e:  # noqa: BLE001 - an older head or no GCS access: say so, the node facts stand
        text = str(e).strip().splitlines()
        return f"Ray's autoscaler state is unavailable ({type(e).__name__}: {text[-1] if text else ''})"
    demand = [f"{dict(sorted(b.bundle.items()))} x{b.count}"
              for d in status.resource_demands.ray_task_actor_demand for b in d.bundles_by_count]
    parts = [f"Ray's pending demand: {', '.join(demand)}" if demand else "Ray reports no pending demand"]
    launching = [f"{lr.count} x {lr.ray_node_type_name or lr.instance_type_name}" for lr in status.pending_launches]
    launching += [f"1 x {n.ray_node_type_name or n.instance_type_name} ({n.details or 'starting'})"
                  for n in status.pending_nodes]
    failed = [f"{lr.ray_node_type_name or lr.instance_type_name}: {lr.details or 'failed'}"
              for lr in status.failed_launches]
    if launching:
        parts.append(f"the autoscaler is launching {', '.join(launching)}")
    else:
        parts.append("no node is being launched (no autoscaler, or none of its node types is that large)")
    if failed:
        parts.append(f"failed launches: {'; '.join(failed)}")
    return "; ".join(parts)


class PendingWatch:
    """Tracks submitted tasks; `check` (called while the driver waits) reports the ones no node can hold.

    Each group of tasks asking for the same resources is reported when it first passes the
    threshold and again whenever Ray's reason changes (e.g. the autoscaler starts a node)."""

    def __init__(self, ray: Any, threshold: float, out: TextIO | None = None) -> None:
        self._ray, self.threshold, self._out = ray, threshold, out
        self.poll = min(max(threshold / 2, 0.5), 10.0)  # how long one wait blocks between checks
        self._since: dict[Any, tuple[float, Slot, str]] = {}
        self._said: dict[Slot, str] = {}

    def submitted(self, ref: Any, slot: Slot, label: str) -> None:
        self._since[ref] = (time.monotonic(), slot, label)

    def done(self, ref: Any) -> None:
        self._since.pop(ref, None)

    def check(self) -> None:
        now = time.monotonic()
        stale: dict[Slot, list[tuple[str, float]]] = {}
        for since, slot, label in self._since.values():
            if now - since >= self.threshold:
                stale.setdefault(slot, []).append((label, now - since))
        if not stale:
            return
        nodes = self._ray.nodes()
        note = None
        for slot, tasks in stale.items():
            problem = oversized(slot, nodes)
            if problem is None:
                self._said.pop(slot, None)  # fits a node now: queued or running, not stuck
                continue
            note = note or autoscaler_note(self._ray)
            reason = f"{problem}; {note}"
            if self._said.get(slot) == reason:
                continue
            self._said[slot] = reason
            names = ", ".join(sorted({label for label, _ in tasks})[:3]) + (", ..." if len(tasks) > 3 else "")
            print(f"foldwise: {len(tasks)} task(s) pending for {max(w for _, w in tasks):.0f} s ({names}): {reason}",
                  file=self._out or sys.stderr, flush=True)
