"""YAML with bounds: a spec (or a `--set` value) too deep or too large once its aliases expand is
refused as one SpecError line, before anything holds its expansion in memory.

A 2 KB "billion laughs" document (aliases of aliases) expands to gigabytes; a 1 KB one nested a
few hundred levels deep overflows Python's stack in the YAML parser. Both are measured on the
composed node graph (aliases are shared nodes there, so measuring costs what the text costs),
and only a document within the bounds is constructed.
"""

from __future__ import annotations

from typing import Any

import yaml

from foldwise.workflows.errors import SpecError

MAX_DEPTH = 50  # a real spec nests ~6 levels (models.0.params.x, search.space.p.loguniform)
MAX_NODES = 200_000  # scalars, lists and mappings after aliases expand; a large real spec has ~1,000


def safe_load_bounded(text: str, where: str) -> Any:
    """yaml.safe_load, but SpecError (naming `where`) for a document past MAX_DEPTH or MAX_NODES.
    yaml.YAMLError for text that is not YAML (the caller says where)."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except RecursionError:
        raise SpecError(f"{where} is nested too deeply (more than {MAX_DEPTH} levels)") from None
    if node is None:
        return None
    size, depth = _measure(node)
    if depth > MAX_DEPTH:
        raise SpecError(f"{where} is nested too deeply ({depth} levels; at most {MAX_DEPTH})")
    if size > MAX_NODES:
        raise SpecError(f"{where} expands to more than {MAX_NODES:,} values through its YAML aliases; "
                        "refused (an alias bomb?)")
    return yaml.safe_load(text)


def _measure(root: yaml.Node) -> tuple[int, int]:
    """(values after expanding aliases, depth) of a composed node graph, without recursion: each shared
    node is measured once. A node that contains itself is refused."""
    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    open_nodes: set[int] = set()
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if key in size:
            continue
        kids = _children(node)
        if not children_done:
            if key in open_nodes:
                raise SpecError("a YAML alias refers to a node that contains it (a recursive structure)")
            open_nodes.add(key)
            stack.append((node, True))
            for kid in kids:
                if id(kid) in open_nodes and id(kid) not in size:
                    raise SpecError("a YAML alias refers to a node that contains it (a recursive structure)")
                if id(kid) not in size:
                    stack.append((kid, False))
            if len(open_nodes) > MAX_DEPTH * 4 + 1000:
                raise SpecError(f"the YAML is nested too deeply (at most {MAX_DEPTH} levels)")
            continue
        open_nodes.discard(key)
        size[key] = 1 + sum(size[id(k)] for k in kids)
        depth[key] = 1 + max((depth[id(k)] for k in kids), default=0)
        if size[key] > MAX_NODES:  # stop early: the sums above grow exponentially in a bomb
            return size[key], depth[key]
    return size[id(root)], depth[id(root)]


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []
