"""`foldwise cache ls | prune [--older-than 7d]`: see what the result cache holds, and trim it.

The cache (workflows/cache.py) only grows: every fold, prepared dataset, fold plan and
ensemble a run computes stays under its content key. `ls` shows where the space goes per
kind of node; `prune` removes entries not written for a while (a later run that needs one
just recomputes it), plus temp files of writes a killed driver never finished.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

from foldwise.workflows.cli.main import EXIT_OK, bad_input

# The DAG nodes in the order they run; any other kind found is listed after them.
KIND_ORDER = ("data", "plan", "fold", "ensemble", "partial")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=("ls", "prune"), help="ls: what the cache holds; prune: remove old entries")
    p.add_argument("--cache", dest="cache_root", metavar="DIR_OR_URI",
                   help="cache root (default $FOLDWISE_CACHE or .foldwise/cache)")
    p.add_argument("--older-than", metavar="AGE",
                   help="prune: only entries last written longer ago than AGE (7d, 36h, 90m, 30s, 2w); "
                        "default: every entry")
    p.add_argument("--dry-run", action="store_true", help="prune: list what would be removed, remove nothing")
    p.add_argument("--entries", action="store_true", help="ls: one line per entry, not only totals per kind")


def command(args: argparse.Namespace) -> int:
    from foldwise.workflows.engine.cache import Cache
    from foldwise.workflows.units import parse_age

    older_than = None
    if args.older_than is not None:
        if args.action != "prune":
            return bad_input("--older-than applies to 'foldwise cache prune' only")
        try:
            older_than = parse_age(args.older_than)
        except ValueError as e:
            return bad_input(f"--older-than: {e}")
    cache = Cache(args.cache_root)
    if args.action == "ls":
        entries = cache.entries() + cache.partial_writes()
        if not entries:
            print(f"cache {cache.root} is empty")
            return EXIT_OK
        print_table(f"cache {cache.root}", entries, per_entry=args.entries)
        return EXIT_OK
    removed = cache.prune(older_than, dry_run=args.dry_run)
    kept = cache.entries() if not args.dry_run else [e for e in cache.entries() if e not in set(removed)]
    what = "would remove" if args.dry_run else "removed"
    age = f" older than {args.older_than}" if args.older_than else ""
    if removed:
        print_table(f"{what} from {cache.root}", removed, per_entry=args.entries)
    print(f"{what} {len(removed)} entries{age} ({_size(sum(e.bytes for e in removed))}); "
          f"kept {len(kept)} ({_size(sum(e.bytes for e in kept))}) in {cache.root}")
    return EXIT_OK


def print_table(title: str, entries: list, per_entry: bool = False) -> None:
    """Totals per kind (entries, size, newest and oldest age), or one row per entry."""
    from rich.console import Console
    from rich.table import Table

    from foldwise.workflows.units import human_age

    now = time.time()
    table = Table(title=title)
    if per_entry:
        for col in ("kind", "key", "size", "age"):
            table.add_column(col, justify="right" if col in ("size", "age") else "left")
        for e in sorted(entries, key=lambda e: (_rank(e.kind), -e.modified)):
            table.add_row(e.kind, e.key, _size(e.bytes), human_age(now - e.modified))
    else:
        by_kind: dict[str, list] = defaultdict(list)
        for e in entries:
            by_kind[e.kind].append(e)
        for col in ("kind", "entries", "size", "newest age", "oldest age"):
            table.add_column(col, justify="left" if col == "kind" else "right")
        for kind in sorted(by_kind, key=_rank):
            es = by_kind[kind]
            table.add_row(kind, str(len(es)), _size(sum(e.bytes for e in es)),
                          human_age(now - max(e.modified for e in es)), human_age(now - min(e.modified for e in es)))
    if entries:
        table.add_section()
        table.add_row("total", *([""] if per_entry else [str(len(entries))]), _size(sum(e.bytes for e in entries)),
                      *([""] if per_entry else ["", ""]))
    Console(width=120).print(table)


def _rank(kind: str) -> tuple[int, str]:
    return (KIND_ORDER.index(kind) if kind in KIND_ORDER else len(KIND_ORDER), kind)


def _size(n: float) -> str:
    from foldwise.workflows.units import human_size

    return human_size(n)
