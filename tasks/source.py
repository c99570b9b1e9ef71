"""Which code a result comes from, and fresh imports of a user's edited modules.

The driver keys every fold by the source of the user's own modules (see
workflows/provenance.py). The process that fits the fold must then run that very source:
a Ray worker (or a notebook's kernel, with `--executor local`) lives across runs, and Python
imports a module once per process, so after an edit between two runs a reused worker would
compute the new key's result with the old code, and the cache would keep it under the new
key. `import_fresh` imports a user's module anew whenever its source changed since this
process imported it.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
from functools import cache
from importlib import metadata
from pathlib import Path
from types import ModuleType


@cache
def library_versions(names: tuple[str, ...]) -> tuple[str, ...]:
    """'name==version' for each installed distribution, 'name absent' for the others."""
    out = []
    for name in names:
        try:
            out.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            out.append(f"{name} absent")
    return tuple(out)


@cache
def installed_version(top_level: str) -> str | None:
    """'name version' of an installed top-level package (sklearn, xgboost...): its __version__, else
    the version of the distribution that installs it; None for a user's own module (no version)."""
    version = getattr(importlib.import_module(top_level), "__version__", None)
    if isinstance(version, str):
        return f"{top_level} {version}"
    dists = metadata.packages_distributions().get(top_level)  # slow (reads every installed package's metadata)
    return " ".join(library_versions(tuple(sorted(dists)))) if dists else None


@cache
def _installed_roots() -> tuple[Path, ...]:
    import sysconfig

    paths = sysconfig.get_paths()
    return tuple(Path(p).resolve() for key in ("purelib", "platlib", "stdlib", "platstdlib") if (p := paths.get(key)))


def user_code(top_level: str) -> bool:
    """A user's own module or package (edited between runs), not installed code: neither foldwise
    itself (its own code is versioned by the tasks it runs) nor anything under site-packages or
    the standard library, whose versions key results instead. Scanning those as a user's folder
    would hash (and, after an edit, forget) tens of thousands of files: foldwise's source tree
    holds a virtual environment in development and in CI."""
    if top_level == "foldwise":
        return False
    try:
        spec = importlib.util.find_spec(top_level)
    except (ImportError, ValueError):
        return False
    if spec is None or spec.origin in ("built-in", "frozen"):
        return False
    places = list(spec.submodule_search_locations or []) or ([spec.origin] if spec.origin else [])
    for place in places:
        resolved = Path(place).resolve()
        if "site-packages" in resolved.parts or any(resolved.is_relative_to(r) for r in _installed_roots()):
            return False
    return bool(places)


def source_files(top_level: str) -> list[tuple[Path, Path]]:
    """(folder, file) of every .py file of a user's top-level package, recursively, or of the folder
    holding a top-level module (its siblings are what it imports as helpers). Found without
    importing it. Empty for installed code (see `user_code`)."""
    if not user_code(top_level):
        return []
    spec = importlib.util.find_spec(top_level)
    if spec is None:
        return []
    if spec.submodule_search_locations:  # a package: every file under its folder(s)
        folders = [Path(f) for f in spec.submodule_search_locations]
        return [(folder, p) for folder in folders for p in sorted(folder.rglob("*.py"))]
    if spec.origin and Path(spec.origin).is_file():
        folder = Path(spec.origin).parent
        return [(folder, p) for p in sorted(folder.glob("*.py"))]
    return []  # built in: nothing to edit


def source_hash(top_level: str, files: list[tuple[Path, Path]] | None = None) -> str:
    """Hash of those files' names and bytes. Never cached: a notebook's edits between runs count."""
    h = hashlib.sha256(top_level.encode())
    if files is None and not user_code(top_level):  # installed: its version says what it computes
        try:
            h.update(str(installed_version(top_level) if top_level != "foldwise" else "foldwise").encode())
        except ImportError:
            h.update(b"absent")
        return h.hexdigest()[:12]
    for folder, path in source_files(top_level) if files is None else files:
        h.update(path.relative_to(folder).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:12]


_imported: dict[str, str] = {}  # top-level name -> source hash when this process imported it


def import_fresh(module_name: str) -> ModuleType:
    """importlib.import_module, except that a user's module whose source changed since this
    process imported it is imported anew, with every module from those files (the helpers it
    imports), so this process runs the source the driver hashed into the fold's key.

    A module this process had imported before it first came through here counts as current.
    """
    top = module_name.split(".")[0]
    if not user_code(top):  # installed code is not edited between runs: nothing to re-import
        return importlib.import_module(module_name)
    files = source_files(top)
    now = source_hash(top, files)
    if _imported.get(top, now) != now:
        _forget(top, files)
    module = importlib.import_module(module_name)
    _imported[top] = now
    return module


def _forget(top_level: str, files: list[tuple[Path, Path]]) -> None:
    """Drop the package's modules (or, for a top-level module, the modules of its folder's files),
    and their bytecode caches: Python trusts a .pyc whose source has the same size and mtime
    second, which an edit made within a second of the last import can have."""
    paths = {p.resolve() for _, p in files}
    names = {p.name for p in paths}  # resolving every loaded module's file (thousands with Ray and MLflow) took ~1 s
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None)
        if name == top_level or name.startswith(top_level + ".") or (
                file and os.path.basename(file) in names and Path(file).resolve() in paths):
            del sys.modules[name]
    for path in paths:
        try:
            Path(importlib.util.cache_from_source(str(path))).unlink(missing_ok=True)
        except (OSError, ValueError, NotImplementedError):
            pass  # a read-only folder: its .pyc, if any, is Python's to check
    importlib.invalidate_caches()
