"""Pre-flight: everything checkable about a command's arguments is checked before Ray starts.

Every spec-driven command (run, sweep, ablate, check) calls `preflight` once at its edge, after
the spec loaded and the data was validated and before anything is started, cached, logged or
written. Each problem is one `InputError` line naming the flag or key and what would be valid
(exit 2). A check for a new spec key or flag goes here, as one more function `preflight` calls.
(The tracking URI is checked where it is resolved, `inputs.usable_tracking_uri`.)

What it checks: `--out` and `--cache` name folders that are (or can be) written; the cache key
loads; `--address` answers; every resource a model asks for fits on the machine a local Ray
would start on (a cluster joined with --address, or already driven by this process, is sized by
the engine as it submits: a warning naming the largest node, since an autoscaler may still add a
larger one); `ensemble.params` are parameters of the stacking meta-model. Import paths
(estimators, meta-models, adapters) are checked where the spec loads (`spec.py`).
"""

from __future__ import annotations

import inspect
import os
import uuid
from pathlib import Path

from foldwise.infra.storage import is_uri, outputs_root
from foldwise.workflows.engine.cache import cache_key, resolve_root
from foldwise.workflows.engine.executor import check_address, connected
from foldwise.workflows.engine.pending import pending_warn_seconds
from foldwise.workflows.errors import InputError
from foldwise.workflows.pipeline.imports import estimator_class_of
from foldwise.workflows.pipeline.spec import WorkflowSpec


def preflight(spec: WorkflowSpec, *, task: str | None, out: str | Path | None = None, cache_root: str | None = None,
              address: str | None = None, executor: str = "auto", uses_cache: bool = True) -> None:
    """Raise InputError for the first argument or spec setting that would fail after compute started.

    `task` is the validated task (binary | multiclass | regression; None when unknown yet)."""
    out_target = str(out) if out is not None else outputs_root()
    problem = folder_problem("--out" if out is not None else "$FOLDWISE_OUTPUTS (or ./outputs)", out_target)
    if problem:
        raise InputError(problem)
    if uses_cache:
        root = resolve_root(cache_root)
        problem = folder_problem("--cache" if cache_root else "$FOLDWISE_CACHE (or .foldwise/cache)", root)
        if problem:
            raise InputError(problem)
        cache_key()  # InputError when the key is unusable
    address = address or os.environ.get("RAY_ADDRESS") or None
    may_use_ray = executor != "local"  # "auto" starts Ray unless the work is small
    if may_use_ray:
        pending_warn_seconds()  # InputError for a bad $FOLDWISE_PENDING_WARN_S, before compute
    if may_use_ray and address is not None:
        check_address(address)
    if may_use_ray and address in (None, "local") and not connected():
        problem = local_resource_problem(spec)
        if problem:
            raise InputError(problem)
    problem = ensemble_problem(spec, task)
    if problem:
        raise InputError(problem)


# --------------------------------------------------------------------------- folders


def folder_problem(flag: str, location: str) -> str | None:
    """Why `location` cannot hold a command's files (a file, not a folder; a folder that cannot be
    written), else None. A folder that does not exist yet is fine when its nearest existing parent can
    be written: nothing is created here, only probed with a temp file removed at once."""
    if is_uri(location):
        return None  # object stores: credentials are checked by the upload itself
    path = Path(location.removeprefix("file://")).expanduser().absolute()
    probe = path
    while True:
        try:
            if probe.is_dir():
                break
            if probe.exists() or probe.is_symlink():
                what = "the folder itself" if probe == path else f"its parent {str(probe)!r}"
                return f"{flag} {location!r}: {what} is a file, not a folder; name a folder"
        except OSError as e:
            return f"{flag} {location!r}: cannot be used ({e.strerror or e})"
        if probe.parent == probe:
            return f"{flag} {location!r}: no existing parent folder"
        probe = probe.parent
    test = probe / f".foldwise-write-test-{uuid.uuid4().hex}"
    try:
        fd = os.open(test, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
        os.unlink(test)
    except OSError as e:
        return f"{flag} {location!r}: {str(probe)!r} is not writable ({e.strerror or e}); name a folder you can write"
    return None


# --------------------------------------------------------------------------- resources


def local_capacity() -> dict[str, float | None]:
    """What a local Ray started on this machine would hold: CPUs, NVIDIA GPUs and memory. GPUs are None
    (unknown, never refused) when the machine shows GPU devices this cheap look cannot count (AMD's, a
    container that hides /proc/driver/nvidia): a wrong refusal would be worse than Ray's own wait."""
    import psutil

    cpus = float(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    return {"cpus": cpus, "gpus": _gpus(), "memory": float(psutil.virtual_memory().total)}


def _gpus() -> float | None:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return float(len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"]))
    proc, dev = Path("/proc/driver/nvidia/gpus"), Path("/dev")
    counted = max(len(list(proc.iterdir())) if proc.is_dir() else 0,
                  len([p for p in dev.glob("nvidia*") if p.name[len("nvidia"):].isdigit()]))
    if counted:
        return float(counted)
    if (dev / "kfd").exists() or list(dev.glob("dri/renderD*")) or Path("/proc/driver/nvidia").exists():
        return None
    return 0.0


def local_resource_problem(spec: WorkflowSpec) -> str | None:
    """A model asking for more CPUs, GPUs or memory than this machine has: its folds would wait forever."""
    capacity = local_capacity()
    for i, m in enumerate(spec.models):
        asked = {"cpus": m.resources.cpus, "gpus": m.resources.gpus, "memory": m.resources.memory or 0}
        for what, amount in asked.items():
            if capacity[what] is not None and amount > capacity[what]:
                have = _amount(what, capacity[what])
                return (f"models.{i}.resources.{what} ({m.name}): {_amount(what, amount)} asked, but this machine "
                        f"has {have} (the largest node of a local Ray); ask for at most {have}, or run on a "
                        "cluster with --address")
    return None


def _amount(what: str, value: float) -> str:
    if what == "memory":
        return f"{value / 2**30:.1f} GiB"
    return f"{value:g} {what.upper() if what == 'gpus' else what}".replace("GPUS", "GPU(s)").replace("cpus", "CPU(s)")


# --------------------------------------------------------------------------- the ensemble


def ensemble_problem(spec: WorkflowSpec, task: str | None) -> str | None:
    """`ensemble.params` are the stacking meta-model's parameters: refused for other methods, and
    checked against the meta-model (the spec's `meta`, else logistic regression / ridge)."""
    params = spec.ensemble.params
    if not params:
        return None
    if spec.ensemble.method != "stack":
        return (f"ensemble.params: only method stack takes params (its meta-model's); method "
                f"{spec.ensemble.method!r} takes none (got {', '.join(map(str, params))})")
    if spec.ensemble.meta is not None:
        cls = estimator_class_of(spec.ensemble.meta)  # checked when the spec loaded
    elif task is None:
        return None
    else:
        from sklearn.linear_model import LogisticRegression, Ridge

        cls = Ridge if task == "regression" else LogisticRegression
    accepted = set(inspect.signature(cls).parameters)
    unknown = [p for p in params if p not in accepted]
    if unknown:
        return (f"ensemble.params: {cls.__name__} has no parameter(s) {', '.join(map(repr, unknown))} "
                f"(valid: {', '.join(sorted(accepted))})")
    return None
