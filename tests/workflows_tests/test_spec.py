"""Spec loading: frozen, unknown keys refused, overrides typed, errors name the key path."""

from __future__ import annotations

from pathlib import Path

import pydantic
import pytest
import yaml

from foldwise.workflows.errors import SpecError
from foldwise.workflows.pipeline.spec import load_spec

EXAMPLES = Path(__file__).resolve().parents[2] / "workflows" / "examples"


def minimal(**extra) -> dict:
    spec = {"name": "t", "data": {"train": "sklearn:iris"},
            "models": [{"name": "lr", "type": "sklearn", "estimator": "sklearn.linear_model.LogisticRegression"}]}
    spec.update(extra)
    return spec


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_examples_load(path: Path) -> None:
    spec = load_spec(path)
    assert spec.models


def test_frozen() -> None:
    spec = load_spec(minimal())
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        spec.name = "other"  # type: ignore[misc]


def test_overrides_are_yaml_typed_and_reach_lists() -> None:
    spec = load_spec(minimal(), ["cv.folds=7", "models.0.params.C=0.25", "models.0.params.penalty=l2",
                                 "cv.seed=3", "ensemble.method=rank_mean"])
    assert spec.cv.folds == 7 and spec.cv.seed == 3
    assert spec.models[0].params == {"C": 0.25, "penalty": "l2"}
    assert spec.ensemble.method == "rank_mean"


@pytest.mark.parametrize(("raw", "overrides", "needle"), [
    (minimal(modles=[]), [], "'modles' is not allowed (valid keys here: name, data"),
    (minimal(), ["models.0.paramz.C=1"], "'models.0.paramz' is not allowed (valid keys here: name, type, estimator"),
    (minimal(), ["cv.scheme=strat"], "'cv.scheme'"),
    (minimal(), ["cv.folds=1"], "must be at least 2"),
    (minimal(), ["models.0.type=xgb"], "unknown model type 'xgb' (valid: sklearn, lightgbm, xgboost, catboost, torch_mlp"),
    (minimal(), ["models.0.estimator=sklearn.linear_model.Nope"], "has no 'Nope'"),
    (minimal(), ["models.0.estimator=nopkg.Model"], "module 'nopkg' cannot be imported"),
    (minimal(), ["metric=aucc"], "unknown metric 'aucc'"),
    (minimal(), ["models.0.preprocess=[scaler]"], "unknown preprocess step 'scaler'"),
    (minimal(), ["cv.scheme=group"], "needs data.groups"),
    (minimal(), ["models.5.name=x"], "needs a list index below 1"),
    (minimal(), ["cv.folds"], "expected key.path=value"),
    (minimal(models=[{"name": "a", "type": "lightgbm"}, {"name": "a", "type": "lightgbm"}]), [], "duplicate model name(s) a"),
    (minimal(), ["models.0.type=mypkg.adapters:Model"], "cannot import model adapter"),
])
def test_errors_name_the_key(raw: dict, overrides: list[str], needle: str) -> None:
    with pytest.raises(SpecError) as err:
        load_spec(raw, overrides)
    assert needle in str(err.value)
    assert "\n" not in str(err.value)


def test_malformed_yaml_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\ndata: [unclosed\n")
    with pytest.raises(SpecError, match=r"not valid YAML at line \d+"):
        load_spec(path)


def test_relative_data_paths_follow_the_spec_file(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(minimal(data={"train": "data/train.csv", "test": "data/test.csv"})))
    spec = load_spec(path)
    assert spec.data.train == str(tmp_path / "data" / "train.csv")
    assert spec.data.test == str(tmp_path / "data" / "test.csv")


@pytest.mark.parametrize(("alias", "scorer"), [("rmse", "neg_root_mean_squared_error"), ("mae", "neg_mean_absolute_error"),
                                               ("auc", "roc_auc"), ("logloss", "neg_log_loss"), ("acc", "accuracy"),
                                               ("mse", "neg_mean_squared_error"), ("r2", "r2")])
def test_common_metric_aliases_become_sklearn_scorers_with_a_note(alias: str, scorer: str, capsys) -> None:
    assert load_spec(minimal(metric=alias)).metric == scorer
    err = capsys.readouterr().err
    if alias == scorer:
        assert err == ""
    else:
        assert err.count("\n") == 1 and f"metric {alias!r} is sklearn's scorer {scorer!r}" in err


@pytest.mark.parametrize(("metric", "suggestion"), [("roc_aucc", "roc_auc"), ("acuracy", "accuracy"),
                                                    ("neg_log_los", "neg_log_loss")])
def test_a_misspelled_metric_gets_a_did_you_mean(metric: str, suggestion: str) -> None:
    with pytest.raises(SpecError, match=f"unknown metric '{metric}'; did you mean {suggestion}"):
        load_spec(minimal(metric=metric))


def test_checks_ignore_refuses_unknown_codes_naming_the_valid_ones() -> None:
    assert load_spec(minimal(checks={"ignore": ["id_tracks_target", "leak"]})).checks.ignore == ["id_tracks_target", "leak"]
    with pytest.raises(SpecError, match=r"spec key 'checks.ignore': unknown warning code\(s\) id_track \(valid: .*id_tracks_target"):
        load_spec(minimal(checks={"ignore": ["id_track"]}))


def test_submission_kind_and_positive_class_are_spec_keys() -> None:
    spec = load_spec(minimal(submission={"kind": "label"}), ["data.positive_class=no"])
    assert spec.submission.kind == "label" and spec.data.positive_class is False  # YAML's `no`; matched to 'no' later
    assert load_spec(minimal()).submission.kind == "proba"
    with pytest.raises(SpecError, match="'submission.kind'"):
        load_spec(minimal(submission={"kind": "labels"}))
