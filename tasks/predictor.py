"""A trained run as one object: its fold models, the ensemble and the encoding they were fitted on.

`build_predictor` packs what `foldwise run` fitted (every model's pickled fold adapters, which
category levels each fold saw, the ensemble's weights or meta-model, the label encoding, and
a sample of the training features for drift); `Predictor.predict` applies it to new raw rows
and returns what `foldwise run` writes for the same rows. No Ray, no MLflow: the MLflow pyfunc
(workflows.tracking.logged_model) and `foldwise predict` both wrap this.

New rows are encoded with the run's own functions (`tasks.data`), then framed per fold with
`tasks.features.frame` exactly as the fold's training rows were, so a level the fold never saw
is missing, as in the run.
"""

from __future__ import annotations

import hashlib
import pickle
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from foldwise.tasks import ensemble as ens_lib
from foldwise.tasks.data import PreparedData, _numeric
from foldwise.tasks.ensemble import EnsembleResult
from foldwise.tasks.features import FoldVocabulary, fit_vocabulary, frame
from foldwise.tasks.fold_steps import fitted_fold_steps
from foldwise.tasks.folds import FoldPlan
from foldwise.tasks.repeats import oof_by_repeat
from foldwise.tasks.stacking import predict_layers, stack_layers_and_models
from foldwise.tasks.train import FoldResult

REFERENCE_ROWS = 20_000  # training rows kept for drift (PSI), sampled with the spec seed
ENSEMBLE = "ensemble"


class PredictInputError(ValueError):
    """New rows the run's models cannot take (a missing feature, a column of another kind): exit 2."""


@dataclass(frozen=True)
class FoldModel:
    fold: int
    fitted: bytes  # the pickled fitted adapter
    vocabulary: FoldVocabulary  # category codes (into Predictor.categories) the fold's training rows saw
    fold_steps: bytes | None = None  # the fold's fitted fold steps (FoldResult.fold_steps): rows go through them first


@dataclass(frozen=True)
class Blend:
    """The final ensemble as the run fitted it on all held-out rows."""

    method: str  # mean | rank_mean | weights | stack
    names: tuple[str, ...]  # models blended, in the run's order
    weights: dict[str, float]  # repeated CV: the mean of the repeats' (a blend is linear in them)
    metas: tuple[bytes, ...] = ()  # stack: each repeat's pickled final meta-models, one per layer (repeats averaged)
    passthrough: bool = False  # stack: the layers also see the rows' features


@dataclass(frozen=True)
class Encoded:
    """New rows as the run's arrays: codes into the training levels, NaN for missing or unknown."""

    X: np.ndarray  # (n, p) float64
    images: np.ndarray | None
    unknown_levels: dict[str, int]  # column -> rows whose level training never saw (treated as missing)


