"""One process per sweep that hands each trial the data of its frame-step params, building each once.

Trials whose `search.space` holds frame-step params (`steps.NAME.PARAM`) each need the data
those params make. The frame server is a Ray actor on the driver's node (so the driver's folder,
import path and local cache mean the same there): a trial asks it for its params' data and gets
an object reference. Each data key is built once, by the pipeline's builder (which caches the
steps and the data as `foldwise run` does); trials asking for a key being built wait for it,
and later ones get the same reference, so equal step params share one frame in the object store.
The actor takes no CPU of its own: a trial waiting for its data holds its slot meanwhile.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, Protocol

import ray

KEEP = 8  # frames kept referenced by the server (the latest ones; trials hold their own reference meanwhile)
THREADS = 64  # trials waiting on the server at once


class FrameBuilder(Protocol):
    """What the server runs (the pipeline's SteppedData): a key per step params, and the data of a key."""

    def setup(self) -> None: ...

    def key(self, params: Mapping[str, Any]) -> str: ...

    def build(self, params: Mapping[str, Any]) -> Any: ...


class _FrameServer:
    def __init__(self, builder: FrameBuilder, seeded: dict[str, list[Any]]) -> None:
        builder.setup()
        self.builder = builder
        self.refs: OrderedDict[str, list[Any]] = OrderedDict(seeded)  # key -> [ObjectRef] (a list: Ray keeps refs nested)
        self.locks: dict[str, threading.Lock] = {}
        self.guard = threading.Lock()
        self.built: list[str] = []  # keys built here, in order (the sweep's record of step work)

    def frame(self, params: dict[str, Any]) -> list[Any]:
        """[reference to the data of these step params], building it when no trial has yet."""
        key = self.builder.key(params)
        with self.guard:
            lock = self.locks.setdefault(key, threading.Lock())
        with lock:  # one build per key; trials asking meanwhile wait here for it
            with self.guard:
                found = self.refs.get(key)
                if found is not None:
                    self.refs.move_to_end(key)
                    return found
            ref = [ray.put(self.builder.build(params))]
            with self.guard:
                self.built.append(key)
                self.refs[key] = ref
                while len(self.refs) > KEEP:
                    self.refs.popitem(last=False)
            return ref

    def built_keys(self) -> list[str]:
        return list(self.built)


def start_frame_server(builder: FrameBuilder, seeded: dict[str, Any]) -> Any:
    """The sweep's frame server on this (the driver's) node; `seeded`: data key -> reference already made."""
    node = ray.get_runtime_context().get_node_id()
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    actor = ray.remote(_FrameServer).options(
        num_cpus=0, max_concurrency=THREADS, max_restarts=0, name=None,
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node, soft=False))
    return actor.remote(builder, {k: [ref] for k, ref in seeded.items()})


def trial_frame(server: Any, params: dict[str, Any]) -> Any:
    """In a trial: the reference to its step params' data (raises what building it raised)."""
    return ray.get(server.frame.remote(params))[0]


def built_keys(server: Any) -> list[str]:
    """The data keys the server built (not found in its seed or already built), in order."""
    return ray.get(server.built_keys.remote())


def stop_frame_server(server: Any) -> None:
    ray.kill(server, no_restart=True)
