"""What an import path in a spec names, checked without running it: an estimator is a class with `fit`.

A spec is code: `estimator:`, `ensemble.meta` and `type: pkg.mod:Adapter` name importables that
foldwise imports. Importing runs the module (that is the trust a spec asks for), but nothing it
names is called to find out what it is, and whatever the import raises becomes one line (exit 2).
"""

from __future__ import annotations

import importlib


def estimator_class_of(path: str) -> type:
    """The class an estimator import path names; ValueError unless it imports and is a class with `fit`
    (never called here: a function named by mistake does not run during validation)."""
    module_name, _, attr = path.replace(":", ".").rpartition(".")
    if not module_name:
        raise ValueError(f"estimator {path!r} is not an import path like sklearn.linear_model.Ridge")
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        raise ValueError(f"estimator {path!r}: module {module_name!r} cannot be imported") from None
    except Exception as e:  # noqa: BLE001 - a user module may raise anything at import
        raise ValueError(f"estimator {path!r}: importing {module_name!r} raised {type(e).__name__}: "
                         f"{first_line(e)}") from None
    if not hasattr(module, attr):
        raise ValueError(f"estimator {path!r}: module {module_name!r} has no {attr!r}")
    obj = getattr(module, attr)
    if not isinstance(obj, type) or not callable(getattr(obj, "fit", None)):
        raise ValueError(f"estimator {path!r} is not an estimator class (one with fit, like "
                         "sklearn.linear_model.Ridge)")
    return obj


def first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else ""
