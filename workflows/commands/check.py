"""`foldwise check SPEC [--reference OLD_DATA]`: stop bad data before compute, measure drift.

The DAG reads top to bottom in `_submit`: prepare train + the other side once, stack
them for adversarial validation once, one `adversarial_fold` task per fold (all
submitted at once, so Ray packs them into the free slots) and one `feature_drift` task
beside them. Before any of that, on the driver: the spec and data errors (exit 2,
nothing logged) and the cheap warnings. With no test set and no --reference there is
nothing to compare, so only the checks run and Ray never starts.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from foldwise.infra import storage
from foldwise.tasks.checks import Finding
from foldwise.tasks.drift import (
    PSI_MAJOR,
    PSI_MODERATE,
    AdversarialResult,
    FeatureDrift,
    adversarial_dataset,
    adversarial_fold,
    feature_drift,
    series_drift,
    summarise_adversarial,
)
from foldwise.tasks.report import write_json
from foldwise.workflows.errors import InputError
from foldwise.workflows.pipeline.inputs import DataFindings, Inputs, data_findings, usable_tracking_uri, validate_inputs
from foldwise.workflows.pipeline.preflight import preflight
from foldwise.workflows.pipeline.spec import WorkflowSpec, load_spec

if TYPE_CHECKING:
    from foldwise.workflows.pipeline.failures import OpenRuns
    from foldwise.workflows.tracking.tracker import Tracker

TOP_FEATURES = 10  # top_adversarial_features in summary.json
PLOT_FEATURES = 6  # panels in drift.png
ADVERSARIAL_WARN_AUC = 0.7  # an adversarial AUC this high is a warning on its own
VERDICT_TEXT = {"none": "no detectable drift", "mild": "mild drift", "strong": "strong drift"}


@dataclass(frozen=True)
class CheckResult:
    """What `foldwise check` produces: the summary.json data plus the typed results."""

    summary: dict[str, Any]
    out_dir: Path | str  # a local folder, or the URI the files were uploaded to
    report: str
    findings: DataFindings = field(repr=False)
    drift: tuple[FeatureDrift, ...] = field(default=(), repr=False)
    adversarial: AdversarialResult | None = None

    @property
    def run_id(self) -> str:
        return self.summary["run_id"]

    @property
    def warnings(self) -> list[str]:
        return self.summary["warnings"]

    @property
    def adversarial_auc(self) -> float | None:
        return self.summary["adversarial_auc"]


# --------------------------------------------------------------------------- Python API


def run_check(spec: WorkflowSpec | str | Path, *, reference: str | Path | None = None, overrides: Sequence[str] = (),
              out: str | Path | None = None, tracking_uri: str | None = None, address: str | None = None,
              executor: str = "auto", folds: int | None = None, max_rows: int = 200_000) -> CheckResult:
    """The Python API of `foldwise check` (same data as summary.json, plus typed results).

    Raises SpecError/InputError before anything starts or is logged, RunFailed when a
    task fails (the MLflow run is then marked FAILED).
    """
    from foldwise.workflows.engine.idle import on_idle_thread
    from foldwise.workflows.engine.lazy import LazyExecutor, Work
    from foldwise.workflows.pipeline.failures import closes_on_failure, marks_runs_failed

    wall_start = time.perf_counter()
    if not isinstance(spec, WorkflowSpec):
        spec = load_spec(spec, overrides)
    reference = _resolve_reference(reference)
    inputs = validate_inputs(spec)
    uri = usable_tracking_uri(tracking_uri, spec)
    preflight(spec, task=inputs.task, out=out, address=address, executor=executor, uses_cache=False)
    n_folds = folds or spec.cv.folds
    ex = LazyExecutor(executor, address)
    if reference or spec.data.test:  # folds to fit: Ray (unless the data is small) starts beside the data checks
        other_rows = inputs.summary.test_rows if not reference and inputs.summary.test_rows else inputs.summary.n_rows
        ex.expect_early(Work(rows=min(inputs.summary.n_rows + other_rows, max_rows),
                             features=len(inputs.summary.columns), fits=n_folds))
    with closes_on_failure(ex, spec):  # bad data found here stops a Ray started above
        frames = _stepped(spec, inputs, reference)
        findings = data_findings(spec, inputs, reference, frames)
        if findings.errors:
            raise InputError(findings.first_error_line())
        timeline = {"checks_done": time.perf_counter() - wall_start}
        handles = _submit(ex, spec, inputs, reference, n_folds, max_rows, frames)  # runs while MLflow is set up below
    # MLflow (import, store, the run) on a thread beside the folds, at once and at normal priority: the
    # main thread only waits for the folds, and waiting for a free CPU (as `run` may) left the whole
    # set-up after the folds here (measured: tracking_wait = tracking_setup, 5-8 s on 2 busy cores)
    runs = on_idle_thread(lambda: _open_run(spec, uri, reference, n_folds, max_rows, inputs.task),
                          name="foldwise-mlflow-setup")
    runs.start_now(lower=False)
    with marks_runs_failed(runs, ex, spec):
        adversarial, drift = _gather(ex, handles)
        ex.close_beside()  # every task is done: Ray shuts down beside the report, plot and logging (joined on exit)
        tick = time.perf_counter()
        opened = runs.result()
        phases = {"tracking_setup": runs.seconds, "tracking_wait": time.perf_counter() - tick}
        target = str(out) if out else storage.join(storage.outputs_root(), spec.name, opened.parent)
        ctx = CheckContext(spec=spec, inputs=inputs, findings=findings, reference=reference, tracker=opened.tracker,
                           run_id=opened.parent, target=target, wall_start=wall_start, startup_seconds=ex.startup_seconds,
                           ray_start_seconds=ex.start_seconds, timeline=timeline | ex.timeline(wall_start), phases=phases)
        return _finish(ctx, adversarial, drift)


def _open_run(spec: WorkflowSpec, uri: str, reference: str | None, n_folds: int, max_rows: int, task: str) -> OpenRuns:
    """The check's MLflow run, started with its params (runs a dead driver left RUNNING are failed first)."""
    from foldwise.workflows.pipeline.failures import OpenRuns
    from foldwise.workflows.pipeline.provenance import code_version, git_commit
    from foldwise.workflows.tracking import tracker as tk

    tracker = tk.Tracker(uri, spec.experiment)
    tracker.fail_abandoned_runs()
    tags = {tk.TAG_COMMAND: "check", tk.TAG_GIT: git_commit(), tk.TAG_CODE: code_version()} | tk.process_tags()
    parent = tracker.start_run(f"check-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}", tags)
    tracker.log(parent, params={"data.train": spec.data.train, "data.test": spec.data.test, "reference": reference,
                                "folds": n_folds, "seed": spec.cv.seed, "max_rows": max_rows, "task": task})
    return OpenRuns(tracker, parent, {})


