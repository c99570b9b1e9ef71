"""`LazyExecutor`: the executor a command holds, started only when (and where) its tasks must run.

A fully cached rerun never starts Ray; `--executor auto` keeps small work in this process
(`small_work`); work that needs Ray can start it early, on a thread, while the driver still reads
and checks the data (`expect_early`, `foldwise.workflows.engine.early`), and stop it beside the
command's last steps (`close_beside`).
"""

from __future__ import annotations

import math
import os
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from foldwise.workflows.engine.early import BackgroundStart, early_start_enabled
from foldwise.workflows.engine.executor import LocalExecutor, RayExecutor, Slot, _last_line, make_executor
from foldwise.workflows.errors import TaskFailed


@dataclass(frozen=True)
class Work:
    """What a DAG is about to compute, known once the data is prepared: enough to tell small work."""

    rows: int
    features: int
    fits: int  # fold tasks to run (cached ones excluded)
    gpus: bool = False  # some task asks for a GPU

    @property
    def cells(self) -> int:
        return self.rows * self.features * self.fits


# `--executor auto` runs work up to this many cells x fits in this process: ~5 s of LightGBM on
# 2 cores, less than starting Ray and its workers (7-10 s), so Ray could not win it back.
SMALL_WORK_CELLS = 5_000_000


def small_work(work: Work, address: str | None) -> bool:
    """In-process is faster and gives the same DAG (same nodes, keys and results) when the work is
    small, wants no GPU, names no cluster, and this process has not joined a Ray cluster already."""
    ray = sys.modules.get("ray")
    joined = ray is not None and ray.is_initialized()
    return (not joined and address is None and not os.environ.get("RAY_ADDRESS") and not work.gpus
            and work.cells <= SMALL_WORK_CELLS)


class LazyExecutor:
    """Starts the real executor only when a task must run: a fully cached rerun never starts Ray.

    `kind="auto"`: in this process when `expect` is told the work is small (see `small_work`),
    else Ray; `chosen` says which ran."""

    def __init__(self, kind: str = "ray", address: str | None = None) -> None:
        if kind not in ("ray", "local", "auto"):
            raise ValueError(f"unknown executor {kind!r} (valid: auto, ray, local)")
        self.kind, self.address = kind, address
        self._inner: RayExecutor | LocalExecutor | None = None
        self._early: BackgroundStart | None = None  # Ray starting on a thread (`expect_early`)
        self._closing: threading.Thread | None = None  # Ray shutting down beside the last steps (`close_beside`)

    def expect(self, work: Work) -> None:
        """The work the DAG is about to submit; settles `auto` before anything starts."""
        if self.kind == "auto" and self._inner is None:
            self.kind = "local" if small_work(work, self.address) else "ray"
            if self.kind == "local":
                print(f"foldwise: small work ({work.rows} rows x {work.features} features, {work.fits} fits): "
                      "running in this process, no Ray start-up (--executor ray to use Ray)", file=sys.stderr)

    def expect_early(self, work: Work | None = None) -> bool:
        """The work as estimated before the data is read and checked (None: tasks are certain): when it
        needs Ray (`ray`, or `auto` and not small), Ray starts now on a thread while the driver goes on
        (`foldwise.workflows.engine.early`) and `auto` settles on Ray. Only once every cheap refusal of
        bad input has passed; close() stops it. True when a start began ($FOLDWISE_EARLY_RAY=0: never)."""
        if self._inner is not None or self._early is not None or self.kind == "local" or not early_start_enabled():
            return False
        if self.kind == "auto" and work is not None and small_work(work, self.address):
            return False
        self.kind, address = "ray", self.address
        self._early = BackgroundStart(lambda: make_executor("ray", address))
        return True

    @property
    def chosen(self) -> str:
        """The executor that ran tasks ('none' when everything came from the cache)."""
        return self._inner.name if self._inner is not None else "ray" if self._early is not None else "none"

    @property
    def started(self) -> bool:
        return self._inner is not None or self._early is not None

    @property
    def startup_seconds(self) -> float:
        """Seconds the command waited for its executor to start (of an early start: what its work did not cover)."""
        if self._early is not None:
            return self._early.waited
        return self._inner.startup_seconds if self._inner is not None else 0.0

    @property
    def start_seconds(self) -> float:
        """Seconds the executor's start-up took, wherever it ran (on the critical path or beside it)."""
        if self._early is not None:
            return self._early.seconds
        return self._inner.startup_seconds if self._inner is not None else 0.0

    def timeline(self, origin: float) -> dict[str, float]:
        """When an early start was asked for and was up, in seconds after `origin` (a perf_counter value)."""
        return self._early.timeline(origin) if self._early is not None else {}

    def _start(self) -> RayExecutor | LocalExecutor:
        if self._inner is None:
            if self._early is not None:
                self._inner = self._early.adopt()
            else:
                self._inner = make_executor("ray" if self.kind == "auto" else self.kind, self.address)
        return self._inner

    def start(self) -> None:
        """Start it now (work is certain and something else can go on meanwhile)."""
        self._start()

    def submit(self, fn: Callable, *args: Any, slot: Slot = Slot(), name: str | None = None) -> Any:
        return self._start().submit(fn, *args, slot=slot, name=name)

    def cpus(self) -> float:
        """The executor's CPUs; unbounded while it has not started (nothing runs, nothing waits)."""
        return self._inner.cpus() if self._inner is not None else math.inf

    def put(self, value: Any) -> Any:
        return self._start().put(value)

    def get(self, handle: Any) -> Any:
        return self._start().get(handle)

    def as_completed(self, handles: list[Any]) -> Iterator[tuple[Any, Any]]:
        return self._start().as_completed(handles) if handles else iter(())

    def run(self, fn: Callable, *args: Any, name: str | None = None) -> Any:
        """fn(*args) as a task when the executor is up anyway, else right here (cheap nodes)."""
        if self._inner is None:
            try:
                return fn(*args)
            except Exception as e:  # noqa: BLE001 - reported like a task failure
                raise TaskFailed(name or fn.__name__, _last_line(e)) from e
        return self.get(self.submit(fn, *args, name=name))

    def finished(self, handles: list[Any]) -> list[tuple[Any, Any]]:
        return self._inner.finished(handles) if self._inner is not None and handles else []

    def cancel(self, handles: list[Any]) -> None:
        if self._inner is not None:
            self._inner.cancel(handles)

    def close_beside(self) -> None:
        """`close()` on a thread once every task is done: Ray's shutdown (~1.4 s, its processes stopped one
        by one) runs beside the outputs and logging (task values stay readable after it). `close()`
        joins it, and the interpreter too (not a daemon): no Ray process outlives the command."""
        if self._closing is None and self.started:
            self._closing = threading.Thread(target=self._close_now, name="foldwise-ray-stop")
            self._closing.start()

    def close(self) -> None:
        """Stop what this started (joining `close_beside`); an early start under way is waited for, then stopped."""
        if self._closing is not None:
            self._closing.join()
            return
        self._close_now()

    def _close_now(self) -> None:
        if self._inner is None and self._early is not None:
            try:
                self._inner = self._early.adopt()
            except Exception:  # noqa: BLE001 - the start failed: nothing to stop
                return
        if self._inner is not None:
            self._inner.close()
        if self._early is not None:
            self._early.release()
