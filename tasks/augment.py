"""Augmentation pipelines from the spec: albumentations, validated when the spec is loaded.

A model's `augment.train` / `augment.valid` is either albumentations' own serialisation
(the dict `A.to_dict(pipeline)` returns, or just its `transform` part) or a compact list:

    augment:
      train:
        - HorizontalFlip: {p: 0.5}
        - Affine: {rotate: [-10, 10], p: 0.5}
        - OneOf: {p: 0.3, transforms: [Blur, {GaussNoise: {std_range: [0.05, 0.1]}}]}
      valid: []

Both become one canonical form (albumentations' dict) and are built the same way, so an
unknown transform, an argument the transform does not take, or a value it refuses is
reported once, at load, naming the transform. Albumentations only *warns* about an
unknown argument; here it is an error. `TTA_TRANSFORMS` are the exactly invertible,
label-preserving views that `tta:` may average over at predict time.
"""

from __future__ import annotations

import difflib
import inspect
import os
import warnings
from typing import Any

# albumentations asks PyPI for a newer version on import; foldwise makes no network calls at run time.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

TTA_TRANSFORMS: tuple[str, ...] = ("hflip", "vflip", "transpose", "rot90", "rot180", "rot270")
_ROTATING_TTA = ("transpose", "rot90", "rot270")  # need square images
_ABSTRACT = {"BasicTransform", "DualTransform", "ImageOnlyTransform", "Transform3D", "NoOp"}


class AugmentError(ValueError):
    """A pipeline in the spec that albumentations cannot build: one line naming the transform."""


def _albumentations():  # noqa: ANN202 - a module
    try:
        import albumentations as A  # noqa: N812
    except ImportError as e:
        raise AugmentError("augmentations need albumentations: pip install 'foldwise[images]'") from e
    return A


def _registry() -> dict[str, type]:
    from albumentations.core.composition import BaseCompose
    from albumentations.core.serialization import SERIALIZABLE_REGISTRY, register_additional_transforms
    from albumentations.core.transforms_interface import BasicTransform

    register_additional_transforms()
    return {name: cls for name, cls in SERIALIZABLE_REGISTRY.items()
            if name not in _ABSTRACT and isinstance(cls, type) and issubclass(cls, BasicTransform | BaseCompose)}


# --------------------------------------------------------------------------- spec form -> canonical form


def canonical(value: Any, where: str = "augment") -> dict[str, Any] | None:
    """The spec's pipeline (compact list, or albumentations' dict) as albumentations' `transform` dict.

    None and [] mean no augmentation (None is returned). Only the shape is checked here;
    `build` checks names and arguments.
    """
    if value is None or value == []:
        return None
    if isinstance(value, list):
        return {"__class_fullname__": "Compose", "p": 1.0, "transforms": _compact_list(value, where)}
    if isinstance(value, dict):
        node = value.get("transform", value) if "__class_fullname__" not in value else value
        if not isinstance(node, dict) or "__class_fullname__" not in node:
            raise AugmentError(f"{where}: expected a list of transforms (e.g. '- HorizontalFlip: {{p: 0.5}}') or "
                               "albumentations' serialised dict (with '__class_fullname__')")
        if node["__class_fullname__"] not in ("Compose", "albumentations.core.composition.Compose"):
            node = {"__class_fullname__": "Compose", "p": 1.0, "transforms": [node]}
        return _plain(node)
    raise AugmentError(f"{where}: expected a list of transforms or albumentations' serialised dict, "
                       f"got {type(value).__name__}")


def _compact_list(items: list, where: str) -> list[dict[str, Any]]:
    out = []
    for i, item in enumerate(items):
        here = f"{where}[{i}]"
        if isinstance(item, str):
            name, args = item, {}
        elif isinstance(item, dict) and "__class_fullname__" in item:
            out.append(_plain(item))
            continue
        elif isinstance(item, dict) and len(item) == 1:
            name, args = next(iter(item.items()))
            args = {} if args is None else args
            if not isinstance(args, dict):
                raise AugmentError(f"{here} {name}: arguments must be a mapping like {{p: 0.5}}, got {args!r}")
        else:
            raise AugmentError(f"{here}: each transform is a name or a one-key mapping like "
                               f"'HorizontalFlip: {{p: 0.5}}', got {item!r}")
        node = {"__class_fullname__": str(name), **args}
        if isinstance(args.get("transforms"), list):
            node["transforms"] = _compact_list(args["transforms"], f"{here} {name}.transforms")
        out.append(node)
    return out


def _plain(node: Any) -> Any:
    """Tuples -> lists, recursively, so the canonical form equals its own YAML/JSON round trip."""
    if isinstance(node, dict):
        return {k: _plain(v) for k, v in node.items()}
    if isinstance(node, list | tuple):
        return [_plain(v) for v in node]
    return node


