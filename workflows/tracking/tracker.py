"""MLflow tracking: the only module that imports mlflow.

Only the driver writes (tasks return results), so a sqlite store stays safe; metrics,
params and tags go in batches. Key names live here as constants so that compare, the
UI test and users' own queries agree on them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_URI = "sqlite:///mlflow.db"

# tags
TAG_COMMAND = "foldwise.command"
TAG_MODEL = "foldwise.model"
TAG_FOLDS_HASH = "folds_hash"
TAG_DATA = "data_fingerprint"
TAG_CODE = "foldwise.code_version"
TAG_GIT = "mlflow.source.git.commit"
TAG_PARENT = "mlflow.parentRunId"
TAG_RUN_NAME = "mlflow.runName"
TAG_NOTE = "mlflow.note.content"
TAG_HOST = "foldwise.host"
TAG_PID = "foldwise.pid"
TAG_DATA_WARNINGS = "foldwise.data_warnings"  # how many; the lines are in summary.json
TAG_FOLD = "foldwise.fold"  # on a fold's nested run (models that train in epochs)
TAG_CLASSES = "foldwise.classes"  # the class order of every probability, as JSON (classification)
TAG_POSITIVE_CLASS = "foldwise.positive_class"  # binary: the class a single probability is of
# metrics
M_FOLD_SCORE = "fold_score"
M_CV_SCORE = "cv_score"
M_FIT_SECONDS = "fit_seconds"
M_PREDICT_SECONDS = "predict_seconds"
M_MODEL_BYTES = "model_bytes"
M_PEAK_MEMORY = "peak_memory_bytes"  # per fold, when a run records it
M_BEST_ITERATION = "best_iteration"  # per fold (step = fold), for models that stop early (LightGBM)
M_WALL_SECONDS = "wall_seconds"
M_SLICE = "slice"  # slice.<name>.<model>: a spec slice's OOF score, on the run parent
# sweeps: one child run per trial (the trial's number, Ray Tune's id, how it ended, which attempt)
TAG_TRIAL = "foldwise.trial"
TAG_TRIAL_ID = "foldwise.trial_id"
TAG_TRIAL_STATE = "foldwise.state"  # running | completed | pruned | failed | stopped | interrupted
TAG_ATTEMPT = "foldwise.attempt"
# compare: which run B was last compared against (the write-up is B's run description)
TAG_COMPARED_WITH = "foldwise.compare.against"
COMPARE_ARTIFACT_DIR = "compare"
# ablate: each variant's child run names what it left out
TAG_ABLATION_VARIANT = "foldwise.ablation.variant"  # "baseline" or the dropped group
TAG_ABLATION_DROPPED = "foldwise.ablation.dropped"  # the dropped group (variants only)
TAG_ABLATION_VERDICT = "foldwise.ablation.verdict"  # helps | hurts | neutral (variants only)

_MAX_PARAMS_PER_BATCH = 100
_MAX_METRICS_PER_BATCH = 1000
_MAX_PARAM_LEN = 6000


def _artifacts_beside(uri: str, experiment: str) -> str | None:
    """For a sqlite store, artifacts in `mlruns/<experiment>` next to the .db file (MLflow's own
    default is ./mlruns of whatever folder the first run happened in); None: the server decides."""
    if not uri.startswith("sqlite:///"):
        return None
    db = Path(uri.removeprefix("sqlite:///"))
    folder = (db if db.is_absolute() else Path.cwd() / db).parent / "mlruns" / re.sub(r"[^\w.\-]", "_", experiment)
    return folder.resolve().as_uri()


def resolve_uri(explicit: str | None = None, spec_uri: str | None = None) -> str:
    """--tracking-uri, then the spec's tracking.uri, then MLFLOW_TRACKING_URI, then sqlite:///mlflow.db."""
    return explicit or spec_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


# Loggers that speak at INFO when a store is opened (the first run against a new sqlite file:
# "Creating initial MLflow database tables...", alembic's "Context impl SQLiteImpl", its migrations).
_STORE_LOGGERS = ("alembic", "mlflow.store.db.utils", "mlflow.store.sqlalchemy_store",
                  "mlflow.store.tracking.sqlalchemy_store")


