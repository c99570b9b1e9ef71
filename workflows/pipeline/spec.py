"""The workflow spec: the one place where configuration enters foldwise.

A YAML file (plus `--set key.path=value` overrides) becomes a frozen, validated
`WorkflowSpec`. Every mistake a user can make in the file itself is caught here and
reported as one `SpecError` line naming the key path and what would be valid, so the
CLI can exit 2 before anything starts. Checks that need the data live in `check.py`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from foldwise.tasks.models import BUILTIN_MODEL_TYPES, resolve_model_class
from foldwise.workflows.errors import SpecError
from foldwise.workflows.pipeline.imports import estimator_class_of, first_line
from foldwise.workflows.pipeline.spec_steps import Preprocess, Steps
from foldwise.workflows.pipeline.yaml_limits import MAX_DEPTH, safe_load_bounded
from foldwise.workflows.units import parse_size


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


Scheme = Literal["kfold", "stratified", "group", "stratified_group", "time"]
Task = Literal["binary", "multiclass", "regression"]
EnsembleMethod = Literal["mean", "rank_mean", "weights", "stack"]


class DataSpec(_Frozen):
    train: str
    test: str | None = None
    target: str = "target"
    id: str | None = None
    groups: str | None = None
    image: str | None = None  # column of image paths, relative to the data file (image models)
    positive_class: str | bool | int | float | None = None  # binary: the label coded 1 (checked against the data)


class CVSpec(_Frozen):
    scheme: Scheme | None = None  # None -> stratified for classification, kfold for regression
    folds: int = 5
    repeats: int = 1  # >1: repeated CV, one fold plan per repeat (kfold/stratified: sklearn's Repeated*KFold)
    seed: int = Field(42, ge=0, le=2**32 - 1)  # numpy's and sklearn's seeds are unsigned 32-bit

    @field_validator("repeats")
    @classmethod
    def _at_least_one(cls, v: int) -> int:
        if v < 1:
            raise ValueError(f"must be at least 1 (got {v})")
        return v

    @model_validator(mode="after")
    def _repeats_need_shuffled_folds(self) -> CVSpec:
        if self.repeats > 1 and self.scheme == "time":
            raise ValueError("cv.repeats > 1 needs a shuffled scheme: the time scheme's folds are the same in every "
                             "repeat (use seeds: on the models for variance over seeds)")
        return self

    @field_validator("folds")
    @classmethod
    def _at_least_two(cls, v: int) -> int:
        if v < 2:
            raise ValueError(f"must be at least 2 (got {v})")
        return v


class FeaturesSpec(_Frozen):
    drop: list[str] = Field(default_factory=list)
    categorical: list[str] = Field(default_factory=list)  # forced categorical beyond string columns
    groups: dict[str, list[str]] | Literal["auto"] = Field(default_factory=dict)


class Resources(_Frozen):
    cpus: float = 1.0
    gpus: float = 0.0
    memory: int | None = None  # bytes a fold reserves (Ray's `memory=`); '4GiB' etc. accepted

    @field_validator("memory", mode="before")
    @classmethod
    def _size(cls, v: Any) -> int | None:
        return None if v is None else parse_size(v)

    @field_validator("cpus")
    @classmethod
    def _positive(cls, v: float) -> float:
        if v <= 0:
            raise ValueError(f"must be > 0 (got {v})")
        return v

    @field_validator("gpus")
    @classmethod
    def _non_negative(cls, v: float) -> float:
        if v < 0:
            raise ValueError(f"must be >= 0 (got {v})")
        return v


class AugmentSpec(_Frozen):
    """Albumentations pipelines: a compact list (`- HorizontalFlip: {p: 0.5}`) or albumentations' dict."""

    train: list[Any] | dict[str, Any] | None = None
    valid: list[Any] | dict[str, Any] | None = None


