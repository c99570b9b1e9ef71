"""Kinder errors: metric aliases, and "did you mean" for a misspelled model parameter."""

from __future__ import annotations

import pytest

from foldwise.tasks.metrics import METRIC_ALIASES, METRIC_NAMES, metric_suggestions


def test_every_alias_names_a_real_scorer_and_shadows_none() -> None:
    for alias, scorer in METRIC_ALIASES.items():
        assert scorer in METRIC_NAMES
        assert alias not in METRIC_NAMES or alias == scorer


def test_metric_suggestions_are_close_names() -> None:
    assert metric_suggestions("roc_aucc")[0] == "roc_auc"
    assert metric_suggestions("zzzz") == []


def test_lightgbm_suggests_the_parameter_meant() -> None:
    from foldwise.tasks.models.lightgbm_model import check_params

    assert "; did you mean num_leaves" in check_params({"num_leave": 31})
    assert check_params({"num_leaves": 31}) is None


@pytest.mark.parametrize(("module", "args", "bad", "good"), [
    ("foldwise.tasks.models.sklearn_model", ("sklearn.linear_model.LogisticRegression",), "max_iters", "max_iter"),
    ("foldwise.tasks.models.mlp_params", (), "dropuot", "dropout"),
    ("foldwise.tasks.models.image_params", (), "epoch", "epochs"),
])
def test_other_adapters_suggest_too(module: str, args: tuple, bad: str, good: str) -> None:
    import importlib

    check_params = importlib.import_module(module).check_params
    assert f"did you mean {good}?" in check_params(*args, {bad: 1})