def quiet_store_logs() -> None:
    """Only warnings and errors from opening a tracking store reach the user."""
    import logging

    for name in _STORE_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def preload() -> None:
    """Import MLflow and its sqlite store's code (~1.5 s) without opening any store: the warm
    command server (`foldwise.workflows.cli.warm`) does it once, before it forks commands."""
    import mlflow  # noqa: F401
    import mlflow.store.tracking.sqlalchemy_store  # noqa: F401
    from mlflow.tracking import MlflowClient  # noqa: F401


class Tracker:
    """A thin, batched writer over MlflowClient for one experiment."""

    def __init__(self, uri: str, experiment: str) -> None:
        from mlflow.tracking import MlflowClient

        quiet_store_logs()
        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)
        found = self.client.get_experiment_by_name(experiment)
        self.experiment_id = found.experiment_id if found else self.client.create_experiment(
            experiment, artifact_location=_artifacts_beside(uri, experiment))
        self.experiment = experiment

    def start_run(self, name: str, tags: Mapping[str, str], parent_id: str | None = None,
                  start_time: float | None = None) -> str:
        """A new RUNNING run; `start_time` (unix seconds, default now) when the command began
        before the run could be opened, so the run's duration in the UI is the command's."""
        all_tags = dict(tags)
        if parent_id:
            all_tags[TAG_PARENT] = parent_id
        run = self.client.create_run(self.experiment_id, run_name=name, tags=all_tags,
                                     start_time=int(start_time * 1000) if start_time is not None else None)
        return run.info.run_id

    def log(self, run_id: str, params: Mapping[str, Any] | None = None, metrics: Mapping[str, float] | None = None,
            tags: Mapping[str, str] | None = None,
            steps: Mapping[str, Iterable[float] | Mapping[int, float]] | None = None) -> None:
        """Params, summary metrics, tags and stepped metrics (step = index, or {step: value}) in few batches."""
        from mlflow.entities import Metric, Param, RunTag
        from mlflow.utils.time import get_current_time_millis

        now = get_current_time_millis()
        param_list = [Param(k, str(v)[:_MAX_PARAM_LEN]) for k, v in (params or {}).items()]
        metric_list = [Metric(k, float(v), now, 0) for k, v in (metrics or {}).items()]
        for key, values in (steps or {}).items():
            pairs = values.items() if isinstance(values, Mapping) else enumerate(values)  # {step: value} or a list
            metric_list += [Metric(key, float(v), now, int(i)) for i, v in pairs]
        tag_list = [RunTag(k, str(v)) for k, v in (tags or {}).items()]
        for i in range(0, max(len(param_list), 1), _MAX_PARAMS_PER_BATCH):
            chunk = param_list[i:i + _MAX_PARAMS_PER_BATCH]
            first = i == 0
            self.client.log_batch(run_id, params=chunk, metrics=metric_list[:_MAX_METRICS_PER_BATCH] if first else [],
                                  tags=tag_list if first else [])
        for i in range(_MAX_METRICS_PER_BATCH, len(metric_list), _MAX_METRICS_PER_BATCH):
            self.client.log_batch(run_id, metrics=metric_list[i:i + _MAX_METRICS_PER_BATCH])

    def log_step(self, run_id: str, key: str, value: float, step: int) -> None:
        """One stepped metric as soon as it exists (a fold score while the others still run)."""
        self.client.log_metric(run_id, key, float(value), step=step)

    def log_epochs(self, run_id: str, history: Mapping[str, Iterable[float]], first_step: int = 1) -> None:
        """Per-epoch metrics, step = epoch number (1 first), in batches."""
        from mlflow.entities import Metric
        from mlflow.utils.time import get_current_time_millis

        now = get_current_time_millis()
        metrics = [Metric(k, float(v), now, first_step + i) for k, vs in history.items() for i, v in enumerate(vs)]
        for i in range(0, len(metrics), _MAX_METRICS_PER_BATCH):
            self.client.log_batch(run_id, metrics=metrics[i:i + _MAX_METRICS_PER_BATCH])

    def log_artifacts(self, run_id: str, folder: Path) -> None:
        self.client.log_artifacts(run_id, str(folder))

    def log_file(self, run_id: str, path: Path) -> None:
        self.client.log_artifact(run_id, str(path))

    def finish(self, run_id: str, ok: bool) -> None:
        self.client.set_terminated(run_id, "FINISHED" if ok else "FAILED")

    def end(self, run_id: str, status: str) -> None:
        """End a run as FINISHED, FAILED or KILLED (a trial cut short by an interrupted driver)."""
        self.client.set_terminated(run_id, status)

    def reopen(self, run_id: str) -> None:
        """Mark an ended run RUNNING again: a resumed sweep continues its own parent run."""
        self.client.update_run(run_id, status="RUNNING")

    def run_status(self, run_id: str) -> str:
        return self.client.get_run(run_id).info.status

    def fail_abandoned_runs(self) -> list[str]:
        """Mark FAILED the runs a killed foldwise driver on this host left RUNNING.

        A driver killed with SIGKILL cannot end its runs; its pid tag says whether that
        process is gone, so runs of live drivers (concurrent commands) are left alone. A
        process that got the pid later (pids are reused, and a restarted container's
        driver often gets the very same one) started after the run did: not its driver.
        """
        import socket

        import psutil

        host = socket.gethostname()
        running = self.client.search_runs([self.experiment_id], f"attributes.status = 'RUNNING' and tags.{TAG_HOST} = '{host}'",
                                          max_results=1000)
        failed = []
        for run in running:
            pid = int(run.data.tags.get(TAG_PID, "0") or 0)
            if pid and not _driver_alive(psutil, pid, (run.info.start_time or 0) / 1000):
                self.client.set_terminated(run.info.run_id, "FAILED")
                self.client.set_tag(run.info.run_id, "foldwise.failure", "driver process died (found RUNNING at start-up)")
                failed.append(run.info.run_id)
        return failed