class ModelSpec(_Frozen):
    name: str = Field(pattern=r"^[A-Za-z0-9_.\-]+$")
    type: str = "sklearn"
    estimator: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    preprocess: Preprocess = Field(default_factory=list)  # numeric steps, fold steps (tasks.fold_steps)
    resources: Resources = Resources()
    augment: AugmentSpec | None = None  # image models: albumentations pipelines
    tta: list[str] = Field(default_factory=list)  # image models: views averaged at predict time
    seeds: list[Annotated[int, Field(ge=0, le=2**32 - 1)]] = Field(default_factory=list)  # seed averaging (tasks.seeds)

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v):
            raise ValueError(f"seeds must be distinct (got {v})")
        return v

    @field_validator("type")
    @classmethod
    def _known_type(cls, v: str) -> str:
        if v in BUILTIN_MODEL_TYPES:
            return v
        if ":" not in v:
            raise ValueError(
                f"unknown model type {v!r} (valid: {', '.join(BUILTIN_MODEL_TYPES)}, "
                "or your own adapter as 'package.module:ClassName')"
            )
        try:
            resolve_model_class(v)
        except (ImportError, AttributeError) as e:
            raise ValueError(f"cannot import model adapter {v!r}: {e}") from None
        except Exception as e:  # noqa: BLE001 - a user module may raise anything at import
            raise ValueError(f"model adapter {v!r}: importing it raised {type(e).__name__}: {first_line(e)}") from None
        return v

    @model_validator(mode="after")
    def _image_options(self) -> ModelSpec:
        if (self.augment is not None or self.tta) and self.type in BUILTIN_MODEL_TYPES and self.type != "torch_image":
            raise ValueError(f"augment and tta are for image models (type torch_image), not type {self.type}")
        from foldwise.tasks.augment import AugmentError, check_augment, check_tta

        try:
            check_augment(self.augment.model_dump() if self.augment else None, "augment")
            check_tta(self.tta, "tta")
        except AugmentError as e:
            raise ValueError(str(e)) from None
        return self

    @model_validator(mode="after")
    def _estimator_for_sklearn(self) -> ModelSpec:
        if self.type == "sklearn":
            if not self.estimator:
                raise ValueError(
                    "type sklearn needs 'estimator', an import path such as "
                    "sklearn.linear_model.LogisticRegression"
                )
            _check_estimator_path(self.estimator)
        return self


def _check_estimator_path(path: str) -> None:
    estimator_class_of(path)


class EnsembleSpec(_Frozen):
    method: EnsembleMethod = "mean"
    models: list[str] | None = None  # None -> every model
    meta: str | None = None  # stack meta-model import path; default logistic / ridge
    params: dict[str, Any] = Field(default_factory=dict)
    layers: int = Field(1, ge=1, le=5)  # stack: layer k learns from layer k-1's OOF (tasks.stacking)
    passthrough: bool = False  # stack: every layer also sees the original features

    @model_validator(mode="after")
    def _layers_are_for_stack(self) -> EnsembleSpec:
        if (self.layers > 1 or self.passthrough) and self.method != "stack":
            raise ValueError(f"layers and passthrough are for method stack (method is {self.method})")
        return self

    @field_validator("meta")
    @classmethod
    def _meta_estimator(cls, v: str | None) -> str | None:
        if v is not None:
            estimator_class_of(v)
        return v


def _check_search_param(entry: Any) -> Any:
    """One `search.space` entry; pydantic puts the parameter's name in the error's key path."""
    from foldwise.workflows.pipeline.search_space import parse_param

    parse_param("", entry)
    return entry


class SearchSpec(_Frozen):
    model: str | None = None  # None -> the only model (required when there are several)
    models: list[str] | None = None  # several models in one study; space keys then read MODEL.param
    trials: int = 20
    space: dict[str, Annotated[Any, AfterValidator(_check_search_param)]] = Field(default_factory=dict)
    pruner: Literal["asha", "median", "none"] = "asha"
    sampler: Literal["tpe", "random", "grid", "cmaes", "gp", "nsga2"] = "tpe"
    seed: int | None = None  # the sampler's; None -> cv.seed
    objectives: list[Literal["cv_score", "fit_seconds", "predict_seconds", "model_bytes"]] = ["cv_score"]
    storage: str | None = None  # an Optuna storage URL (sqlite:///, postgresql://, mysql://) for optuna-dashboard
    parallel_folds: bool = False
    refit: bool = False
    ensemble_trials: int = Field(20, ge=1)  # the ensemble phase's settings tried (space keys ensemble.*)

    @field_validator("trials")
    @classmethod
    def _positive_trials(cls, v: int) -> int:
        if v < 1:
            raise ValueError(f"must be at least 1 (got {v})")
        return v

    @field_validator("space")
    @classmethod
    def _not_empty(cls, v: dict[str, Any]) -> dict[str, Any]:
        if not v:
            raise ValueError("is empty; name at least one parameter, e.g. learning_rate: {loguniform: [0.01, 0.3]}")
        return v

    @field_validator("objectives")
    @classmethod
    def _score_among_objectives(cls, v: list[str]) -> list[str]:
        if "cv_score" not in v or len(set(v)) != len(v):
            raise ValueError(f"must name cv_score once, plus costs to minimise (got {v}); e.g. [cv_score, fit_seconds]")
        return v

    @field_validator("storage")
    @classmethod
    def _storage_url(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("sqlite:///", "postgresql://", "postgresql+", "mysql://", "mysql+")):
            raise ValueError(f"must be an Optuna storage URL: sqlite:///PATH, postgresql://... or mysql://... (got {v!r})")
        return v


class ChecksSpec(_Frozen):
    ignore: list[str] = Field(default_factory=list)  # warning codes not to print, record or log

    @field_validator("ignore")
    @classmethod
    def _known_codes(cls, v: list[str]) -> list[str]:
        from foldwise.tasks.checks import WARNING_CODES

        unknown = [c for c in v if c not in WARNING_CODES]
        if unknown:
            raise ValueError(f"unknown warning code(s) {', '.join(map(str, unknown))} (valid: {', '.join(WARNING_CODES)})")
        return v


class SubmissionSpec(_Frozen):
    kind: Literal["proba", "label"] = "proba"  # label: the predicted class names (classification)
    # binary probability column named after the target (Kaggle's usual shape) or the positive class
    column: Literal["target", "class"] = "target"


class TrackingSpec(_Frozen):
    uri: str | None = None
    experiment: str | None = None


class WorkflowSpec(_Frozen):
    name: str = Field(pattern=r"^[A-Za-z0-9_.\-]+$")
    data: DataSpec
    task: Task | None = None  # None -> inferred from the target
    metric: str | None = None  # None -> roc_auc / accuracy / neg_root_mean_squared_error; or 'pkg.module:function'
    cv: CVSpec = CVSpec()
    features: FeaturesSpec = FeaturesSpec()
    steps: Steps = Field(default_factory=list)  # frame steps, run once before the folds
    preprocess: Preprocess = Field(default_factory=list)  # fold steps for every model, before its own
    models: list[ModelSpec] = Field(min_length=1)
    ensemble: EnsembleSpec = EnsembleSpec()
    search: SearchSpec | None = None
    slices: dict[str, str] = Field(default_factory=dict)
    checks: ChecksSpec = ChecksSpec()
    submission: SubmissionSpec = SubmissionSpec()
    tracking: TrackingSpec = TrackingSpec()

    @field_validator("metric", mode="before")
    @classmethod
    def _metric_alias(cls, v: Any) -> Any:
        from foldwise.tasks.metrics import METRIC_ALIASES

        return METRIC_ALIASES.get(v, v) if isinstance(v, str) else v

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, v: str | None) -> str | None:
        from foldwise.tasks.metrics import METRIC_NAMES, MetricError, is_custom, metric_suggestions, resolve_metric

        if v is not None and is_custom(v):  # the user's own function, 'pkg.module:function'
            try:
                resolve_metric(v, fresh=True)
            except MetricError as e:
                raise ValueError(str(e)) from None
            return v
        if v is not None and v not in METRIC_NAMES:
            close = metric_suggestions(v) or [m for m in METRIC_NAMES if v.replace("neg_", "") in m][:5]
            hint = f"; did you mean {', '.join(close)}?" if close else "; see sklearn.metrics.get_scorer_names()"
            raise ValueError(f"unknown metric {v!r}{hint}")
        return v

    @model_validator(mode="after")
    def _cross_checks(self) -> WorkflowSpec:
        names = [m.name for m in self.models]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"models: duplicate model name(s) {', '.join(dupes)}; names must be unique")
        if self.cv.scheme in ("group", "stratified_group") and not self.data.groups:
            raise ValueError(f"cv.scheme {self.cv.scheme!r} needs data.groups, the column that holds the groups")
        if self.ensemble.models is not None:
            unknown = [m for m in self.ensemble.models if m not in names]
            if unknown:
                raise ValueError(f"ensemble.models: unknown model(s) {', '.join(unknown)} (models: {', '.join(names)})")
        if self.search is not None and self.search.model is not None and self.search.model not in names:
            raise ValueError(f"search.model: {self.search.model!r} is not one of the models ({', '.join(names)})")
        unknown = [m for m in (self.search.models or []) if m not in names] if self.search is not None else []
        if unknown:
            raise ValueError(f"search.models: unknown model(s) {', '.join(unknown)} (models: {', '.join(names)})")
        return self

    @property
    def experiment(self) -> str:
        return self.tracking.experiment or self.name


# --------------------------------------------------------------------------- loading


