"""Frame steps: a user's plain functions that add or replace feature columns, once, before the folds.

A step is `fn(frame, **params) -> DataFrame`. It sees the feature frame (every column but the
target) with the columns of the steps it depends on, and its result is kept as a delta: the
columns it added or changed (and those it removed). The driver runs each step as one task and
caches its delta under a key of its code, params and inputs, so editing one step recomputes it
and what depends on it, nothing else. Nothing here knows about Ray or the cache.

`mode: together` calls the function once on train and test rows stacked (counts over all
rows); `apart` calls it on each frame alone. A step that returns another number of rows, drops
or changes the id, or makes a column named like the target is refused with one line (`problem`).
"""

from __future__ import annotations

import inspect
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from foldwise.tasks.source import import_fresh

RAW = "raw"  # the input name of the data as read
STEP_MODES = ("together", "apart")


class StepError(ValueError):
    """A step the spec names that cannot run as written: one line, exit 2."""


class StepRaised(RuntimeError):
    """A step's own function raised (in `apply_frame_steps`): names the step and the error's last line."""

    def __init__(self, step: str, error: BaseException) -> None:
        lines = str(error).strip().splitlines()
        super().__init__(f"step {step}: {type(error).__name__}: {lines[-1] if lines else ''}".rstrip(": "))


@dataclass(frozen=True)
class FrameStepConfig:
    """One `steps:` entry, as the tasks take it."""

    name: str
    fn: str  # 'package.module:function'
    params: dict[str, Any] = field(default_factory=dict)
    inputs: tuple[str, ...] = (RAW,)
    mode: str = "together"


@dataclass(frozen=True)
class StepOutput:
    """What one step changed: its new or replaced columns (train and test rows) and those it removed."""

    name: str
    train: pd.DataFrame | None  # the step's new/replaced columns on the training rows
    test: pd.DataFrame | None
    removed: tuple[str, ...] = ()
    seconds: float = 0.0
    started: float = 0.0  # unix seconds (overlap of independent steps)
    ended: float = 0.0
    problem: str | None = None  # set when the result breaks a rule: the driver refuses it (exit 2)

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(self.train.columns) if self.train is not None else ()


# --------------------------------------------------------------------------- the spec's steps, before anything runs


def resolve_step_fn(path: str) -> Callable[..., Any]:
    """'pkg.mod:fn' -> the function (as its source is now); StepError naming what is missing."""
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise StepError(f"{path!r} is not a function path like mypkg.features:add_ratios")
    try:
        module = import_fresh(module_name)
    except ImportError as e:
        raise StepError(f"{path!r}: module {module_name!r} cannot be imported ({e})") from None
    except Exception as e:  # noqa: BLE001 - a user module may raise anything at import
        lines = str(e).strip().splitlines()
        raise StepError(f"{path!r}: importing {module_name!r} raised {type(e).__name__}: {lines[-1] if lines else ''}") from None
    fn = getattr(module, attr, None)
    if fn is None:
        raise StepError(f"{path!r}: module {module_name!r} has no {attr!r}")
    if not callable(fn):
        raise StepError(f"{path!r}: {attr!r} is not a function")
    return fn


def fn_problem(path: str, params: dict[str, Any]) -> str | None:
    """Why `fn(frame, **params)` cannot be called (unknown path, params it does not take), or None."""
    try:
        fn = resolve_step_fn(path)
    except StepError as e:
        return str(e)
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return None  # a builtin without a signature: trust it
    try:
        signature.bind(pd.DataFrame(), **params)
    except TypeError as e:
        takes = [p for p in list(signature.parameters)[1:]]
        return f"{path!r} does not accept params {sorted(params)} ({e}; it takes: {', '.join(takes) or 'only the frame'})"
    return None


def graph_problem(steps: Sequence[FrameStepConfig]) -> str | None:
    """Duplicate names, unknown inputs or a cycle among the steps, in one line; None when the graph is sound."""
    names = [s.name for s in steps]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        return f"duplicate step name(s) {', '.join(dupes)}; names must be unique"
    if RAW in names:
        return f"a step cannot be named {RAW!r} (it names the data as read)"
    for s in steps:
        unknown = [i for i in s.inputs if i != RAW and i not in names]
        if unknown:
            return (f"step {s.name!r}: unknown input(s) {', '.join(unknown)} "
                    f"(valid: {', '.join([RAW, *[n for n in names if n != s.name]])})")
        if s.name in s.inputs:
            return f"step {s.name!r} takes itself as input (a cycle)"
    try:
        topo_order(steps)
    except StepError as e:
        return str(e)
    return None