@dataclass(frozen=True)
class Predictor:
    task: str  # binary | multiclass | regression
    target: str
    id_column: str | None
    classes: tuple  # label encoding, code order; binary probabilities are of classes[1]
    columns: tuple[str, ...]  # feature columns, in the models' order
    kinds: dict[str, str]  # column -> numeric | categorical | datetime
    categories: dict[str, tuple[str, ...]]  # level lists of the categorical columns
    models: dict[str, tuple[FoldModel, ...]]
    blend: Blend
    reference: np.ndarray  # up to REFERENCE_ROWS training feature rows (encoded), for drift
    fingerprint: str  # the training data's
    image_column: str | None = None
    image_folder: str | None = None  # where the run's relative image paths were read from
    meta: dict[str, Any] = field(default_factory=dict)  # run id, metric, cv scores: for people
    slots: dict[str, tuple[float, float]] = field(default_factory=dict)  # model -> (cpus, gpus) it trained with
    steps: tuple[Any, ...] = ()  # the run's frame steps (tasks.steps.FrameStepConfig), replayed on new rows first
    raw_columns: tuple[str, ...] = ()  # with steps: the columns the steps took (the training data as read, no target)
    step_rows: pd.DataFrame | None = None  # with a `together` step: the training rows as read (no target), which
    # that step saw stacked with the test rows, and sees stacked with new rows

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def outputs(self) -> tuple[str, ...]:
        """The names `predict` answers for: every model and the ensemble."""
        return (*self.models, ENSEMBLE)

    def output_columns(self) -> list[str]:
        """The pyfunc's columns: one per class (classification) or the target (regression)."""
        return [str(c) for c in self.classes] if self.classes else [self.target]

    # ------------------------------------------------------------------ frame steps, encoding and checks

    def check_raw_columns(self, frame: pd.DataFrame, source: str = "data") -> None:
        """With frame steps: every column the steps took in the run (but the id) is present; raises
        PredictInputError (a step may read any of them, so none can be missing)."""
        needed = [c for c in getattr(self, "raw_columns", ()) if c != self.id_column]
        missing = [c for c in needed if c not in frame.columns]
        if missing:
            names = [s.name for s in self.steps]
            raise PredictInputError(f"{source}: missing column(s) {', '.join(map(repr, missing[:8]))}"
                                    f"{f' ({len(missing)} in all)' if len(missing) > 8 else ''}; the run's frame "
                                    f"steps ({', '.join(names)}) took every column of its data")

    def stepped(self, frame: pd.DataFrame, source: str = "data") -> pd.DataFrame:
        """New rows through the run's frame steps (as the run's test file went), or as they are
        without steps. PredictInputError for a missing column, a step module this process cannot
        import or a step result that breaks a rule; StepRaised when a step's function raises."""
        if not getattr(self, "steps", ()):
            return frame
        from foldwise.tasks.steps import StepError, replay_frame_steps, step_import_problem

        self.check_raw_columns(frame, source)
        problem = step_import_problem(self.steps)
        if problem:
            raise PredictInputError(problem)
        try:
            return replay_frame_steps(self.steps, frame, getattr(self, "step_rows", None), self.id_column, self.target)
        except StepError as e:
            raise PredictInputError(f"{source}: {e}") from None

    def check_columns(self, frame: pd.DataFrame, source: str = "data") -> None:
        """Every feature present and of the kind it had in training; raises PredictInputError."""
        missing = [c for c in self.columns if c not in frame.columns]
        if self.image_column and self.image_column not in frame.columns:
            missing.append(self.image_column)
        if missing:
            raise PredictInputError(f"{source}: missing feature column(s) {', '.join(map(repr, missing[:8]))}"
                                    f"{f' ({len(missing)} in all)' if len(missing) > 8 else ''}; the run's models were "
                                    f"trained on {len(self.columns)} columns")
        for col in self.columns:
            s = frame[col]
            if self.kinds[col] == "numeric" and not _numeric_like(s) and not s.isna().all():
                raise PredictInputError(f"{source}: column {col!r} is numeric in training but "
                                        f"{_kind_word(s)} here (e.g. {_example(s)!r})")
            if self.kinds[col] == "datetime" and not (pd.api.types.is_datetime64_any_dtype(s) or s.isna().all()):
                try:
                    pd.to_datetime(s)
                except (ValueError, TypeError):
                    raise PredictInputError(f"{source}: column {col!r} holds dates in training but "
                                            f"{_kind_word(s)} here (e.g. {_example(s)!r})") from None

    def encode(self, frame: pd.DataFrame, image_folder: str | None = None) -> Encoded:
        """Raw rows -> the run's float64 matrix (numerics as in training, categoricals as codes)."""
        X = np.empty((len(frame), len(self.columns)), dtype=np.float64)  # C order, as the models and Ray take it
        unknown: dict[str, int] = {}
        for j, col in enumerate(self.columns):
            s = frame[col]
            if self.kinds[col] == "categorical":
                lookup = {v: i for i, v in enumerate(self.categories[col])}
                codes = s.map(lambda v, lk=lookup: np.nan if pd.isna(v) else lk.get(str(v), np.nan)).to_numpy(np.float64)
                n_unknown = int(np.isnan(codes).sum() - s.isna().sum())
                if n_unknown:
                    unknown[col] = n_unknown
                X[:, j] = codes
            elif self.kinds[col] == "datetime" and not pd.api.types.is_datetime64_any_dtype(s):
                X[:, j] = _numeric(pd.to_datetime(s))
            else:
                X[:, j] = _numeric(s)
        images = None
        if self.image_column:
            from foldwise.tasks import images as image_io

            folder = image_folder if image_folder is not None else "."
            images = image_io.resolve_paths(frame[self.image_column], folder)
        return Encoded(X=X, images=images, unknown_levels=unknown)

    def shell(self) -> PreparedData:
        """A row-less PreparedData with the run's columns and levels: what `frame` reads."""
        p = len(self.columns)
        return PreparedData(X=np.empty((0, p)), y=np.empty(0), columns=self.columns, categories=self.categories,
                            task=self.task, classes=self.classes, fingerprint=self.fingerprint,
                            image_column=self.image_column, target=self.target, id_column=self.id_column)

    # ------------------------------------------------------------------ predicting

    def load(self) -> LoadedPredictor:
        """Unpickle every fold adapter once (the pyfunc's load_context)."""
        return LoadedPredictor(self, {name: [pickle.loads(f.fitted) for f in folds] for name, folds in self.models.items()})

    def predict(self, frame: pd.DataFrame, output: str = ENSEMBLE) -> np.ndarray:
        """One-shot convenience: `load().predict(...)`."""
        return self.load().predict(frame, output)


