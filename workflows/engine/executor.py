"""Where tasks run: Ray (the default) or in-process (`--executor local`, for pdb).

This is the only module that calls Ray. Workflows submit plain functions from `tasks`
with the resources they need; arguments that are handles from earlier submissions are
passed by reference (Ray resolves them zero-copy from the object store), so a DAG reads
the same on both executors.
"""

from __future__ import annotations

import math
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from foldwise.workflows.engine.pending import PendingWatch, oversized, pending_warn_seconds
from foldwise.workflows.errors import InputError, TaskFailed, TaskOutOfMemory


class ClusterUnreachable(InputError):
    """--address names no Ray cluster we can join (nothing listens, or its token refuses us): exit 2."""


def _reachable(address: str, timeout: float = 3.0) -> None:
    """Fail in seconds where ray.init would retry for minutes: something must accept a TCP connection."""
    import socket

    if address in ("auto", "local"):
        return
    host, _, port = address.split("://", 1)[-1].rstrip("/").rpartition(":")
    if not host or not port.isdigit():
        raise ClusterUnreachable(f"--address {address!r}: expected HOST:PORT of a Ray head (GCS, port 6379 by default) "
                                 "or ray://HOST:10001")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as e:
        raise ClusterUnreachable(f"--address {address}: nothing answers there ({e.strerror or e}); start a cluster "
                                 "(`foldwise cluster up`, `ray start --head`) or leave --address out to run on a "
                                 "local Ray") from None


# Ray's switch that keeps 127.0.0.1 as the node address (`foldwise.infra.cluster.LOOPBACK_SWITCH`).
LOOPBACK_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def _join_loopback_head(address: str) -> None:
    """Let this driver join a head that listens on 127.0.0.1 only (`foldwise cluster up` without --listen).

    Ray on Linux rewrites a 127.0.0.1 address to the machine's outward IP, where such a head does
    not answer, unless its loopback switch is off; a head that answers there too (a plain `ray start
    --head`) is left to Ray's usual handling. The switch is read when Ray is imported, so it is also
    set on the imported module (a sweep imports Ray before it connects)."""
    import socket

    host, _, port = address.rpartition(":")
    if host not in ("127.0.0.1", "localhost") or not port.isdigit():
        return
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:  # how Ray finds the outward IP; sends nothing
        try:
            s.connect(("8.8.8.8", 53))
            outward = s.getsockname()[0]
        except OSError:
            return  # no network route to judge by: left to Ray
    try:
        socket.create_connection((outward, int(port)), timeout=2).close()
        return  # the head answers on the network address too: not a loopback-only head
    except OSError:
        pass
    os.environ[LOOPBACK_SWITCH] = "0"
    constants = sys.modules.get("ray._private.ray_constants")
    if constants is not None:
        constants.ENABLE_RAY_CLUSTER = False


def preload() -> None:
    """Import Ray as a command joining the desktop cluster would (RAY_AUTH_MODE=token first: Ray
    reads it into its config at import), for the warm command server; starts nothing."""
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    import ray
    import ray.dag  # noqa: F401 - ray.shutdown() imports it at every exit (~0.3 s)

    assert not ray.is_initialized()


def reread_config() -> None:
    """A process forked from the warm server after its environment was replaced: Ray's config and
    its cached token are read again from this environment, as a process importing Ray now would."""
    if "ray" not in sys.modules:
        return
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


def check_address(address: str) -> None:
    """ClusterUnreachable (exit 2) unless something answers at a Ray address; before anything is cached or started."""
    _reachable(address)


def connected() -> bool:
    """This process already drives a Ray cluster (a notebook's ray.init): requests are sized against it, not this machine."""
    ray = sys.modules.get("ray")
    return bool(ray is not None and ray.is_initialized())


@dataclass(frozen=True)
class Slot:
    cpus: float = 1.0
    gpus: float = 0.0
    retries: int = 3  # on worker/node death only; a raising task is never retried
    memory: int | None = None  # bytes reserved on the node (Ray packs fewer such tasks per node)


# Ray retries a task its memory monitor killed forever by default (max_retries does not
# apply), so a fold too big for any node would loop without a word. Bounded when this
# process starts its Ray driver: the driver owns the retries, so this holds on a cluster
# too. A RAY_task_oom_retries the user set wins.
OOM_RETRIES = 2