def _resolve_reference(reference: str | Path | None) -> str | None:
    if reference is None:
        return None
    text = str(reference)
    if text.startswith("sklearn:") or "://" in text:
        return text
    path = Path(text)
    if not path.exists():
        raise InputError(f"--reference: data file {text!r} does not exist")
    return str(path.resolve())


@dataclass(frozen=True)
class CheckContext:
    """What a check knows once its tasks are done: the inputs, where it logs, where it writes, its timings."""

    spec: WorkflowSpec
    inputs: Inputs
    findings: DataFindings
    reference: str | None  # the --reference data, or None (compared with data.test, if any)
    tracker: Tracker
    run_id: str  # the check's MLflow run
    target: str  # the output folder or URI (--out, else <outputs root>/<spec name>/<run id>)
    wall_start: float  # time.perf_counter() when the check started
    startup_seconds: float  # Ray's start-up the check waited for
    ray_start_seconds: float = 0.0  # Ray's whole start-up, also the part done beside the data checks
    timeline: Mapping[str, float] = field(default_factory=dict)  # events, seconds after the start
    phases: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class _Handles:
    folds: list[Any]
    drift: Any


def _stepped(spec: WorkflowSpec, inputs: Inputs, reference: str | None) -> tuple | None:
    """The frames the checks see when the spec has frame steps: train and the other side (test, or
    --reference) through the steps, so leaks and drift in the steps' columns are found too."""
    if not spec.steps:
        return None
    from foldwise.tasks.data import DataError, read_table
    from foldwise.workflows.pipeline.steps import stepped_in_process

    other = reference or spec.data.test
    try:
        train, side = read_table(spec.data.train), read_table(other) if other else None
    except DataError as e:
        raise InputError(f"data: {e}") from None
    return stepped_in_process(spec, inputs, train, side)


