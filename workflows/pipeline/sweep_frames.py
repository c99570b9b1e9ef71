"""The stepped data a sweep trial reads when `search.space` holds frame-step params (`steps.NAME.PARAM`).

A trial's step params change the spec's `steps:` entries, so its data is another data node:
`SteppedData` computes it exactly as `foldwise run` would with those params (the same step, data
and plan keys, so a later `run` with the best params finds them cached), reusing every step
whose key did not change. It runs in one long-lived process for the whole sweep (the engine's
frame server, which asks `key` first and builds each key once), so trials with equal step
params share one frame and unchanged steps are read from the cache, not recomputed.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import Any

import pandas as pd

from foldwise.tasks.data import PreparedData, prepare_frames, read_table
from foldwise.tasks.folds import FoldPlan
from foldwise.tasks.models import ModelConfig
from foldwise.workflows.engine.cache import Cache
from foldwise.workflows.engine.executor import LocalExecutor
from foldwise.workflows.errors import InputError, RunFailed, TaskFailed
from foldwise.workflows.pipeline.dag import node_keys
from foldwise.workflows.pipeline.inputs import Inputs
from foldwise.workflows.pipeline.spec import WorkflowSpec
from foldwise.workflows.pipeline.steps import run_steps

STEPS_SCOPE = "steps."


def is_step_key(key: str) -> bool:
    """Whether a trial's param (a space key) sets a frame step's param (`steps.NAME.PARAM`)."""
    return key.startswith(STEPS_SCOPE)


def with_step_params(spec: WorkflowSpec, params: Mapping[str, Any]) -> WorkflowSpec:
    """The spec with `steps.NAME.PARAM` values put in its steps' params (other keys ignored)."""
    if not any(is_step_key(k) for k in params):
        return spec
    raw = spec.model_dump(mode="json")
    by_name = {s["name"]: s for s in raw["steps"]}
    for key, value in params.items():
        if is_step_key(key):
            name, _, param = key.removeprefix(STEPS_SCOPE).partition(".")
            by_name[name]["params"] = {**by_name[name]["params"], param: value}
    return WorkflowSpec.model_validate(raw)


class SteppedData:
    """Builds the prepared data of one set of step params, cached as `foldwise run` caches it.

    Lives in the frame server's process, which works in the driver's folder with the driver's
    import path (the spec's relative paths and the user's step modules mean the same there).
    The raw frames are read once per process; steps run in this process, one after another.
    """

    def __init__(self, spec: WorkflowSpec, inputs: Inputs, model: ModelConfig, version: str, cache: Cache,
                 plan: FoldPlan) -> None:
        self.spec, self.inputs, self.model, self.version, self.plan = spec, inputs, model, version, plan
        self.cwd, self.sys_path = os.getcwd(), list(sys.path)
        self.cache_root = cache.root if cache.fs is not None else cache.base
        self.cache_enabled, self.cache_secret = cache.enabled, cache.key
        self._raw: tuple[pd.DataFrame, pd.DataFrame | None] | None = None
        self._cache: Cache | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("_raw", "_cache")} | {"_raw": None, "_cache": None}

    def setup(self) -> None:
        """In the frame server: the driver's folder and import path."""
        os.chdir(self.cwd)
        sys.path[:0] = [p for p in self.sys_path if p not in sys.path]

    def key(self, params: Mapping[str, Any]) -> str:
        """The data node's key for these step params (the key `foldwise run` gives it)."""
        return node_keys(with_step_params(self.spec, params), self.inputs, [self.model], self.version).data

    def build(self, params: Mapping[str, Any]) -> PreparedData:
        """The stepped, prepared data for these step params: from the cache, else its steps (each cached)."""
        spec = with_step_params(self.spec, params)
        keys = node_keys(spec, self.inputs, [self.model], self.version)
        if self._cache is None:
            self._cache = Cache(self.cache_root, enabled=self.cache_enabled, key=self.cache_secret)
        cache = self._cache
        data = cache.get("data", keys.data)
        if data is None:
            assert keys.steps is not None  # a sweep over step params has steps
            if self._raw is None:
                d = self.inputs.data
                self._raw = (read_table(d.train), read_table(d.test) if d.test else None)
            try:
                frames, _ = run_steps(LocalExecutor(), cache, spec, self.inputs, keys.steps, raw=self._raw)
            except TaskFailed as e:
                raise RunFailed(f"{e.task}: {e.error}", None) from None
            except InputError as e:  # a step result that breaks a rule with these params: this trial fails
                raise RunFailed(str(e), None) from None
            data = prepare_frames(self.inputs.data, *frames)
            cache.put("data", keys.data, data)
        if not cache.has("plan", keys.plan):  # the same folds under this data's plan key (what `run` looks up)
            cache.put("plan", keys.plan, self.plan)  # the folds come from the target and groups: the same plan
        return data
