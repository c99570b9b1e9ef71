"""`foldwise dag SPEC`: print the node graph with cache state; write its picture."""

from __future__ import annotations

import argparse

from foldwise.workflows.cli.main import EXIT_OK, bad_input


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", help="workflow spec (YAML)")
    p.add_argument("--out", help="output folder for dag.dot/dag.mmd (and dag.png/svg with Graphviz) + summary.json")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (checked as `foldwise run` would; nothing is logged)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override a spec key, e.g. --set steps.0.params.eps=0.01")
    p.add_argument("--cache", dest="cache_root", metavar="DIR_OR_URI",
                   help="cache root (default $FOLDWISE_CACHE or .foldwise/cache)")
    p.add_argument("--no-checks", action="store_true", help="the graph of `foldwise run --no-checks`")


def command(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from foldwise.workflows.commands.dag import show_dag
    from foldwise.workflows.errors import InputError, SpecError

    try:
        result = show_dag(args.spec, overrides=args.overrides, out=args.out, tracking_uri=args.tracking_uri,
                          cache_root=args.cache_root, checks=not args.no_checks)
    except (SpecError, InputError) as e:
        return bad_input(str(e))
    s = result.summary
    table = Table(title=f"{s['experiment']}: {s['counts']['nodes']} nodes, {s['counts']['cached']} cached, "
                        f"{s['counts']['to_run']} to run")
    for col in ("node", "inputs", "state", "key"):
        table.add_column(col)
    for n in s["nodes"]:
        inputs = ", ".join(n["inputs"]) if len(n["inputs"]) <= 4 else f"{len(n['inputs'])} nodes"
        table.add_row(n["label"], inputs, n["state"], n["key"][:12])
    console = Console()
    console.print(table)
    console.print("picture: " + ", ".join(s["pictures"].values()))
    print(result.out_dir / "summary.json")
    return EXIT_OK