class RayExecutor:
    """Submits to a Ray cluster: the one at `address`, the one already initialised, or a new local one."""

    name = "ray"

    def __init__(self, address: str | None = None, num_cpus: int | None = None,
                 pending_warn_s: float | None = None) -> None:
        """`pending_warn_s`: say why a task no node can hold still waits after this long
        (default $FOLDWISE_PENDING_WARN_S or 60 s; `foldwise.workflows.engine.pending`)."""
        start = time.perf_counter()  # start-up = importing Ray (~0.5 s) + starting or joining the cluster
        if address is not None:
            _reachable(address)
        if address not in (None, "local") and not connected():
            if "://" not in address:
                _join_loopback_head(address)  # before Ray is imported, like RAY_AUTH_MODE below
            # Ray turns token auth on by itself only for clusters it starts or finds; for an
            # explicit address it must be asked to, or a token-protected head refuses us. Ray
            # reads RAY_AUTH_MODE into its config when it is imported: set it before that.
            from foldwise.infra.ray_token import RayTokenError, has_token

            try:
                if "RAY_AUTH_MODE" not in os.environ and has_token():
                    os.environ["RAY_AUTH_MODE"] = "token"
                    if "ray" in sys.modules:  # imported already (by the user's code): re-read the config
                        from ray._raylet import Config

                        Config.initialize("")
            except RayTokenError as e:
                raise ClusterUnreachable(f"--address {address}: {e}") from None
        import ray

        self._ray = ray
        self.owns_cluster = not ray.is_initialized()
        if self.owns_cluster:
            os.environ.setdefault("RAY_task_oom_retries", str(OOM_RETRIES))
            on_term = signal.getsignal(signal.SIGTERM) if threading.current_thread() is threading.main_thread() else None
            try:
                # "local": a cluster of our own, never one a `ray start` left on this machine
                ray.init(address=address or "local", num_cpus=num_cpus if address is None else None,
                         include_dashboard=False, logging_level="ERROR", log_to_driver=True,
                         configure_logging=True)
            except (ConnectionError, ray.exceptions.AuthenticationError) as e:
                raise ClusterUnreachable(f"--address {address}: {_last_line(e)}") from None
            if callable(on_term):
                # ray.init installs a C-level SIGTERM handler that aborts the driver (exit -6, runs left
                # RUNNING, a local Ray orphaned); the command's own handler stops it cleanly instead.
                signal.signal(signal.SIGTERM, on_term)
        self.startup_seconds = time.perf_counter() - start
        self._remote: dict[tuple[Callable, bool], Any] = {}
        self._names: dict[Any, str] = {}
        self._sized: set[Slot] = set()  # slots already compared with the cluster's nodes
        self._watch = PendingWatch(ray, pending_warn_s if pending_warn_s is not None else pending_warn_seconds())

    def submit(self, fn: Callable, *args: Any, slot: Slot = Slot(), name: str | None = None) -> Any:
        # A GPU task gets a fresh worker process (Ray's default for @ray.remote(num_gpus=...), lost when
        # num_gpus is given only in .options()): CUDA binds a process to the devices it first saw, so a
        # reused worker would train on its previous task's GPU whatever Ray assigned this one.
        key = (fn, slot.gpus > 0)
        remote = self._remote.get(key)
        if remote is None:
            remote = self._remote[key] = self._ray.remote(max_calls=1)(fn) if slot.gpus > 0 else self._ray.remote(fn)
        label = name or fn.__name__
        if slot not in self._sized:
            self._sized.add(slot)
            problem = oversized(slot, self._ray.nodes())
            if problem:  # a cluster we joined may autoscale: say why the task waits, rather than silence
                print(f"foldwise: warning: {label}: {problem}; it waits until a node that large joins "
                      "(an autoscaler's), Ctrl-C to stop", file=sys.stderr, flush=True)
        extra = {"memory": slot.memory} if slot.memory else {}
        ref = remote.options(num_cpus=slot.cpus, num_gpus=slot.gpus, max_retries=slot.retries,
                             retry_exceptions=False, name=label, **extra).remote(*args)
        self._names[ref] = label
        self._watch.submitted(ref, slot, label)
        return ref

    def cpus(self) -> float:
        """The cluster's CPUs: more fold CPUs than this in flight means folds are waiting for slots."""
        return float(self._ray.cluster_resources().get("CPU", 0.0))

    def put(self, value: Any) -> Any:
        """A value the driver already holds (e.g. from the cache), stored once for every task.

        Not lineage-reconstructable, and it need not be: the primary copy lives in the object
        store of the driver's own node and is owned by the driver, so it is lost only with the
        driver's node, which ends the run anyway (task outputs are owned by the driver too).
        Losing any other node leaves it readable (tests/workflows_tests/node_loss.py).
        """
        return self._ray.put(value)

    def get(self, handle: Any) -> Any:
        if isinstance(handle, self._ray.ObjectRef):
            self._wait([handle])
        return self._unwrap(handle)

    def as_completed(self, handles: list[Any]) -> Iterator[tuple[Any, Any]]:
        pending = list(handles)
        while pending:
            done, pending = self._wait(pending)
            yield done[0], self._unwrap(done[0])

    def _wait(self, pending: list[Any]) -> tuple[list[Any], list[Any]]:
        """ray.wait for one, checking between short waits whether a task waits for a node that never came."""
        while True:
            done, rest = self._ray.wait(pending, num_returns=1, timeout=self._watch.poll)
            if done:
                return done, rest
            self._watch.check()

    def finished(self, handles: list[Any]) -> list[tuple[Any, Any]]:
        """(handle, value) of the tasks that already succeeded, without waiting for the rest."""
        done, _ = self._ray.wait(list(handles), num_returns=len(handles), timeout=0) if handles else ([], [])
        out = []
        for h in done:
            try:
                out.append((h, self._unwrap(h)))
            except TaskFailed:
                pass
        return out

    def cancel(self, handles: list[Any]) -> None:
        for h in handles:
            self._watch.done(h)
            self._ray.cancel(h, force=False)

    def _unwrap(self, handle: Any) -> Any:
        self._watch.done(handle)
        try:
            return self._ray.get(handle)
        except self._ray.exceptions.OutOfMemoryError as e:
            raise TaskOutOfMemory(self._names.get(handle, "task"), _memory_facts(str(e))) from None
        except self._ray.exceptions.RayTaskError as e:
            cause = e.cause if getattr(e, "cause", None) is not None else e
            raise TaskFailed(self._names.get(handle, "task"), _last_line(cause)) from None
        except self._ray.exceptions.RayError as e:
            raise TaskFailed(self._names.get(handle, "task"), _last_line(e)) from None

    def close(self) -> None:
        if self.owns_cluster:
            self._ray.shutdown()


