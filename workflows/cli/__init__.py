"""The `foldwise` command line: argparse and printing only; exit codes 0 / 1 (failed) / 2 (bad input)."""