def _driver_alive(psutil: Any, pid: int, run_started: float) -> bool:
    """A process with this pid exists and already existed when the run started.

    2 s of slack: psutil derives start times from the boot time in whole seconds.
    """
    try:
        return psutil.Process(pid).create_time() <= run_started + 2.0
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def process_tags() -> dict[str, str]:
    """Which driver process owns a run, so a later command can tell an abandoned run."""
    import socket

    return {TAG_HOST: socket.gethostname(), TAG_PID: str(os.getpid())}


def metric_key(*parts: str) -> str:
    """Dot-joined parts with the characters MLflow refuses in metric names replaced by '_'."""
    return ".".join(re.sub(r"[^\w\-. /]", "_", p) for p in parts)


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': [1, {'c': 2}]}} -> {'a.b.0': 1, 'a.b.1.c': 2}: MLflow params are flat."""
    out: dict[str, Any] = {}
    if isinstance(value, Mapping):
        for k, v in value.items():
            out.update(flatten(v, f"{prefix}{k}."))
    elif isinstance(value, list | tuple) and value and any(isinstance(v, Mapping | list) for v in value):
        for i, v in enumerate(value):
            out.update(flatten(v, f"{prefix}{i}."))
    elif prefix:
        out[prefix[:-1]] = value
    return out


# --------------------------------------------------------------------------- reading runs back (compare)


class RunNotFound(LookupError):
    """A run id or name that the tracking store does not hold (or holds more than once): exit 2."""


@dataclass(frozen=True)
class RunRecord:
    """One MLflow run as plain data, so workflows never touch mlflow entities."""

    run_id: str
    name: str
    experiment_id: str
    experiment: str
    status: str
    start_time_ms: int
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def parent_id(self) -> str | None:
        return self.tags.get(TAG_PARENT)


