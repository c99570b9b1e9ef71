"""An ablation's outputs: the report, chart, summary.json, and a child run per variant in MLflow."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from foldwise.infra import storage
from foldwise.tasks.ablation import (
    IMPORTANCE_MEASURE,
    INTERVAL_METHOD,
    AblationReport,
    GroupOutcome,
    ablation_markdown,
    fit_time_share,
    plot_deltas,
    ranked,
    removal_candidates,
)
from foldwise.tasks.report import write_json
from foldwise.tasks.train import FoldResult
from foldwise.workflows.commands.ablate.nodes import AblationDag
from foldwise.workflows.commands.ablate.plan import BASELINE, AblationPlan, Variant, node_name
from foldwise.workflows.pipeline.runs import RunContext
from foldwise.workflows.pipeline.spec import to_yaml
from foldwise.workflows.tracking import tracker as tk


@dataclass(frozen=True)
class AblationResult:
    """What `foldwise ablate` produces: the summary.json data, where it went, and the report text."""

    summary: dict[str, Any]
    out_dir: Path | str  # a URI when the outputs go to one
    report: str

    @property
    def run_id(self) -> str:
        return self.summary["run_id"]


def finish(ctx: RunContext, ablation: AblationPlan, dag: AblationDag, nodes_run: dict[str, int]) -> AblationResult:
    """The report, chart, summary.json and MLflow logs of a finished ablation; the runs end FINISHED."""
    tick = time.perf_counter()
    spec, inputs, base, variants = ctx.spec, ctx.plan.inputs, list(ctx.plan.models), list(ablation.variants)
    n_boot, repeats = ablation.n_boot, ablation.repeats
    tracker, parent = ctx.tracker, ctx.parent
    data, plan = dag.data, dag.plan
    target = ctx.out_target()
    out_dir = storage.staging_folder(target)  # `target` itself, or a local folder uploaded to it at the end
    model_names = [m.name for m in base]
    ens_names = spec.ensemble.models or model_names
    headline = (f"the {spec.ensemble.method} ensemble of {', '.join(ens_names)}" if len(ens_names) > 1
                else f"model {ens_names[0]}")
    by_name = {m.name: m for m in base}

    def fits(v: Variant) -> list[FoldResult]:
        return [r for m in base for r in dag.folds[node_name(v, m)]]

    def fold_fit_seconds(v: Variant) -> dict[str, list[float]]:
        return {m.name: [r.fit_seconds for r in dag.folds[node_name(v, m)]] for m in base}

    base_fit = sum(r.fit_seconds for r in fits(variants[0]))
    outcomes = []
    for v in variants[1:]:
        outcomes.append(GroupOutcome(
            group=v.name, columns=v.columns, cv_score=float(np.mean(dag.headline[v.name][1])),
            stats=dag.stats[v.name][None], model_stats={m: dag.stats[v.name][m] for m in model_names},
            fit_seconds=sum(r.fit_seconds for r in fits(v)),
            fit_time_share=fit_time_share(fold_fit_seconds(variants[0]), fold_fit_seconds(v)),
            fit_seconds_saved=base_fit - sum(r.fit_seconds for r in fits(v)),
            importance={m: (imp[v.name] if (imp := dag.importance.get(m)) is not None else None)
                        for m in model_names}))
    base_scores = dag.headline[BASELINE][1]
    folds_text = (f"{plan.n_folds} {plan.scheme} folds (seed {plan.seed}, folds hash {plan.hash}, the same plan "
                  "as `foldwise run`)")
    notes = []
    unkept = [m for m, imp in dag.importance.items() if imp is None]
    if unkept:
        notes.append(f"No permutation importance for {', '.join(unkept)}: its adapter cannot be pickled, so no fitted "
                     "fold model was kept (and refitting is what ablation already does).")
    overlap = overlaps(variants[1:])
    if overlap:
        notes.append(f"Groups share columns ({overlap}); each variant drops its whole group.")
    report = AblationReport(
        title=spec.name, metric=inputs.metric, headline=headline, baseline_score=float(np.mean(base_scores)),
        baseline_fold_scores=tuple(base_scores), n_features=len(data.columns), folds=folds_text,
        outcomes=tuple(outcomes), models=tuple(model_names), n_boot=n_boot, repeats=repeats, notes=tuple(notes))
    outputs = {"report": out_dir / "ablation.md", "chart": out_dir / "ablation.png", "summary": out_dir / "summary.json"}
    plot_deltas(report, outputs["chart"])
    text = ablation_markdown(report, chart=outputs["chart"].name)
    outputs["report"].write_text(text)
    (out_dir / "spec.yaml").write_text(to_yaml(spec))

    def model_block(v: Variant, m: str) -> dict[str, Any]:
        rs = dag.folds[node_name(v, by_name[m])]
        block = {"cv_score": float(np.mean([r.score for r in rs])), "fold_scores": [r.score for r in rs],
                 "fit_seconds": [r.fit_seconds for r in rs], "cached": dag.cached[node_name(v, by_name[m])]}
        if v.dropped is not None:
            s = dag.stats[v.name][m]
            block |= {"delta": s.delta, "delta_ci": pair(s.ci), "verdict": s.verdict}
        return block

    summary: dict[str, Any] = {
        "command": "ablate",
        "experiment": spec.experiment,
        "run_id": parent,
        "tracking_uri": tracker.uri,
        "task": data.task,
        "metric": inputs.metric,
        "greater_is_better": True,
        "folds": {"scheme": plan.scheme, "n": plan.n_folds, "seed": plan.seed, "hash": plan.hash, "repeats": plan.repeats},
        "data_fingerprint": data.fingerprint,
        "models": model_names,
        "headline": headline,
        "interval_method": INTERVAL_METHOD,
        "bootstrap_resamples": n_boot,
        "baseline": {"cv_score": float(np.mean(base_scores)), "fold_scores": list(base_scores),
                     "fit_seconds": base_fit, "cached": all(c for m in model_names for c in dag.cached[m]),
                     "models": {m: model_block(variants[0], m) for m in model_names}},
        "variants": [],
        "removal_candidates": removal_candidates(outcomes),
        "permutation_importance": {
            "measure": IMPORTANCE_MEASURE, "repeats": repeats,
            "models": {m: ({g: {"mean": i.mean, "std": i.std} for g, i in imp.items()} if imp is not None else None)
                       for m, imp in dag.importance.items()}},
        "dag": {"nodes_run": dict(sorted(nodes_run.items())),
                "fits": {"total": sum(len(c) for c in dag.cached.values()),
                         "cached": sum(sum(c) for c in dag.cached.values())},
                "importance_task_seconds": dag.importance_task_seconds},
        "wall_seconds": 0.0,
        "startup_seconds": ctx.startup_seconds,
        "phase_seconds": {},
        "outputs": {k: storage.relocate(v, out_dir, target) for k, v in outputs.items()},
    }
    by_group = {v.name: v for v in variants}
    for o in ranked(outcomes):
        v = by_group[o.group]
        summary["variants"].append({
            "dropped": o.group, "columns": list(o.columns), "cv_score": o.cv_score,
            "fold_scores": list(dag.headline[o.group][1]), "fold_deltas": list(o.stats.fold_deltas),
            "delta": o.stats.delta, "delta_ci": pair(o.stats.ci), "delta_ci_t": pair(o.stats.ci_t),
            "p_corrected": None if np.isnan(o.stats.p_corrected) else o.stats.p_corrected,
            "verdict": o.stats.verdict, "fit_seconds": o.fit_seconds, "fit_seconds_saved": o.fit_seconds_saved,
            "fit_time_share": o.fit_time_share,
            "cached": all(c for m in model_names for c in dag.cached[node_name(v, by_name[m])]),
            "models": {m: model_block(v, m) for m in model_names},
            "permutation_importance": {m: ({"mean": i.mean, "std": i.std} if i is not None else None)
                                       for m, i in o.importance.items()},
        })
    log_variants(tracker, parent, ctx.runs.children, variants, summary, dag, plan, data)
    summary["phase_seconds"] = dict(ctx.phases) | {"outputs_and_tracking": time.perf_counter() - tick}
    summary["wall_seconds"] = time.perf_counter() - ctx.wall_start
    write_json(outputs["summary"], summary)
    tracker.log(parent, metrics={"wall_seconds": summary["wall_seconds"]})
    tracker.log_artifacts(parent, out_dir)
    storage.publish_folder(out_dir, target)
    return AblationResult(summary=summary, out_dir=out_dir if not storage.is_uri(target) else target, report=text)


def log_variants(tracker: tk.Tracker, parent: str, children: Mapping[str, str], variants: list[Variant],
         summary: dict[str, Any], dag: AblationDag, plan: Any, data: Any) -> None:
    """Per variant child: its headline fold scores, per-model scores and (variants) the delta and verdict."""
    provenance = {tk.TAG_FOLDS_HASH: plan.hash, tk.TAG_DATA: data.fingerprint}
    rows = {row["dropped"]: row for row in summary["variants"]}
    for v in variants:
        scores = dag.headline[v.name][1]
        block = summary["baseline"] if v.dropped is None else rows[v.name]
        metrics = {tk.M_CV_SCORE: float(np.mean(scores)),
                   tk.M_FIT_SECONDS: float(block["fit_seconds"])} | {
            f"{tk.M_CV_SCORE}.{m}": b["cv_score"] for m, b in block["models"].items()}
        tags = dict(provenance)
        params = {"ablation.n_columns_dropped": len(v.columns), "ablation.columns_dropped": ",".join(v.columns)}
        if v.dropped is not None:
            metrics |= {"delta": block["delta"], "fit_time_share": block["fit_time_share"],
                        "fit_seconds_saved": block["fit_seconds_saved"]}
            if block["delta_ci"] is not None:
                metrics |= {"delta_lo": block["delta_ci"][0], "delta_hi": block["delta_ci"][1]}
            tags[tk.TAG_ABLATION_VERDICT] = block["verdict"]
        tracker.log(children[v.name], params=params, metrics=metrics, tags=tags, steps={tk.M_FOLD_SCORE: scores})
        tracker.finish(children[v.name], ok=True)
    verdicts = Counter(row["verdict"] for row in summary["variants"])
    tracker.log(parent, metrics={tk.M_CV_SCORE: summary["baseline"]["cv_score"]}
                | {f"n_{verdict}": float(verdicts.get(verdict, 0)) for verdict in ("helps", "hurts", "neutral")},
                tags=provenance, steps={tk.M_FOLD_SCORE: summary["baseline"]["fold_scores"]})


def pair(ci: tuple[float, float] | None) -> list[float] | None:
    return None if ci is None else [ci[0], ci[1]]


def overlaps(variants: list[Variant]) -> str:
    seen: dict[str, str] = {}
    shared = []
    for v in variants:
        for c in v.columns:
            if c in seen and seen[c] != v.name:
                shared.append(f"`{c}` in {seen[c]} and {v.name}")
            seen.setdefault(c, v.name)
    return "; ".join(shared[:5]) + (" ..." if len(shared) > 5 else "")