def _submit(ex: Any, spec: WorkflowSpec, inputs: Inputs, reference: str | None, n_folds: int,
            max_rows: int, frames: tuple | None = None) -> _Handles | None:
    """prepare(train, other) -> stack once -> one adversarial_fold per fold; feature_drift beside them.

    The id and groups columns are left out: ids differ between sides by construction,
    and the question is whether the *features* differ.
    """
    from foldwise.tasks.data import prepare_data
    from foldwise.workflows.engine.executor import Slot
    from foldwise.workflows.engine.lazy import Work

    other = reference or spec.data.test
    if other is None:
        return None
    d = inputs.data
    config = replace(d, test=other, id=None, groups=None, drop=d.drop + tuple(c for c in (d.id, d.groups) if c))
    if frames is not None:  # the frame steps' output, already on the driver
        from foldwise.tasks.data import DataError, prepare_frames

        try:
            data = prepare_frames(config, frames[0], frames[1])
        except DataError as e:
            raise InputError(f"data: {e}") from None
        rows = len(data.y) + (len(data.X_test) if data.X_test is not None else 0)
        ex.expect(Work(rows=min(rows, max_rows), features=len(data.columns), fits=n_folds))
        prepared = ex.put(data)
    elif ex.kind == "auto":  # prepared here, its size settles where the folds run (small: in this process)
        data = ex.run(prepare_data, config, name="prepare")
        rows = len(data.y) + (len(data.X_test) if data.X_test is not None else 0)
        ex.expect(Work(rows=min(rows, max_rows), features=len(data.columns), fits=n_folds))
        prepared = ex.put(data)
    else:
        prepared = ex.submit(prepare_data, config, name="prepare")
    stacked = ex.submit(adversarial_dataset, prepared, n_folds, spec.cv.seed, max_rows, name="adversarial_dataset")
    folds = [ex.submit(adversarial_fold, stacked, k, spec.cv.seed, slot=Slot(cpus=1), name=f"adversarial_fold[fold={k}]")
             for k in range(n_folds)]
    drift = ex.submit(feature_drift, prepared, name="feature_drift")
    return _Handles(folds=folds, drift=drift)


def _gather(ex: Any, handles: _Handles | None) -> tuple[AdversarialResult | None, tuple[FeatureDrift, ...]]:
    if handles is None:
        return None, ()
    try:
        folds = [result for _, result in ex.as_completed(handles.folds)]
    except Exception:
        ex.cancel(handles.folds + [handles.drift])
        raise
    return summarise_adversarial(folds), ex.get(handles.drift)