def server_unreachable(uri: str, timeout: float = 5.0) -> str | None:
    """Why an http(s) tracking server cannot be used (nothing answers), else None; checked before
    any compute starts, because MLflow's client would retry for minutes and end in a traceback.
    Any HTTP answer (401 from a basic-auth server included) means a server is there."""
    if not uri.startswith(("http://", "https://")):
        return None
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout).close()
    except urllib.error.HTTPError:
        return None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        return (f"tracking URI {uri}: no MLflow server answers there ({getattr(reason, 'strerror', None) or reason}); "
                "start one (`foldwise cluster up`, `python -m foldwise.infra.mlflow_server`) or use sqlite:///mlflow.db")
    return None


# Schemes MLflow's own tracking-store registry opens (mlflow/tracking/_tracking_service/utils.py);
# plugins add theirs through the `mlflow.tracking_store` entry point group.
_BUILTIN_SCHEMES = ("", "file", "http", "https", "databricks", "databricks-uc", "uc", "sqlite", "postgresql",
                    "mysql", "mssql")


def uri_problem(uri: str) -> str | None:
    """Why MLflow could not open a tracking URI for writing, else None: an unknown scheme, a sqlite or
    file store whose folder is a file or missing its parent, a server where nothing answers. Cheap
    (MLflow is not imported): checked before any compute starts."""
    scheme = uri.split("://", 1)[0].split("+", 1)[0].lower() if "://" in uri else ""
    if scheme not in _BUILTIN_SCHEMES:
        from importlib.metadata import entry_points

        plugins = sorted(ep.name for ep in entry_points(group="mlflow.tracking_store"))
        if scheme not in plugins:
            valid = ", ".join(s for s in (*_BUILTIN_SCHEMES, *plugins) if s)
            return f"tracking URI {uri!r}: MLflow has no tracking store for scheme {scheme!r} (valid: {valid})"
        return None
    if scheme in ("http", "https"):
        return server_unreachable(uri)
    if scheme == "sqlite":
        if not uri.startswith("sqlite:///"):
            return f"tracking URI {uri!r}: expected sqlite:///PATH (three slashes, then the file)"
        path = Path.cwd() / uri.removeprefix("sqlite:///")  # an absolute PATH stays absolute
        if path.is_dir():
            return f"tracking URI {uri!r}: {str(path)!r} is a folder, not a sqlite file"
        if not path.parent.is_dir():
            return f"tracking URI {uri!r}: folder {str(path.parent)!r} does not exist"
    if scheme in ("", "file"):
        path = Path(uri.removeprefix("file://"))
        if path.exists() and not path.is_dir():
            return f"tracking URI {uri!r}: {str(path)!r} is a file; a file store is a folder"
    return None


def store_missing(uri: str) -> str | None:
    """Why a store cannot be read (a missing sqlite file would be created empty; a server that
    does not answer), else None."""
    if uri.startswith(("http://", "https://")):
        return server_unreachable(uri)
    if uri.startswith("sqlite:///"):
        path = Path(uri.removeprefix("sqlite:///"))
        if not path.is_absolute():
            path = Path.cwd() / path
        if not path.exists():
            return f"tracking store {uri!r} does not exist (no runs to read)"
    elif uri.startswith("file:") or "://" not in uri:
        path = Path(uri.removeprefix("file://"))
        if not path.exists():
            return f"tracking store {uri!r} does not exist (no runs to read)"
    return None


