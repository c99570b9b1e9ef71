"""`foldwise init DATA --target COL`: a starter spec for the user's own file, in one step
(inferring and writing it: `foldwise.workflows.commands.init`)."""

from __future__ import annotations

import argparse
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", help="training data (.csv/.parquet path or URI, or sklearn:NAME)")
    p.add_argument("--target", required=True, help="target column")
    p.add_argument("--id", help="id column (kept out of features, written to the submission)")
    p.add_argument("--test", help="test data with the same columns minus the target")
    p.add_argument("--name", help="spec name (default: the data file's stem without a train part: "
                                  "diamonds_train.csv -> diamonds)")
    p.add_argument("--out", help="where to write the spec (default: <name>.yaml); local data paths in it are "
                                 "relative to its folder when the data lies under or beside it")
    p.add_argument("--force", action="store_true", help="overwrite an existing spec file")


def command(args: argparse.Namespace) -> int:
    from foldwise.workflows.cli.main import EXIT_OK, bad_input
    from foldwise.workflows.commands.init import StarterError, write_starter_spec

    try:
        path = write_starter_spec(args.data, target=args.target, id_column=args.id, test=args.test, name=args.name,
                                  out=args.out, force=args.force)
    except StarterError as e:
        return bad_input(str(e))
    print(f"wrote a starter spec; run it with: foldwise run {path}", file=sys.stderr)
    print(str(path))
    return EXIT_OK
