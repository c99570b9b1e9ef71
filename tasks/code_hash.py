"""The source a user's function depends on: its module and the helper modules it imports.

A frame step is keyed by this, not by its whole package, so editing one step's module
recomputes that step (and what depends on it) but not a sibling step in the same package.
Helpers are found by reading the import statements (no import runs): modules of the same
top-level package, or, for a top-level module, the .py files beside it that it imports.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
from pathlib import Path


def _origin(module_name: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(module_name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return None
    return Path(spec.origin)


def _imported_names(path: Path, module_name: str) -> set[str]:
    """Every module name an import statement of `path` may refer to (absolute, relative resolved)."""
    try:
        tree = ast.parse(path.read_bytes())
    except (SyntaxError, ValueError):
        return set()
    is_package = path.name == "__init__.py"
    package = module_name if is_package else module_name.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".") if package else []
                base_parts = parts[: len(parts) - (node.level - 1)] if node.level > 1 else parts
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if base:
                names.add(base)
                names |= {f"{base}.{a.name}" for a in node.names}
    return names


def module_closure(module_name: str) -> list[tuple[str, Path]]:
    """(module name, file) of the module and, transitively, the user modules it imports."""
    top = module_name.split(".")[0]
    root = _origin(module_name)
    if root is None:
        return []
    folder = root.parent
    seen: dict[str, Path] = {}
    todo = [module_name]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        path = _origin(name)
        if path is None:
            continue
        same_package = name.split(".")[0] == top and "." in module_name
        beside = "." not in module_name and "." not in name and path.parent == folder
        if name != module_name and not (same_package or beside):
            continue
        seen[name] = path
        todo += sorted(_imported_names(path, name))
    return sorted(seen.items())


def module_source_hash(module_name: str) -> str:
    """Hash of the names and bytes of `module_closure(module_name)`: what a function's result depends on."""
    h = hashlib.sha256(module_name.encode())
    for name, path in module_closure(module_name):
        h.update(name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:12]


def project_sources(module_name: str) -> list[Path]:
    """What to ship with a model so `module_name` imports where it was not installed: its top-level
    package's folder, or a top-level module's file and the files beside it that it imports. Empty
    for installed code (site-packages, the standard library, foldwise itself): the model's
    requirements bring that."""
    import sysconfig

    top = module_name.split(".")[0]
    if top == "foldwise":
        return []
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return []
    if spec is None:
        return []
    installed = {Path(p).resolve() for key in ("purelib", "platlib", "stdlib", "platstdlib")
                 if (p := sysconfig.get_paths().get(key))}

    def user_code(path: Path) -> bool:
        resolved = path.resolve()
        return not any(resolved.is_relative_to(root) for root in installed) and "site-packages" not in resolved.parts

    if spec.submodule_search_locations:  # a package: its folder(s)
        return [Path(f) for f in spec.submodule_search_locations if user_code(Path(f))]
    files = [path for _, path in module_closure(module_name)]
    return [f for f in files if user_code(f)]
