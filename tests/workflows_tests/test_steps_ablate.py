"""Steps are features to ablate: dropping a step is dropping the columns it (and what depends on it) made."""

from __future__ import annotations

from pathlib import Path

import pytest

from foldwise.workflows.errors import InputError

EXAMPLE = Path(__file__).resolve().parents[2] / "workflows" / "examples" / "breast_cancer_steps.yaml"
SHAPE_COLUMNS = ["roundness", "perimeter_ratio", "roundness_x_texture"]  # shape's columns and its descendant texture's


def test_ablating_a_step_equals_dropping_its_columns_as_a_group(ray_cluster, tmp_path: Path) -> None:
    from foldwise.workflows.commands.ablate import run_ablation

    result = run_ablation(EXAMPLE, steps=["shape"], models=["logreg"], n_boot=200, repeats=1,
                          overrides=["cv.folds=3", "features.groups={shape_cols: [roundness, perimeter_ratio, "
                                     "roundness_x_texture]}"],
                          out=tmp_path / "out", tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
                          cache_root=str(tmp_path / "cache"))
    variants = {v["dropped"]: v for v in result.summary["variants"]}
    assert set(variants) == {"shape_cols", "step:shape"}
    group, step = variants["shape_cols"], variants["step:shape"]
    assert sorted(step["columns"]) == sorted(SHAPE_COLUMNS) == sorted(group["columns"])
    assert step["fold_scores"] == group["fold_scores"] and step["cv_score"] == group["cv_score"]
    assert step["delta"] == pytest.approx(group["delta"]) and step["verdict"] == group["verdict"]


def test_unknown_step_to_ablate_is_bad_input(tmp_path: Path) -> None:
    from foldwise.workflows.commands.ablate import run_ablation

    with pytest.raises(InputError, match=r"--steps: unknown step 'shap' \(steps: shape, worst_over_mean, texture, or all\)"):
        run_ablation(EXAMPLE, steps=["shap"], executor="local", out=tmp_path / "out",
                     tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", cache_root=str(tmp_path / "cache"))
    assert not (tmp_path / "out").exists() and not (tmp_path / "mlflow.db").exists()
    assert not (tmp_path / "cache").exists(), "no step ran"