@dataclass
class LoadedPredictor:
    """A Predictor with its fold adapters unpickled, ready for many calls."""

    predictor: Predictor
    adapters: dict[str, list[Any]]

    def predict(self, frame: pd.DataFrame, output: str = ENSEMBLE, image_folder: str | None = None) -> np.ndarray:
        """`output` (a model's name or "ensemble") on raw rows: (n,) P(positive class) / value, or (n, K)."""
        p = self.predictor
        check_output(p, output)
        frame = p.stepped(frame)
        p.check_columns(frame)
        enc = p.encode(frame, image_folder)
        names = p.blend.names if output == ENSEMBLE else (output,)
        base = {name: mean_over_folds([predict_fold(p.shell(), f, enc.X, enc.images, adapter)
                                       for f, adapter in zip(p.models[name], self.adapters[name])]) for name in names}
        return base[output] if output != ENSEMBLE else blend_predictions(p.blend, base, p.task, p.n_classes, enc.X)


def check_output(p: Predictor, output: str) -> None:
    if output not in p.outputs:
        raise PredictInputError(f"--model {output!r} is not in this run (valid: {', '.join(p.outputs)})")


BLOCK_BYTES = 16 * 2**20  # encoded rows framed and predicted at a time inside a fold task
_ADAPTERS: dict[bytes, tuple[Any, Any]] = {}  # this process's unpickled fold adapters (and fold steps), by digest
_ADAPTERS_KEPT = 64


def predict_fold(shell: PreparedData, fold: FoldModel, X: np.ndarray, images: np.ndarray | None,
                 adapter: Any | None = None) -> np.ndarray:
    """One fold adapter on encoded rows, framed as its training rows were (the Ray task of `foldwise predict`).

    The rows are framed and predicted `BLOCK_BYTES` at a time: a model's own copies (a scaler's
    output, a column selection) then stay a block's size whatever the chunk's, and `X` (read-only,
    zero-copy from Ray's object store) is never copied whole. Every step is row by row, so the
    blocks' predictions are the whole chunk's. A process that predicts many chunks unpickles each
    fold's adapter once."""
    model, steps = (adapter, _fold_steps(fold)) if adapter is not None else _unpickled(fold)
    block = max(64, BLOCK_BYTES // max(1, 8 * X.shape[1]))
    out = []
    for start in range(0, len(X), block):
        rows = frame(shell, X[start:start + block], fold.vocabulary)
        if steps is not None:
            rows = steps.transform(rows)
        if images is not None and getattr(model, "takes_images", False):
            rows[shell.image_column] = images[start:start + block]
        out.append(np.asarray(model.predict(rows)))
    return out[0] if len(out) == 1 else np.concatenate(out)


def _fold_steps(fold: FoldModel) -> Any:
    return fitted_fold_steps(getattr(fold, "fold_steps", None))  # None in a predictor pickled before fold steps


def _unpickled(fold: FoldModel) -> tuple[Any, Any]:
    """(adapter, fold steps) of a fold, unpickled once per process (a Ray worker predicts chunk after chunk)."""
    key = hashlib.sha1(fold.fitted).digest() + hashlib.sha1(getattr(fold, "fold_steps", None) or b"").digest()
    found = _ADAPTERS.get(key)
    if found is None:
        if len(_ADAPTERS) >= _ADAPTERS_KEPT:
            _ADAPTERS.pop(next(iter(_ADAPTERS)))
        found = _ADAPTERS[key] = (pickle.loads(fold.fitted), _fold_steps(fold))
    return found


def mean_over_folds(preds: list[np.ndarray]) -> np.ndarray:
    """As the run averages its fold models' test predictions (fold order)."""
    return np.mean(preds, axis=0)


def blend_predictions(blend: Blend, base: dict[str, np.ndarray], task: str, n_classes: int,
                      X: np.ndarray | None = None) -> np.ndarray:
    """The run's final ensemble on the models' predictions (the same arithmetic as tasks.ensemble.blend);
    `X`: the rows' encoded features, which a passthrough stack needs."""
    names = list(blend.names)
    if len(names) == 1:
        return np.asarray(base[names[0]], dtype=np.float64).copy()
    preds = [np.asarray(base[m], dtype=np.float64) for m in names]
    if blend.method == "mean":
        return np.mean(preds, axis=0)
    if blend.method == "rank_mean":
        return np.mean([ens_lib._ranks(p) for p in preds], axis=0)
    if blend.method == "weights":
        return ens_lib._weighted(preds, np.array([blend.weights[m] for m in names]))
    if blend.method == "stack":
        if blend.passthrough and X is None:
            raise ValueError("this stack passes the features through: blend_predictions needs X")
        k = n_classes if task == "multiclass" else 2
        per_repeat = [predict_layers(pickle.loads(meta), preds, task, k, X if blend.passthrough else None)
                      for meta in blend.metas]
        return per_repeat[0] if len(per_repeat) == 1 else np.mean(per_repeat, axis=0)
    raise ValueError(f"unknown ensemble method {blend.method!r}")


# ---------------------------------------------------------------------- building from a run


def build_predictor(data: PreparedData, plan: FoldPlan, folds: dict[str, list[FoldResult]], ens: EnsembleResult,
                    names: list[str], seed: int, meta: str | None = None, meta_params: dict | None = None,
                    kinds: dict[str, str] | None = None, image_folder: str | None = None,
                    info: dict[str, Any] | None = None, slots: dict[str, tuple[float, float]] | None = None,
                    layers: int = 1, passthrough: bool = False, steps: tuple[Any, ...] = (),
                    raw: pd.DataFrame | None = None) -> Predictor:
    """Pack a finished run. `names`: the ensemble's models (spec.ensemble.models or all);
    `kinds`: column -> numeric | categorical | datetime (default: categorical iff it has levels);
    `raw`: with `steps`, the training data as read (the steps' input; kept when a step is `together`)."""
    models = {}
    for name, results in folds.items():
        missing = [r.fold for r in results if r.fitted is None]
        if missing:
            raise ValueError(f"model {name!r}: its fitted adapter cannot be pickled (folds {missing}), so the run "
                             "cannot be saved as a model")
        models[name] = tuple(FoldModel(r.fold, r.fitted, fit_vocabulary(data, plan.train_rows(r.fold)), r.fold_steps)
                             for r in sorted(results, key=lambda r: r.fold))
    kinds = kinds or {c: "categorical" if c in data.categories else "numeric" for c in data.columns}
    blend = Blend(method=ens.method, names=tuple(names), weights=dict(ens.weights),
                  metas=_stack_metas(data, plan, folds, names, seed, meta, meta_params, layers, passthrough)
                  if ens.method == "stack" and len(names) > 1 else (), passthrough=passthrough)
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(data.X), REFERENCE_ROWS, replace=False)) if len(data.X) > REFERENCE_ROWS else slice(None)
    return Predictor(task=data.task, target=data.target, id_column=data.id_column, classes=tuple(data.classes),
                     columns=tuple(data.columns), kinds=kinds, categories=dict(data.categories), models=models,
                     blend=blend, reference=np.ascontiguousarray(data.X[rows]), fingerprint=data.fingerprint,
                     image_column=data.image_column, image_folder=image_folder, meta=dict(info or {}),
                     slots=dict(slots or {}), steps=tuple(steps), **_step_inputs(steps, raw, data.target))