def topo_order(steps: Sequence[FrameStepConfig]) -> list[FrameStepConfig]:
    """The steps so every step comes after its inputs (spec order among independent ones); StepError on a cycle."""
    by_name = {s.name: s for s in steps}
    done: list[str] = []
    state: dict[str, int] = {}  # 1 visiting, 2 done

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            cycle = path[path.index(name):] + [name]
            raise StepError(f"steps form a cycle: {' -> '.join(cycle)}")
        state[name] = 1
        for i in by_name[name].inputs:
            if i != RAW:
                visit(i, [*path, name])
        state[name] = 2
        done.append(name)

    for s in steps:
        visit(s.name, [])
    return [by_name[n] for n in done]


def ancestors(steps: Sequence[FrameStepConfig]) -> dict[str, tuple[str, ...]]:
    """Each step's transitive inputs, in topological order (whose columns its frame holds)."""
    order = [s.name for s in topo_order(steps)]
    by_name = {s.name: s for s in steps}
    out: dict[str, set[str]] = {}
    for name in order:
        found: set[str] = set()
        for i in by_name[name].inputs:
            if i != RAW:
                found |= {i} | out[i]
        out[name] = found
    return {n: tuple(a for a in order if a in out[n]) for n in order}


def descendants(steps: Sequence[FrameStepConfig], name: str) -> tuple[str, ...]:
    """The steps that depend on `name`, directly or not."""
    return tuple(n for n, ups in ancestors(steps).items() if name in ups)


# --------------------------------------------------------------------------- running one step


def feature_frame(frame: pd.DataFrame, target: str) -> pd.DataFrame:
    """What a step sees: every column but the target, on a fresh 0..n-1 index."""
    out = frame.drop(columns=[target], errors="ignore")
    return out.reset_index(drop=True)


def with_outputs(train: pd.DataFrame, test: pd.DataFrame | None, outputs: Sequence[StepOutput]
                 ) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """The frames with each output's columns set (in order) and its removed columns dropped."""
    if not outputs:
        return train, test
    train_parts, test_parts = {}, {}
    removed: set[str] = set()
    for o in outputs:
        if o.train is not None:
            for c in o.train.columns:
                train_parts[c] = o.train[c]
                removed.discard(c)
            if test is not None and o.test is not None:
                for c in o.test.columns:
                    test_parts[c] = o.test[c]
        removed |= set(o.removed) - set(train_parts)
    train = _overlay(train, train_parts, removed)
    test = _overlay(test, test_parts, removed) if test is not None else None
    return train, test


def _overlay(frame: pd.DataFrame, parts: dict[str, pd.Series], removed: set[str]) -> pd.DataFrame:
    keep = [c for c in frame.columns if c not in parts and c not in removed]
    pieces = [frame[keep]] + ([pd.DataFrame({c: s.to_numpy() for c, s in parts.items()}, index=frame.index)] if parts else [])
    return pd.concat(pieces, axis=1) if len(pieces) > 1 else pieces[0]


def run_frame_step(config: FrameStepConfig, train: pd.DataFrame, test: pd.DataFrame | None,
                   id_column: str | None, target: str, *upstream: StepOutput) -> StepOutput:
    """One frame step (a task): its function on the feature frame with its inputs' columns, as a delta.

    `train`/`test` are the feature frames as read (no target); `upstream` the outputs of the steps
    it depends on, in topological order (separate arguments, so Ray hands each over by reference). A result that breaks a rule comes back with `problem` set
    (never cached by the driver); a function that raises raises.
    """
    started = time.time()
    tick = time.perf_counter()
    train, test = with_outputs(train, test, upstream)
    fn = resolve_step_fn(config.fn)
    if config.mode == "together" and test is not None:
        both = pd.concat([train, test], axis=0, ignore_index=True)
        out = fn(both, **config.params)
        problem = _result_problem(config.name, both, out, id_column, target)
        if problem is None:
            out = _aligned(both, out)
            out_train, out_test = out.iloc[: len(train)].reset_index(drop=True), out.iloc[len(train):].reset_index(drop=True)
    else:
        out_train = fn(train, **config.params)
        problem = _result_problem(config.name, train, out_train, id_column, target)
        out_test = None
        if problem is None:
            out_train = _aligned(train, out_train)
            if test is not None:
                out_test = fn(test, **config.params)
                problem = _result_problem(config.name, test, out_test, id_column, target, "test ")
                out_test = _aligned(test, out_test) if problem is None else None
    seconds = time.perf_counter() - tick
    if problem is not None:
        return StepOutput(config.name, None, None, seconds=seconds, started=started, ended=time.time(), problem=problem)
    changed = _changed_columns(train, out_train)
    removed = tuple(c for c in train.columns if c not in out_train.columns)
    if out_test is not None:
        missing = [c for c in changed if c not in out_test.columns]
        if missing:
            return StepOutput(config.name, None, None, seconds=seconds, started=started, ended=time.time(),
                              problem=f"step {config.name!r} made column(s) {missing} on train rows but not on test rows")
    return StepOutput(config.name, out_train[changed].copy(), out_test[changed].copy() if out_test is not None else None,
                      removed=removed, seconds=seconds, started=started, ended=time.time())