class RunReader:
    """Find runs by id or name, read metric histories and artifacts, write a run's description."""

    def __init__(self, uri: str) -> None:
        from mlflow.tracking import MlflowClient

        quiet_store_logs()
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no bars for 3 small files
        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)
        self._experiments: dict[str, str] = {}

    def _record(self, run: Any) -> RunRecord:
        exp_id = run.info.experiment_id
        if exp_id not in self._experiments:
            self._experiments[exp_id] = self.client.get_experiment(exp_id).name
        return RunRecord(run_id=run.info.run_id, name=run.info.run_name or "", experiment_id=exp_id,
                         experiment=self._experiments[exp_id], status=run.info.status,
                         start_time_ms=int(run.info.start_time or 0), params=dict(run.data.params),
                         metrics=dict(run.data.metrics), tags=dict(run.data.tags))

    def get(self, run_id: str) -> RunRecord:
        from mlflow.exceptions import MlflowException

        try:
            return self._record(self.client.get_run(run_id))
        except MlflowException:
            raise RunNotFound(f"no run with id {run_id!r} in {self.uri}") from None

    def find(self, ref: str) -> RunRecord:
        """A run id, a run name, or PARENT_NAME_OR_ID/MODEL for one model's child run."""
        from mlflow.exceptions import MlflowException

        if "/" in ref:
            parent_ref, _, model = ref.rpartition("/")
            parent = self.find(parent_ref)
            kids = [k for k in self.children(parent.run_id) if k.tags.get(TAG_MODEL) == model or k.name == model]
            if not kids:
                raise RunNotFound(f"run {parent_ref!r} has no child run for model {model!r}")
            return kids[0]
        if len(ref) == 32 and all(ch in "0123456789abcdef" for ch in ref):
            try:
                return self._record(self.client.get_run(ref))
            except MlflowException:
                pass
        if "'" in ref:
            raise RunNotFound(f"no run with id or name {ref!r} in {self.uri}")
        exp_ids = [e.experiment_id for e in self.client.search_experiments()]
        runs = self.client.search_runs(exp_ids, filter_string=f"attributes.run_name = '{ref}'", max_results=50) if exp_ids else []
        if not runs:
            raise RunNotFound(f"no run with id or name {ref!r} in {self.uri}")
        if len(runs) > 1:
            ids = ", ".join(r.info.run_id for r in runs[:5])
            raise RunNotFound(f"run name {ref!r} matches {len(runs)} runs ({ids}{', ...' if len(runs) > 5 else ''}); "
                              "pass a run id, or PARENT/MODEL for a model's child run")
        return self._record(runs[0])

    def children(self, parent_id: str, running_only: bool = False) -> list[RunRecord]:
        parent = self.client.get_run(parent_id)
        query = f"tags.`{TAG_PARENT}` = '{parent_id}'" + (" and attributes.status = 'RUNNING'" if running_only else "")
        out, token = [], None
        while True:  # page by page: a sweep of thousands of trials has thousands of children
            page = self.client.search_runs([parent.info.experiment_id], filter_string=query,
                                           max_results=1000, page_token=token)
            out += [self._record(r) for r in page]
            token = page.token
            if not token:
                return out

    def history(self, run_id: str, key: str) -> list[float]:
        """A stepped metric's values in step order (last value per step)."""
        by_step = self.steps(run_id, key)
        return [by_step[s] for s in sorted(by_step)]

    def steps(self, run_id: str, key: str) -> dict[int, float]:
        """A stepped metric as {step: value} (last value per step): steps may have gaps."""
        return {int(m.step): float(m.value)
                for m in sorted(self.client.get_metric_history(run_id, key), key=lambda m: m.timestamp)}

    def artifact_names(self, run_id: str) -> set[str]:
        return {a.path for a in self.client.list_artifacts(run_id)}

    def download(self, run_id: str, path: str, dst: Path) -> Path | None:
        """One top-level artifact into `dst`, or None when the run does not have it."""
        if path not in self.artifact_names(run_id):
            return None
        dst.mkdir(parents=True, exist_ok=True)
        return Path(self.client.download_artifacts(run_id, path, str(dst)))

    def log_artifacts(self, run_id: str, folder: Path, artifact_path: str) -> None:
        self.client.log_artifacts(run_id, str(folder), artifact_path)

    def set_description(self, run_id: str, text: str, tags: Mapping[str, str] | None = None) -> None:
        """The run description the MLflow UI shows (tag mlflow.note.content), plus any extra tags."""
        self.client.set_tag(run_id, TAG_NOTE, text)
        for k, v in (tags or {}).items():
            self.client.set_tag(run_id, k, v)