def _finish(ctx: CheckContext, adversarial: AdversarialResult | None, drift: tuple[FeatureDrift, ...]) -> CheckResult:
    from foldwise.workflows.tracking import tracker as tk

    spec, inputs, findings, reference, tracker, parent = (ctx.spec, ctx.inputs, ctx.findings, ctx.reference,
                                                          ctx.tracker, ctx.run_id)
    out_dir = storage.staging_folder(ctx.target)  # the target itself, or a local folder uploaded to it at the end
    compared = _compared(spec, reference, findings)
    warnings = list(findings.warnings)
    target = _target_drift(spec, inputs, findings) if reference else None
    if adversarial is not None and adversarial.auc >= ADVERSARIAL_WARN_AUC:
        top = ", ".join(repr(c) for c in list(adversarial.importance)[:3])
        warnings.append(Finding("warning", "adversarial", None, (
            f"{compared['other_label']} rows are easy to tell from {compared['train_label']} rows (adversarial AUC "
            f"{adversarial.auc:.3f}); the classifier relies most on {top}: the CV score may not carry over")))
    warnings += [Finding("warning", "drift", d.feature, f"column {d.feature!r} drifted: PSI {d.psi:.3f} "
                         f"({compared['train_label']} vs {compared['other_label']}, {_p_text(d)})")
                 for d in drift if d.psi >= PSI_MAJOR]
    if target is not None and target.psi >= PSI_MODERATE:
        warnings.append(Finding("warning", "target_drift", spec.data.target, (
            f"the target {spec.data.target!r} shifted between the reference and the new data: PSI {target.psi:.3f} "
            f"({_p_text(target)})")))
    warnings = [w for w in warnings if w.code not in set(spec.checks.ignore)]  # the data checks' are filtered already
    outputs = {"report": out_dir / "check.md", "plot": out_dir / "drift.png" if drift else None,
               "drift_table": out_dir / "drift.csv" if drift else None}
    summary: dict[str, Any] = {
        "command": "check",
        "experiment": spec.experiment,
        "run_id": parent,
        "tracking_uri": tracker.uri,
        "task": inputs.task,
        "compared": compared,
        "errors": [],
        "warnings": [w.message for w in warnings],
        "warning_details": [{"code": w.code, "column": w.column, "message": w.message} for w in warnings],
        "adversarial_auc": adversarial.auc if adversarial else None,
        "adversarial_auc_ci": list(adversarial.ci) if adversarial else None,
        "adversarial_auc_method": adversarial.method if adversarial else None,
        "adversarial_oof_auc": adversarial.oof_auc if adversarial else None,
        "adversarial_fold_aucs": list(adversarial.fold_aucs) if adversarial else [],
        "adversarial_verdict": adversarial.verdict if adversarial else None,
        "top_adversarial_features": list(adversarial.importance)[:TOP_FEATURES] if adversarial else [],
        "adversarial_importance": {k: v for k, v in list(adversarial.importance.items())[:TOP_FEATURES]} if adversarial else {},
        "drift": [_drift_row(d) for d in drift],
        "target_drift": _drift_row(target) if target is not None else None,
        "wall_seconds": 0.0,
        "startup_seconds": ctx.startup_seconds,
        "ray_start_seconds": ctx.ray_start_seconds,
        "timeline": dict(ctx.timeline),
        "phase_seconds": dict(ctx.phases),
        "outputs": {k: storage.relocate(v, out_dir, ctx.target) for k, v in outputs.items()},
    }
    if drift:
        _plot(drift, outputs["plot"], compared)
        _drift_csv(drift, outputs["drift_table"])
    report = check_markdown(spec, summary, adversarial, drift, warnings)
    outputs["report"].write_text(report)
    summary["wall_seconds"] = time.perf_counter() - ctx.wall_start
    write_json(out_dir / "summary.json", summary)
    metrics = {"n_warnings": len(warnings), "wall_seconds": summary["wall_seconds"]}
    if adversarial is not None:
        metrics |= {"adversarial_auc": adversarial.auc, "adversarial_auc_lo": adversarial.ci[0],
                    "adversarial_auc_hi": adversarial.ci[1], "adversarial_oof_auc": adversarial.oof_auc,
                    "max_psi": max(d.psi for d in drift)}
        metrics |= {tk.metric_key("psi", d.feature): d.psi for d in drift[:200]}
    tracker.log(parent, metrics=metrics, tags={"foldwise.check.compared": compared["kind"]},
                steps={"adversarial_fold_auc": adversarial.fold_aucs} if adversarial else None)
    tracker.log_artifacts(parent, out_dir)
    storage.publish_folder(out_dir, ctx.target)
    return CheckResult(summary=summary, out_dir=ctx.target if storage.is_uri(ctx.target) else out_dir, report=report,
                       findings=findings, drift=drift, adversarial=adversarial)