# --------------------------------------------------------------------------- canonical form -> pipeline


def build(value: Any, seed: int | None = None, where: str = "augment") -> Any:
    """An `A.Compose` from the spec's pipeline (either form); raises AugmentError naming the transform."""
    A = _albumentations()  # noqa: N806
    node = canonical(value, where)
    if node is None:
        return A.Compose([], seed=seed)
    pipeline = _build_node(node, _registry(), where, top=True)
    pipeline.set_random_seed(seed)
    return pipeline


def _build_node(node: dict[str, Any], registry: dict[str, type], where: str, top: bool = False) -> Any:
    from albumentations.core.serialization import shorten_class_name

    raw_name = node.get("__class_fullname__")
    name = shorten_class_name(str(raw_name))
    cls = registry.get(name)
    if cls is None:
        close = difflib.get_close_matches(name, list(registry), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else " (see albumentations' list of transforms)"
        raise AugmentError(f"{where}: unknown albumentations transform {raw_name!r}{hint}")
    args = {k: v for k, v in node.items() if k != "__class_fullname__"}
    params = inspect.signature(cls).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    valid = [p for p in params if p not in ("self", "strict") and params[p].kind is not inspect.Parameter.VAR_KEYWORD]
    unknown = [k for k in args if k not in valid and not takes_any]
    if unknown:
        raise AugmentError(f"{where}: {name} has no argument {', '.join(map(repr, unknown))} "
                           f"(valid: {', '.join(valid)})")
    if "transforms" in args:
        if not isinstance(args["transforms"], list):
            raise AugmentError(f"{where}: {name}.transforms must be a list of transforms")
        args["transforms"] = [_build_node(t, registry, f"{where}[{i}]" if top else f"{where} {name}.transforms[{i}]")
                              for i, t in enumerate(args["transforms"])]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            transform = cls(**args)
        except (ValueError, TypeError) as e:
            raise AugmentError(f"{where}: {name}: {_first_problem(e)}") from None
    for w in caught:
        if "are not valid for transform" in str(w.message):
            raise AugmentError(f"{where}: {name}: {w.message}")
    return transform


def _first_problem(e: Exception) -> str:
    """pydantic's multi-line report -> 'field: message (got value)'."""
    lines = [ln for ln in str(e).splitlines() if ln.strip() and not ln.strip().startswith("For further information")]
    if len(lines) >= 3 and "validation error" in lines[0]:
        field, message = lines[1].strip(), lines[2].strip()
        got = ""
        if "input_value=" in message:
            got = " (got " + message.split("input_value=", 1)[1].split(", input_type=")[0] + ")"
        message = message.split(" [type=")[0]
        return f"{field}: {message}{got}"
    return lines[0] if lines else type(e).__name__


def serialise(pipeline: Any) -> dict[str, Any]:
    """Albumentations' own dict of a pipeline (what `augment.train` may hold verbatim)."""
    return _plain(_albumentations().to_dict(pipeline))


# --------------------------------------------------------------------------- checks the spec loader runs


def check_augment(augment: dict[str, Any] | None, where: str) -> None:
    """Build both pipelines once (no image needed): raises AugmentError on any bad transform."""
    for part, value in (augment or {}).items():
        build(value, seed=0, where=f"{where}.{part}")


def check_tta(names: list[str], where: str) -> None:
    for i, name in enumerate(names):
        if name not in TTA_TRANSFORMS:
            raise AugmentError(f"{where}[{i}]: unknown TTA transform {name!r} (valid: {', '.join(TTA_TRANSFORMS)})")


def check_pipeline_output(value: Any, height: int, width: int, channels: int, where: str) -> str | None:
    """Run a pipeline on a dummy image of the model's input size: it must keep that size."""
    import numpy as np

    try:
        pipeline = build(value, seed=0, where=where)
        out = pipeline(image=np.zeros((height, width, channels), dtype=np.uint8))["image"]
    except AugmentError as e:
        return str(e)
    except Exception as e:  # noqa: BLE001 - e.g. a transform that needs bboxes or a volume
        return f"{where}: fails on a {height}x{width}x{channels} image: {type(e).__name__}: {str(e).splitlines()[0]}"
    if out.shape[:2] != (height, width):
        return (f"{where}: turns a {height}x{width} image into {out.shape[0]}x{out.shape[1]}; the model takes "
                f"image_size {height}x{width} (add a Resize/crop to that size, or change params.image_size)")
    return None


def tta_problem(names: list[str], height: int, width: int) -> str | None:
    rotating = [n for n in names if n in _ROTATING_TTA]
    if rotating and height != width:
        return f"TTA {', '.join(rotating)} needs square images (image_size is {height}x{width})"
    return None