def _step_inputs(steps: tuple[Any, ...], raw: pd.DataFrame | None, target: str) -> dict[str, Any]:
    """raw_columns and step_rows of a run with frame steps: the training rows are kept only when a
    step runs on train and test together, since it must see them stacked with new rows."""
    if not steps:
        return {}
    if raw is None:
        raise ValueError("a run with frame steps needs its training data as read (raw) to be saved as a model")
    from foldwise.tasks.steps import feature_frame

    rows = feature_frame(raw, target)
    together = any(s.mode == "together" for s in steps)
    return {"raw_columns": tuple(map(str, rows.columns)), "step_rows": rows if together else None}


def _stack_metas(data: PreparedData, plan: FoldPlan, folds: dict[str, list[FoldResult]], names: list[str], seed: int,
                 meta: str | None, meta_params: dict | None, layers: int, passthrough: bool) -> tuple[bytes, ...]:
    """The stack's final meta-models the run applied to its test set, per repeat: refitted,
    deterministically, by the run's own code on the same OOF (the ensemble result keeps none)."""
    oofs = {m: oof_by_repeat(folds[m], plan, len(data.y)) for m in names}
    out = []
    for r in range(plan.repeats):
        *_, finals = stack_layers_and_models({m: oofs[m][r] for m in names}, None, data.y, plan.repeat(r), data.task,
                                             seed, meta, meta_params, layers, passthrough,
                                             data.X if passthrough else None)
        out.append(pickle.dumps(finals, protocol=pickle.HIGHEST_PROTOCOL))
    return tuple(out)


def _numeric_like(s: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s)


def _kind_word(s: pd.Series) -> str:
    return "numeric" if _numeric_like(s) else "text/categorical"


def _example(s: pd.Series) -> object:
    v = s.dropna()
    return v.iloc[0] if len(v) else None
