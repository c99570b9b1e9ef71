"""tasks.source: a long-lived process imports a user's module anew only when its source changed."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

from foldwise.tasks.models.sklearn_model import estimator_class
from foldwise.tasks.source import import_fresh, source_hash


@pytest.fixture
def package(tmp_path: Path, monkeypatch):
    """`<name>.model` imports `<name>.helpers`, on sys.path; removed from sys.modules afterwards."""
    name = f"srcpkg_{tmp_path.name.replace('-', '_')}"
    folder = tmp_path / name
    folder.mkdir()
    (folder / "__init__.py").write_text("")
    (folder / "helpers.py").write_text("K = 1\n")
    (folder / "model.py").write_text(f"from {name}.helpers import K\n\n\nclass Est:\n    k = K\n\n    def get_params(self):\n"
                                     "        return {}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sys, "dont_write_bytecode", False)  # as users run Python: imports write .pyc files
    importlib.invalidate_caches()
    yield name, folder
    for mod in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
        del sys.modules[mod]


def test_unchanged_source_keeps_the_module_and_an_edited_helper_is_imported_anew(package) -> None:
    name, folder = package
    first = import_fresh(f"{name}.model")
    assert first.K == 1 and import_fresh(f"{name}.model") is first, "nothing changed: no second import"
    (folder / "helpers.py").write_text("K = 2\n")  # same size, same second: the .pyc alone cannot tell
    second = import_fresh(f"{name}.model")
    assert second is not first and second.K == 2, "the adapter and the helper it imports are both fresh"
    assert sys.modules[f"{name}.helpers"].K == 2


def test_a_new_file_in_the_package_changes_its_hash(package) -> None:
    name, folder = package
    before = source_hash(name)
    (folder / "extra.py").write_text("X = 1\n")
    assert source_hash(name) != before


def test_a_top_level_module_is_fresh_with_the_files_beside_it(toplevel_module) -> None:
    name, folder = toplevel_module
    assert import_fresh(name).K == 1
    (folder / f"{name}_util.py").write_text("K = 333\n")
    assert import_fresh(name).K == 333, "the sibling helper was dropped and imported again"


def test_an_sklearn_estimator_from_a_users_module_is_the_edited_one(package) -> None:
    name, folder = package
    assert estimator_class(f"{name}.model.Est").k == 1
    (folder / "helpers.py").write_text("K = 4444\n")
    assert estimator_class(f"{name}.model.Est").k == 4444
    assert estimator_class("sklearn.linear_model.LogisticRegression").__module__.startswith("sklearn.")


def test_installed_code_and_foldwise_itself_are_never_scanned_nor_forgotten() -> None:
    """foldwise's source tree holds a virtual environment (in development and in CI): hashing a
    step from `foldwise.workflows.examples` as a user's package scanned ~20k files and, after any
    edit of the tree, dropped numpy and ray from sys.modules mid-session."""
    import numpy

    from foldwise.tasks.source import source_files, user_code

    for top in ("foldwise", "numpy", "sklearn", "os", "json"):
        assert not user_code(top) and source_files(top) == [], top
    assert source_hash("foldwise") == source_hash("foldwise") and source_hash("numpy") != source_hash("sklearn")
    module = import_fresh("foldwise.workflows.examples.demo_features")
    assert module is sys.modules["foldwise.workflows.examples.demo_features"] and sys.modules["numpy"] is numpy
    assert user_code("tests"), "this repository's own test helpers are a user's code"
