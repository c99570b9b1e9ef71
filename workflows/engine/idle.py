"""Driver work that can wait for a free core: a thread that starts when told, at idle priority.

Once the fold tasks are submitted they fill the slots, and the driver's own set-up work
(importing MLflow and opening its store: ~1.5 CPU-s) at normal priority takes those seconds
from the folds, since Ray's workers run niced. Where the folds will leave a CPU free before
they end (a last round with fewer folds than slots, GPU-bound folds), the work waits for it
on a thread and then runs in Linux's SCHED_IDLE class, on cycles nothing else wants. The
caller decides when that is (`start_now`); after `wait_at_most` seconds it starts anyway, so
the wait bounds how late the work can start (e.g. the MLflow run appearing in the UI), and an
idle thread still gets a few percent of a busy core, so it always finishes. Linux schedules
threads, not processes: only this thread is lowered, never the driver. Elsewhere (macOS) it
runs at normal priority after its wait: same results.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any


class IdleWork(Future):
    """A Future for work on a waiting thread. `start_now()` ends its wait (a free CPU, or someone
    about to wait on the result); `seconds` is how long the work itself ran."""

    def __init__(self) -> None:
        super().__init__()
        self.go = threading.Event()
        self.lower = True  # run at idle priority (False: at the caller's, for work wanted now)
        self.seconds = 0.0

    def start_now(self, lower: bool = True) -> None:
        """End the wait; `lower=False` runs the work at normal priority (only the first call counts)."""
        if not self.go.is_set():
            self.lower = lower
            self.go.set()

    def result(self, timeout: float | None = None) -> Any:
        self.start_now()  # whoever waits for it wants it now, not after the wait
        return super().result(timeout)


def on_idle_thread(fn: Callable[[], Any], name: str, wait_at_most: float = 0.0) -> IdleWork:
    """Start `fn()` on a daemon thread once `start_now()` is called or `wait_at_most` seconds
    have passed, at idle CPU priority unless told otherwise; its value or exception comes from
    `.result()`."""
    work = IdleWork()
    work.set_running_or_notify_cancel()

    def body() -> None:
        work.go.wait(wait_at_most)
        if work.lower:
            lower_priority()
        start = time.perf_counter()
        try:
            value = fn()
        except BaseException as e:  # noqa: BLE001 - handed to whoever waits on the result
            work.seconds = time.perf_counter() - start
            work.set_exception(e)
        else:
            work.seconds = time.perf_counter() - start
            work.set_result(value)

    threading.Thread(target=body, name=name, daemon=True).start()
    return work


def done(value: Any) -> IdleWork:
    """`value` as work already finished (for callers that did it on the spot)."""
    work = IdleWork()
    work.set_running_or_notify_cancel()
    work.set_result(value)
    return work


def lower_priority() -> bool:
    """Put the calling thread in SCHED_IDLE (threads it starts inherit it); False where unsupported."""
    if not hasattr(os, "SCHED_IDLE"):
        return False
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))  # pid 0: this thread only, on Linux
    except OSError:  # a sandbox that forbids it: the work still runs, at normal priority
        return False
    return True
