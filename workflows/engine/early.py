"""Ray started on a thread while the driver still reads and checks the data (`LazyExecutor.prestart`).

Starting a local Ray costs 4-10 s of mostly waiting (its processes come up); a command that knows
it will submit tasks can spend those seconds reading its data, running its checks and opening
MLflow instead. ray.init works from a thread in Ray 2.60 (it skips only its Python SIGTERM
handler there), with two catches:
- Ray starts its GCS and raylet with PR_SET_PDEATHSIG, which Linux fires when the *thread* that
  spawned them exits: the starting thread must live as long as the cluster (it waits for
  `release()`, called once the cluster is shut down), else Ray dies under the driver a moment
  after it came up ("Failed to connect to GCS within 60 seconds").
- its core worker still installs a C-level SIGTERM handler for the whole process that aborts the
  driver (exit -6, runs left RUNNING): only the main thread may put the command's own handler
  back, so the executor does that the next time the main thread touches it (`adopt`). `FOLDWISE_EARLY_RAY=0` turns the early start off (Ray then starts at
the first task, as before), e.g. to compare the two.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

EARLY_ENV = "FOLDWISE_EARLY_RAY"


def early_start_enabled() -> bool:
    """False when $FOLDWISE_EARLY_RAY is 0/false/no/off."""
    return os.environ.get(EARLY_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


class BackgroundStart:
    """`make()` (the executor's start) run on a daemon thread; `adopt()` on the main thread takes its result.

    Timestamps are time.perf_counter() values, so a command can record when Ray was asked for,
    when it was up and how long the main thread waited for it (the start-up left on its critical path)."""

    def __init__(self, make: Callable[[], Any]) -> None:
        self.asked = time.perf_counter()
        self.ready: float | None = None  # when the start finished (either way)
        self.waited = 0.0  # seconds the main thread blocked in adopt()
        self._future: Future = Future()
        self._future.set_running_or_notify_cancel()
        self._released = threading.Event()

        def body() -> None:
            try:
                value = make()
            except BaseException as e:  # noqa: BLE001 - handed to the main thread by adopt()
                self.ready = time.perf_counter()
                self._future.set_exception(e)
                return
            self.ready = time.perf_counter()
            self._future.set_result(value)
            self._released.wait()  # Ray's processes die with the thread that started them (PDEATHSIG)

        threading.Thread(target=body, name="foldwise-ray-start", daemon=True).start()

    @property
    def seconds(self) -> float:
        """The start's wall time, from asking (0 while it runs)."""
        return self.ready - self.asked if self.ready is not None else 0.0

    def timeline(self, origin: float) -> dict[str, float]:
        """When the start was asked for and was up, in seconds after `origin` (a perf_counter value)."""
        return {"ray_asked": self.asked - origin} | ({"ray_ready": self.ready - origin} if self.ready is not None else {})

    def release(self) -> None:
        """Let the starting thread end: only once the cluster it started is shut down."""
        self._released.set()

    def adopt(self) -> Any:
        """The started executor (waiting for it if need be); its start's error is raised here.
        On the main thread, the command's SIGTERM handler is put back over Ray's."""
        tick = time.perf_counter()
        try:
            return self._future.result()
        finally:
            self.waited += time.perf_counter() - tick
            restore_sigterm()


def restore_sigterm() -> None:
    """Reinstall the SIGTERM handler Python knows of (the command's), replacing the one Ray's core
    worker set at the C level; only on the main thread, and only a handler the command installed
    (with SIG_DFL there is nothing to restore: Ray's abort is what SIG_DFL would do, near enough)."""
    if threading.current_thread() is not threading.main_thread():
        return
    current = signal.getsignal(signal.SIGTERM)
    if current is not None and current != signal.SIG_DFL:
        signal.signal(signal.SIGTERM, current)
