"""The MLflow set-up's thread: it waits until told (or its deadline), runs at idle priority
unless told otherwise, and `set_up_when` starts it on the first free CPU, or at once when the
folds will fill every CPU to their end."""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import wait

import pytest

from foldwise.workflows.engine.idle import IdleWork, on_idle_thread
from foldwise.workflows.pipeline.runs import set_up_when

linux_only = pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="SCHED_IDLE is Linux's")


def _policy() -> tuple[int, str]:
    return os.sched_getscheduler(0), threading.current_thread().name


def test_the_work_waits_for_start_now() -> None:
    started = threading.Event()
    work = on_idle_thread(started.set, name="t-wait", wait_at_most=60)
    assert not started.wait(0.3) and not work.done()
    work.start_now()
    assert wait([work], timeout=30).done == {work}
    assert started.is_set()


def test_the_work_starts_by_itself_after_its_deadline() -> None:
    begun = time.monotonic()
    work = on_idle_thread(time.monotonic, name="t-deadline", wait_at_most=0.3)
    assert wait([work], timeout=30).done == {work}  # `wait` does not start it, unlike .result()
    assert work.result() - begun >= 0.3


def test_waiting_for_the_result_starts_the_work() -> None:
    work = on_idle_thread(lambda: 42, name="t-result", wait_at_most=60)
    assert work.result(timeout=30) == 42


def test_the_works_error_reaches_whoever_waits() -> None:
    def fails() -> None:
        raise ValueError("store unreachable")

    work = on_idle_thread(fails, name="t-error")
    with pytest.raises(ValueError, match="store unreachable"):
        work.result(timeout=30)


@linux_only
def test_only_the_work_thread_runs_at_idle_priority() -> None:
    mine = os.sched_getscheduler(0)
    idle = on_idle_thread(_policy, name="t-idle")
    assert idle.result(timeout=30) == (os.SCHED_IDLE, "t-idle")
    normal = on_idle_thread(_policy, name="t-normal", wait_at_most=60)
    normal.start_now(lower=False)
    assert normal.result(timeout=30) == (mine, "t-normal")
    assert os.sched_getscheduler(0) == mine == os.SCHED_OTHER  # the driver's own thread is never lowered


def _told(calls: list[tuple[float, float]]) -> IdleWork:
    work = IdleWork()
    on_slots = set_up_when(work)
    for busy, capacity in calls:
        on_slots(busy, capacity)
    return work


def test_set_up_waits_for_a_free_cpu_when_the_last_round_is_partial() -> None:
    # 5 one-CPU folds on 2 CPUs: rounds of 2, 2, 1; a CPU frees when 1 fold is left
    assert not _told([(5, 2), (4, 2), (3, 2), (2, 2)]).go.is_set()
    work = _told([(5, 2), (4, 2), (3, 2), (2, 2), (1, 2)])
    assert work.go.is_set() and work.lower
    assert not _told([(2.5, 2)]).go.is_set()  # 5 half-CPU folds: also a partial round


def test_set_up_starts_at_once_when_a_cpu_is_free_or_none_will_be() -> None:
    free = _told([(3, 16)])  # GPU folds on a 16-core desktop: CPUs are free from the start
    assert free.go.is_set() and free.lower
    even = _told([(4, 2)])  # 4 folds on 2 CPUs: no CPU frees before the last fold ends
    assert even.go.is_set() and not even.lower
    assert _told([(6, 1.5)]).go.is_set()  # 1.5 divides 6: equal rounds
    assert not _told([(5, 2), (4, 2)]).go.is_set()  # decided once, when the folds were submitted
    in_process = _told([(10, float("inf"))])  # the in-process executor: no worker to protect, start beside them
    assert in_process.go.is_set() and not in_process.lower
    none_yet = _told([(2, 0)])  # a cluster with no CPU yet (autoscaling): nothing to wait for
    assert none_yet.go.is_set() and not none_yet.lower