def _compared(spec: WorkflowSpec, reference: str | None, findings: DataFindings) -> dict[str, Any]:
    train_rows = len(findings.train) if findings.train is not None else None
    other_rows = len(findings.other.frame) if findings.other is not None else None
    if reference:
        return {"kind": "reference", "train": spec.data.train, "other": reference, "train_label": "new data.train",
                "other_label": "reference", "rows": {"train": train_rows, "other": other_rows}, "note": ""}
    if spec.data.test:
        return {"kind": "test", "train": spec.data.train, "other": spec.data.test, "train_label": "train",
                "other_label": "test", "rows": {"train": train_rows, "other": other_rows}, "note": ""}
    return {"kind": "none", "train": spec.data.train, "other": None, "train_label": "train", "other_label": "",
            "rows": {"train": train_rows, "other": None},
            "note": "the spec has no data.test and no --reference was given, so there is nothing to compare train with"}


def _target_drift(spec: WorkflowSpec, inputs: Inputs, findings: DataFindings) -> FeatureDrift | None:
    other = findings.other.frame if findings.other is not None else None
    target = spec.data.target
    if other is None or target not in other.columns or other[target].isna().all():
        return None
    return series_drift(target, findings.train[target], other[target], categorical=inputs.task != "regression")


def _drift_row(d: FeatureDrift) -> dict[str, Any]:
    return {"feature": d.feature, "kind": d.kind, "psi": d.psi, "ks_pvalue": d.ks_pvalue, "chi2_pvalue": d.chi2_pvalue,
            "missing_train": d.missing_train, "missing_other": d.missing_test, "level": d.level}


# --------------------------------------------------------------------------- report, plot, table


def check_markdown(spec: WorkflowSpec, summary: dict[str, Any], adversarial: AdversarialResult | None,
                   drift: tuple[FeatureDrift, ...], warnings: list[Finding]) -> str:
    c = summary["compared"]
    lines = [f"# {spec.name}: data check", ""]
    if c["kind"] == "none":
        lines += [f"Train: `{c['train']}` ({c['rows']['train']} rows). {c['note'].capitalize()}: set `data.test` or "
                  "pass `--reference OLD_DATA` for adversarial validation and per-feature drift.", ""]
    else:
        lines += [f"Compared **{c['train_label']}** `{c['train']}` ({c['rows']['train']} rows) with "
                  f"**{c['other_label']}** `{c['other']}` ({c['rows']['other']} rows).", ""]
    lines += ["## Errors", "", "None: every blocking check passed (errors stop `foldwise check` with exit code 2 "
              "before anything runs).", "", f"## Warnings ({len(warnings)})", ""]
    if warnings:
        lines += ["| check | column | what |", "|---|---|---|"]
        lines += [f"| {w.code} | {_md(w.column or '')} | {_md(w.message)} |" for w in warnings]
    else:
        lines += ["None."]
    lines.append("")
    if adversarial is not None:
        lo, hi = adversarial.ci
        lines += [
            "## Adversarial validation", "",
            f"A LightGBM classifier tried to tell {c['other_label']} rows from {c['train_label']} rows "
            f"({len(adversarial.fold_aucs)} stratified folds, one task each on the Ray executor).", "",
            f"- **AUC {adversarial.auc:.3f}**, 95% interval [{lo:.3f}, {hi:.3f}] "
            f"({adversarial.method}); pooled out-of-fold AUC {adversarial.oof_auc:.3f}.",
            f"- Fold AUCs: {', '.join(f'{a:.3f}' for a in adversarial.fold_aucs)}.",
            f"- Verdict: **{VERDICT_TEXT[adversarial.verdict]}**. ~0.5 means the two sides are exchangeable; "
            "above ~0.7 a model's CV score may not carry over.", "",
            "Features the classifier relies on most (share of total split gain; meaningful only when the AUC is "
            "clearly above 0.5):", "",
            "| feature | gain share | PSI | p-value |", "|---|---:|---:|---:|",
        ]
        by_name = {d.feature: d for d in drift}
        for name, share in list(adversarial.importance.items())[:TOP_FEATURES]:
            d = by_name.get(name)
            lines.append(f"| {_md(name)} | {share:.3f} | {d.psi:.3f} | {_p_short(d)} |" if d else
                         f"| {_md(name)} | {share:.3f} | | |")
        lines.append("")
    if drift:
        lines += [
            "## Per-feature drift", "",
            f"PSI over {c['train_label']}'s deciles (categoricals: levels; missing values are a bin of their own): "
            f"< {PSI_MODERATE} stable, {PSI_MODERATE}-{PSI_MAJOR} moderate, > {PSI_MAJOR} major. p-value: two-sample "
            "Kolmogorov-Smirnov (numeric) or chi-square (categorical); with many rows small, harmless shifts are "
            "significant, so read it with the PSI.", "",
            "![distributions of the most drifted features](drift.png)", "",
            "| feature | kind | PSI | drift | KS p | chi² p | missing (" + c["train_label"] + ") | missing (" + c["other_label"] + ") |",
            "|---|---|---:|---|---:|---:|---:|---:|",
        ]
        for d in drift:
            lines.append(f"| {_md(d.feature)} | {d.kind} | {d.psi:.4f} | {d.level} | {_fmt_p(d.ks_pvalue)} | "
                         f"{_fmt_p(d.chi2_pvalue)} | {d.missing_train:.1%} | {d.missing_test:.1%} |")
        lines.append("")
    if summary.get("target_drift"):
        t = summary["target_drift"]
        lines += ["## Target drift", "", f"`{_md(t['feature'])}` between the reference and the new data: PSI "
                  f"{t['psi']:.4f} ({t['level']}), p-value {_fmt_p(t['ks_pvalue'] if t['kind'] == 'numeric' else t['chi2_pvalue'])}.", ""]
    return "\n".join(lines)