class LocalHandle:
    def __init__(self, fn: Callable, args: tuple, name: str) -> None:
        self.fn, self.args, self.name = fn, args, name
        self._done, self._value, self._error = False, None, None

    def result(self) -> Any:
        if not self._done:
            args = [a.result() if isinstance(a, LocalHandle) else a for a in self.args]
            try:
                self._value = self.fn(*args)
            except Exception as e:  # noqa: BLE001 - reported like Ray's executor does
                self._error = TaskFailed(self.name, _last_line(e))
                self._error.__cause__ = e
            self._done = True
        if self._error is not None:
            raise self._error
        return self._value


class LocalExecutor:
    """Runs the same DAG in this process, in submission order (set breakpoints in tasks)."""

    name = "local"
    startup_seconds = 0.0

    def submit(self, fn: Callable, *args: Any, slot: Slot = Slot(), name: str | None = None) -> LocalHandle:
        return LocalHandle(fn, args, name or fn.__name__)

    def cpus(self) -> float:
        """Unbounded: folds run one at a time in this process, never waiting for a slot."""
        return math.inf

    def put(self, value: Any) -> Any:
        return value

    def get(self, handle: LocalHandle | Any) -> Any:
        return handle.result() if isinstance(handle, LocalHandle) else handle  # a value put is its own handle

    def as_completed(self, handles: list[LocalHandle]) -> Iterator[tuple[LocalHandle, Any]]:
        for h in handles:
            yield h, h.result()

    def finished(self, handles: list[LocalHandle]) -> list[tuple[LocalHandle, Any]]:
        return [(h, h._value) for h in handles if h._done and h._error is None]

    def cancel(self, handles: list[LocalHandle]) -> None:
        pass

    def close(self) -> None:
        pass


def make_executor(kind: str = "ray", address: str | None = None) -> RayExecutor | LocalExecutor:
    if kind == "local":
        return LocalExecutor()
    if kind == "ray":
        return RayExecutor(address=address or os.environ.get("RAY_ADDRESS") or desktop_address())
    raise ValueError(f"unknown executor {kind!r} (valid: ray, local)")


def desktop_address() -> str | None:
    """The Ray head of the desktop cluster `foldwise cluster up` started from this folder, when no
    address was given and this process drives no Ray yet: joining it costs ~1 s where starting a
    private Ray costs 4-10 s, and a second Ray would compete with it for the same cores.
    `--address local` still starts a private one."""
    if connected():
        return None
    from foldwise.infra.cluster_state import DEFAULT_DIR, running_head

    state = running_head(DEFAULT_DIR)
    if state is None:
        return None
    print(f"foldwise: joining the desktop cluster in {DEFAULT_DIR} (Ray head {state.gcs_address}; "
          "--address local starts a private Ray instead, `foldwise cluster down` stops it)", file=sys.stderr, flush=True)
    return state.gcs_address


def _memory_facts(message: str) -> str:
    """The two useful lines of Ray's long OOM report: how full the node was, and the threshold."""
    used = re.search(r"Memory on the node \(.*?\) was (.*?)(?:\n|$)", message)
    reason = re.search(r"OOM kill reason: (.*?)(?:\n|$)", message)
    facts = "; ".join([f"node memory {used.group(1).strip()}"] * bool(used) + [reason.group(1).strip()] * bool(reason))
    return f"OutOfMemoryError: {facts}" if facts else f"OutOfMemoryError: {message.strip().splitlines()[0]}"


def _last_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[-1] if text else ''}".rstrip(": ")
