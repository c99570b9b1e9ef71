"""Frame steps and fold steps as plain functions: no Ray, no MLflow."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from foldwise.tasks.code_hash import module_source_hash
from foldwise.tasks.fold_steps import FoldStepError, fit_fold_steps, parse_fold_step, split_preprocess
from foldwise.tasks.steps import (
    FrameStepConfig,
    ancestors,
    apply_frame_steps,
    descendants,
    fn_problem,
    graph_problem,
    run_frame_step,
)


def _step(name: str, fn: str = "m:f", inputs: tuple[str, ...] = ("raw",)) -> FrameStepConfig:
    return FrameStepConfig(name=name, fn=fn, inputs=inputs)


def test_graph_problems_name_the_step_and_what_is_valid() -> None:
    assert graph_problem([_step("a"), _step("b", inputs=("a",))]) is None
    assert "duplicate step name(s) a" in graph_problem([_step("a"), _step("a")])
    assert "unknown input(s) zz (valid: raw, a)" in graph_problem([_step("a"), _step("b", inputs=("zz",))])
    assert "cycle: a -> b -> a" in graph_problem([_step("a", inputs=("b",)), _step("b", inputs=("a",))])
    assert "'raw'" in graph_problem([_step("raw")])


def test_ancestors_and_descendants_follow_the_inputs() -> None:
    steps = [_step("c", inputs=("b",)), _step("a"), _step("b", inputs=("a", "raw")), _step("d")]
    assert ancestors(steps)["c"] == ("a", "b")
    assert ancestors(steps)["d"] == ()
    assert set(descendants(steps, "a")) == {"b", "c"} and descendants(steps, "d") == ()


@pytest.fixture
def user_steps(tmp_path, monkeypatch):
    pkg = tmp_path / f"stepsu_{tmp_path.name.replace('-', '_')}"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "helpers.py").write_text("K = 2\n")
    (pkg / "ratios.py").write_text(
        "from .helpers import K\n"
        "def ratio(df, *, eps=1e-6):\n    return df.assign(r=df['a'] / (df['b'] + eps) * K)\n"
        "def fewer(df):\n    return df.iloc[1:]\n"
        "def no_id(df):\n    return df.drop(columns=['id'])\n"
        "def new_id(df):\n    return df.assign(id=df['id'] + 1)\n"
        "def leak(df):\n    return df.assign(TARGET=0)\n"
        "def count(df):\n    return df.assign(n=df.groupby('c')['c'].transform('size'))\n"
        "def shuffled(df):\n    return df.assign(z=df['a'] * 2).sample(frac=1.0, random_state=0)\n")
    (pkg / "other.py").write_text("def f(df):\n    return df\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield pkg.name, pkg
    import sys

    for m in [m for m in sys.modules if m.startswith(pkg.name)]:
        del sys.modules[m]


def _frames() -> tuple[pd.DataFrame, pd.DataFrame]:
    train = pd.DataFrame({"id": [1, 2, 3, 4], "a": [1.0, 2, 3, 4], "b": [1.0, 1, 2, 2], "c": list("xxyz"),
                          "target": [0, 1, 0, 1]})
    test = pd.DataFrame({"id": [5, 6], "a": [5.0, 6], "b": [1.0, 1], "c": list("xx")})
    return train, test


def test_fn_problem_names_unknown_functions_and_params(user_steps) -> None:
    name, _ = user_steps
    assert fn_problem(f"{name}.ratios:ratio", {"eps": 1.0}) is None
    assert "has no 'nope'" in fn_problem(f"{name}.ratios:nope", {})
    assert "cannot be imported" in fn_problem(f"{name}.missing:f", {})
    assert "does not accept params ['zz']" in fn_problem(f"{name}.ratios:ratio", {"zz": 1})
    assert "not a function path" in fn_problem("no_colon", {})


def test_a_step_result_is_its_delta_and_together_counts_over_all_rows(user_steps) -> None:
    name, _ = user_steps
    train, test = _frames()
    feats, feats_test = train.drop(columns="target"), test
    out = run_frame_step(FrameStepConfig("r", f"{name}.ratios:ratio"), feats, feats_test, "id", "target")
    assert out.problem is None and out.columns == ("r",) and out.removed == ()
    assert out.test["r"].tolist() == pytest.approx([10.0, 12.0], rel=1e-4)
    assert out.train["r"].tolist() == pytest.approx([2.0, 4.0, 3.0, 4.0], rel=1e-4)
    together = run_frame_step(FrameStepConfig("n", f"{name}.ratios:count"), feats, feats_test, "id", "target")
    apart = run_frame_step(FrameStepConfig("n", f"{name}.ratios:count", mode="apart"), feats, feats_test, "id", "target")
    assert together.train["n"].tolist() == [4, 4, 1, 1], "x counted over train and test rows"
    assert apart.train["n"].tolist() == [2, 2, 1, 1]
    shuffled = run_frame_step(FrameStepConfig("s", f"{name}.ratios:shuffled"), feats, feats_test, "id", "target")
    assert shuffled.train["z"].tolist() == [2.0, 4.0, 6.0, 8.0], "rows put back in their order by index"


@pytest.mark.parametrize(("fn", "says"), [("fewer", "returned 5 rows for 6"), ("no_id", "dropped the id column 'id'"),
                                          ("new_id", "changed the id column 'id'"),
                                          ("leak", "named like the target 'target'")])
def test_a_step_result_that_breaks_a_rule_is_refused(user_steps, fn, says) -> None:
    name, _ = user_steps
    train, test = _frames()
    out = run_frame_step(FrameStepConfig("bad", f"{name}.ratios:{fn}"), train.drop(columns="target"), test, "id", "target")
    assert out.problem is not None and says in out.problem and "'bad'" in out.problem


def test_replayed_steps_give_the_stepped_frames(user_steps) -> None:
    name, _ = user_steps
    train, test = _frames()
    steps = [FrameStepConfig("r", f"{name}.ratios:ratio"), FrameStepConfig("n", f"{name}.ratios:count", inputs=("r",))]
    t, s = apply_frame_steps(steps, train, test, "id", "target")
    assert list(t.columns) == ["id", "a", "b", "c", "r", "n", "target"] and t["target"].tolist() == [0, 1, 0, 1]
    assert list(s.columns) == ["id", "a", "b", "c", "r", "n"]


def test_a_step_is_keyed_by_its_module_and_helpers_not_its_whole_package(user_steps) -> None:
    name, pkg = user_steps
    ratios, other = module_source_hash(f"{name}.ratios"), module_source_hash(f"{name}.other")
    (pkg / "helpers.py").write_text("K = 3\n")
    assert module_source_hash(f"{name}.ratios") != ratios, "a helper it imports is part of its code"
    assert module_source_hash(f"{name}.other") == other, "a sibling module that imports nothing else is unchanged"


def test_fold_steps_parse_and_refuse_unknown_names() -> None:
    numeric, steps = split_preprocess(["standard_scaler", "target_encoding", {"step": "pca", "params": {"n_components": 2}},
                                       {"transformer": "sklearn.preprocessing.PolynomialFeatures", "columns": ["a"]}])
    assert numeric == ("standard_scaler",) and [s.kind for s in steps] == ["target_encoding", "pca", "transformer"]
    with pytest.raises(FoldStepError, match="unknown preprocess step 'target_encodin'"):
        parse_fold_step("target_encodin")
    with pytest.raises(FoldStepError, match="unknown key"):
        parse_fold_step({"step": "pca", "colums": ["a"]})
    with pytest.raises(FoldStepError, match="TypeError"):
        parse_fold_step({"step": "pca", "params": {"n_componets": 2}})


def test_count_and_frequency_encoders_learn_from_the_training_rows_only() -> None:
    X = pd.DataFrame({"c": pd.Categorical(list("aab") + ["c"]), "v": [1.0, 2, 3, 4]})
    steps = [parse_fold_step("count_encoding"), parse_fold_step("frequency_encoding")]
    fitted, out = fit_fold_steps(steps, X.iloc[:3], np.array([0, 1, 0]), "binary", 0)
    assert out["c_count"].tolist() == [2, 2, 1] and out["c_freq"].tolist() == pytest.approx([2 / 3, 2 / 3, 1 / 3])
    held_out = fitted.transform(X.iloc[3:])
    assert held_out["c_count"].tolist() == [0], "a level unseen in the training rows counts 0"