def _plot(drift: tuple[FeatureDrift, ...], path: Path, compared: dict[str, Any]) -> None:
    """Train vs other distributions of the most drifted features (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    top = drift[:PLOT_FEATURES]
    cols = min(3, len(top))
    rows = math.ceil(len(top) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.4 * rows), squeeze=False)
    a_label, b_label = compared["train_label"], compared["other_label"]
    for ax, d in zip(axes.flat, top):
        h = d.hist
        if h.kind == "numeric":
            edges = np.asarray(h.edges)
            ax.stairs(h.train, edges, fill=True, alpha=0.45, color="tab:blue", label=a_label)
            ax.stairs(h.test, edges, fill=True, alpha=0.45, color="tab:orange", label=b_label)
            ax.set_ylabel("share of rows")
        else:
            x = np.arange(len(h.levels))
            ax.bar(x - 0.2, h.train, 0.4, color="tab:blue", alpha=0.7, label=a_label)
            ax.bar(x + 0.2, h.test, 0.4, color="tab:orange", alpha=0.7, label=b_label)
            ax.set_xticks(x, [lv[:12] for lv in h.levels], rotation=45, ha="right", fontsize=8)
            ax.set_ylabel("share of rows")
        missing = (f"; missing {d.missing_train:.1%} vs {d.missing_test:.1%}"
                   if max(d.missing_train, d.missing_test) > 0 else "")
        ax.set_title(f"{d.feature[:40]}\nPSI {d.psi:.3f}, {_p_text(d)}{missing}", fontsize=9)
        ax.legend(fontsize=7, title="non-missing rows", title_fontsize=7)
    for ax in list(axes.flat)[len(top):]:
        ax.set_visible(False)
    fig.suptitle(f"{a_label} vs {b_label}: the {len(top)} most drifted features (by PSI)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _drift_csv(drift: tuple[FeatureDrift, ...], path: Path) -> None:
    import pandas as pd

    pd.DataFrame([_drift_row(d) for d in drift]).to_csv(path, index=False)


def _p_text(d: FeatureDrift) -> str:
    return f"{'KS' if d.kind == 'numeric' else 'chi²'} p {_fmt_p(d.pvalue)}"


def _p_short(d: FeatureDrift) -> str:
    return f"{_fmt_p(d.pvalue)} ({'KS' if d.kind == 'numeric' else 'chi²'})"


def _fmt_p(p: float | None) -> str:
    if p is None:
        return ""
    if p == 0:
        return "<1e-300"
    return f"{p:.3g}"


def _md(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