def _aligned(before: pd.DataFrame, after: pd.DataFrame) -> pd.DataFrame:
    """The result in the input's row order: by index when the function reordered rows, else by position."""
    if not after.index.equals(before.index) and after.index.sort_values().equals(before.index):
        after = after.loc[before.index]
    return after.reset_index(drop=True)


def _changed_columns(before: pd.DataFrame, after: pd.DataFrame) -> list[str]:
    return [c for c in after.columns if c not in before.columns or not after[c].reset_index(drop=True).equals(before[c])]


def _norm(name: object) -> str:
    return re.sub(r"[^0-9a-z]", "", str(name).lower())


def _result_problem(name: str, before: pd.DataFrame, after: object, id_column: str | None, target: str,
                    side: str = "") -> str | None:
    """Why a step's result cannot be used, in one line naming the step, or None."""
    if not isinstance(after, pd.DataFrame):
        return f"step {name!r} returned {type(after).__name__}, not a pandas DataFrame"
    if len(after) != len(before):
        return f"step {name!r} returned {len(after)} {side}rows for {len(before)}; a frame step must keep every row"
    if after.columns.duplicated().any():
        return f"step {name!r} returned duplicate column(s) {sorted(set(after.columns[after.columns.duplicated()]))}"
    if id_column is not None:
        if id_column not in after.columns:
            return f"step {name!r} dropped the id column {id_column!r}; keep it (drop features with features.drop)"
        if not _aligned(before, after)[id_column].equals(before[id_column]):
            return f"step {name!r} changed the id column {id_column!r}; a frame step must keep the ids as they are"
    like = [c for c in after.columns if _norm(c) == _norm(target)]
    if like:
        return (f"step {name!r} made column {like[0]!r}, named like the target {target!r} (a likely leak); "
                "rename it")
    return None


def apply_frame_steps(steps: Sequence[FrameStepConfig], train: pd.DataFrame, test: pd.DataFrame | None,
                      id_column: str | None, target: str) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """Every step in one process, in topological order (new data at predict time; tests):
    the same frames the DAG of step tasks gives. Raises StepError for a result that breaks a rule (or a
    function that cannot be imported), StepRaised when a step's function raised."""
    feats_train, feats_test = feature_frame(train, target), feature_frame(test, target) if test is not None else None
    done: dict[str, StepOutput] = {}
    ups = ancestors(steps)
    for s in topo_order(steps):
        try:
            out = run_frame_step(s, feats_train, feats_test, id_column, target, *[done[a] for a in ups[s.name]])
        except StepError:
            raise
        except Exception as e:  # noqa: BLE001 - the user's function: reported with the step's name
            raise StepRaised(s.name, e) from e
        if out.problem:
            raise StepError(out.problem)
        done[s.name] = out
    order = list(done.values())
    stepped_train, stepped_test = with_outputs(feats_train, feats_test, order)
    return with_target(stepped_train, train, target), stepped_test


def with_target(stepped: pd.DataFrame, original: pd.DataFrame, target: str) -> pd.DataFrame:
    """The stepped training frame with the target column back (steps never see it)."""
    if target not in original.columns:
        return stepped
    return stepped.assign(**{target: original[target].to_numpy()})


# --------------------------------------------------------------------------- replaying a run's steps on new rows


def step_import_problem(steps: Sequence[FrameStepConfig]) -> str | None:
    """The first step whose function cannot be imported in this process, in one line naming the step
    and its module (a model loaded where the user's step code is not), or None."""
    for s in steps:
        module = s.fn.partition(":")[0]
        try:
            resolve_step_fn(s.fn)
        except StepError as e:
            return (f"step {s.name!r} of this run needs {s.fn} (module {module!r}), which this process cannot "
                    f"import: {e}; install it, or load the model where the run's project folder is importable")
    return None


def replay_frame_steps(steps: Sequence[FrameStepConfig], new: pd.DataFrame, train_rows: pd.DataFrame | None,
                       id_column: str | None, target: str) -> pd.DataFrame:
    """A run's frame steps on new rows, as the run applied them to its test file: an `apart` step on
    the new rows alone, a `together` step on the run's training rows (`train_rows`, as read, no target)
    stacked with the new rows. Returns the stepped new rows (0..n-1 index). Raises StepError
    (a result that breaks a rule, a module that cannot be imported) or StepRaised."""
    if not steps:
        return new
    together = [s.name for s in steps if s.mode == "together"]
    if together and train_rows is None:
        raise StepError(f"step {together[0]!r} runs on the training and test rows together (mode: together), "
                        "and this model does not hold the training rows it needs")
    ids = id_column if id_column is not None and id_column in new.columns else None
    if together:
        _, stepped = apply_frame_steps(steps, train_rows, feature_frame(new, target), ids, target)
        assert stepped is not None
        return stepped
    stepped, _ = apply_frame_steps(steps, feature_frame(new, target), None, ids, target)
    return stepped