def load_spec(source: str | Path | dict[str, Any], overrides: list[str] | tuple[str, ...] = ()) -> WorkflowSpec:
    """Read YAML (or take a dict), apply `key.path=value` overrides, validate.

    Relative data paths are resolved against the spec file's folder, so a spec works
    from any working directory.
    """
    if isinstance(source, dict):
        raw, base = dict(source), None
    else:
        path = Path(source)
        if not path.is_file():
            raise SpecError(f"spec file {str(path)!r} does not exist")
        try:
            raw = safe_load_bounded(path.read_text(), f"spec file {str(path)!r}")
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise SpecError(f"spec file {str(path)!r} is not valid YAML{where}: {problem}") from None
        if not isinstance(raw, dict):
            raise SpecError(f"spec file {str(path)!r} must hold a mapping of keys (name, data, models, ...)")
        base = path.parent
    for item in overrides:
        apply_override(raw, item)
    try:
        spec = WorkflowSpec.model_validate(raw)
    except ValidationError as e:
        raise SpecError(_one_line(e)) from None
    if isinstance(raw.get("metric"), str) and raw["metric"] != spec.metric:
        negated = " (negated, so greater is better)" if spec.metric.startswith("neg_") else ""
        print(f"foldwise: note: metric {raw['metric']!r} is sklearn's scorer {spec.metric!r}{negated}", file=sys.stderr)
    return _resolve_paths(spec, base) if base is not None else spec


def apply_override(raw: dict[str, Any], item: str) -> None:
    """`a.b.0.c=value` -> raw['a']['b'][0]['c'] = yaml(value), in place."""
    key, sep, value_text = item.partition("=")
    if not sep or not key:
        raise SpecError(f"--set {item[:80]!r}: expected key.path=value")
    if key.count(".") >= MAX_DEPTH:
        raise SpecError(f"--set {key[:80]}...: {key.count('.') + 1} key segments; a spec nests at most {MAX_DEPTH}")
    try:
        value = safe_load_bounded(value_text, f"--set {key}") if value_text != "" else ""
    except yaml.YAMLError:
        value = value_text
    parts = key.split(".")
    node: Any = raw
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        here = ".".join(parts[: i + 1])  # bounded: at most MAX_DEPTH segments
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise SpecError(f"--set {key}: {here!r} needs a list index below {len(node)}")
            if last:
                node[int(part)] = value
            else:
                node = node[int(part)]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                if node.get(part) is None:
                    node[part] = {}
                node = node[part]
        else:
            raise SpecError(f"--set {key}: {'.'.join(parts[:i])!r} is a value, not a mapping or list")


def _resolve_paths(spec: WorkflowSpec, base: Path) -> WorkflowSpec:
    def fix(p: str | None) -> str | None:
        if p is None or p.startswith("sklearn:") or "://" in p or Path(p).is_absolute():
            return p
        try:
            return str((base / p).resolve())
        except (RuntimeError, OSError):  # a symlink loop: the data check names it
            return str((base / p).absolute())

    data = spec.data.model_copy(update={"train": fix(spec.data.train), "test": fix(spec.data.test)})
    models = [m.model_copy(update={"params": {**m.params, "weights": fix(m.params["weights"])}})
              if m.type == "torch_image" and isinstance(m.params.get("weights"), str) else m for m in spec.models]
    return spec.model_copy(update={"data": data, "models": models})


def _one_line(err: ValidationError) -> str:
    """The first validation error as `spec key 'a.b': what is wrong (what is valid)`."""
    errors = err.errors()
    first = errors[0]
    loc = ".".join(str(p) for p in first["loc"])
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    if first["type"] == "extra_forbidden":
        valid = _valid_keys(first["loc"][:-1])
        return f"spec key {loc!r} is not allowed (valid keys here: {', '.join(valid)}){more}"
    if first["type"] == "missing":
        return f"spec key {loc!r} is required{more}"
    msg = first["msg"].removeprefix("Value error, ")
    got = first.get("input")
    got_text = f" (got {got!r})" if first["type"] not in ("value_error",) and not isinstance(got, dict | list) else ""
    where = f"spec key {loc!r}: " if loc else "spec: "
    return f"{where}{msg}{got_text}{more}"


def _valid_keys(loc: tuple[Any, ...]) -> list[str]:
    model: Any = WorkflowSpec
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        if field is None:
            return []
        model = _model_of(field.annotation)
        if model is None:
            return []
    return list(model.model_fields)


def _model_of(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _model_of(arg)
        if found is not None:
            return found
    return None


def to_yaml(spec: WorkflowSpec) -> str:
    """The effective spec (defaults filled in), as logged to MLflow and written with outputs."""
    return yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)
