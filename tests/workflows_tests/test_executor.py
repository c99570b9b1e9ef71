"""The executor on the session's real Ray: zero-copy data, resource packing, clean failures."""

from __future__ import annotations

import time

import pytest

from foldwise.tasks.data import DataConfig, PreparedData, prepare_data
from foldwise.workflows.engine.executor import LocalExecutor, RayExecutor, Slot
from foldwise.workflows.errors import TaskFailed


def is_shared_read_only(data: PreparedData) -> tuple[bool, bool]:
    """Inside a task: arrays deserialised from Ray's object store are read-only views, not copies."""
    return (not data.X.flags.writeable, not data.y.flags.writeable)


def busy(seconds: float) -> tuple[float, float]:
    start = time.time()
    time.sleep(seconds)
    return start, time.time()


def square(i: int) -> int:
    return i * i


def raise_user_error() -> None:
    raise KeyError("column 'price' vanished")


def test_prepared_data_is_read_zero_copy_by_tasks(ray_cluster) -> None:
    ex = RayExecutor()
    prepared = ex.submit(prepare_data, DataConfig(train="sklearn:breast_cancer"), name="prepare")
    probes = [ex.submit(is_shared_read_only, prepared) for _ in range(3)]
    assert [ex.get(p) for p in probes] == [(True, True)] * 3


def meet(folder: str, n: int, timeout: float) -> bool:
    """Check in, then wait until n tasks have checked in: True only if all n ran at the same time."""
    import os
    import uuid

    open(os.path.join(folder, uuid.uuid4().hex), "w").close()
    deadline = time.time() + timeout
    while time.time() < deadline:
        if len(os.listdir(folder)) >= n:
            return True
        time.sleep(0.05)
    return False


def test_fractional_cpus_pack_more_tasks_per_slot(ray_cluster, tmp_path) -> None:
    """A rendezvous, not a stopwatch: 4 tasks at cpus=0.5 on 2 CPUs all wait for each other, so they
    can only all succeed if Ray runs them at once (load on the machine only makes them wait longer)."""
    ex = RayExecutor()
    met = [ex.get(h) for h in [ex.submit(meet, str(tmp_path), 4, 60.0, slot=Slot(cpus=0.5)) for _ in range(4)]]
    assert met == [True] * 4, "4 tasks at cpus=0.5 on 2 CPUs should all run at once"
    spans = [ex.get(h) for h in [ex.submit(busy, 1.0, slot=Slot(cpus=2)) for _ in range(2)]]
    assert max(s for s, _ in spans) >= min(e for _, e in spans) - 0.05, "cpus=2 tasks must not overlap on 2 CPUs"


@pytest.mark.parametrize("make", [RayExecutor, LocalExecutor])
def test_task_errors_name_the_task_and_last_line(ray_cluster, make) -> None:
    ex = make()
    handle = ex.submit(raise_user_error, name="train_fold[model=m, fold=3]")
    with pytest.raises(TaskFailed) as err:
        ex.get(handle)
    assert str(err.value) == "train_fold[model=m, fold=3] failed: KeyError: \"column 'price' vanished\""


def test_as_completed_yields_every_result(ray_cluster) -> None:
    ex = RayExecutor()
    handles = [ex.submit(square, i) for i in range(6)]
    assert sorted(int(v) for _, v in ex.as_completed(handles)) == [0, 1, 4, 9, 16, 25]
