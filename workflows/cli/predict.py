"""`foldwise predict RUN DATA`: a trained run's models on new rows (`foldwise.workflows.commands.predict`)."""

from __future__ import annotations

import argparse

from foldwise.infra import storage
from foldwise.workflows.cli.main import EXIT_OK, bad_input, failed


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="RUN", help="a run id or name, models:/NAME/VERSION, or a `foldwise run` outputs folder")
    p.add_argument("data", metavar="DATA", help="the rows to predict: .csv, .csv.gz, .tsv or .parquet (the training "
                                                "columns; the target may be there or not)")
    p.add_argument("--out", help="output folder (default outputs/<experiment>/<run id>/predict-<predict run id>/)")
    p.add_argument("--model", default="ensemble", metavar="NAME|ensemble",
                   help="which of the run's models answers (default: its ensemble)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: the outputs folder's, $MLFLOW_TRACKING_URI, "
                                          "sqlite:///mlflow.db)")
    p.add_argument("--address", help="Ray address (default: start a local Ray)")
    p.add_argument("--executor", choices=("ray", "local"), default="ray",
                   help="ray: one task per model x fold; local: the same in this process (for pdb)")
    p.add_argument("--chunk-rows", type=int, default=None, metavar="N",
                   help="rows read and predicted at a time (bounds memory; default: about 32 MiB of encoded "
                        "features, e.g. 104857 rows of 40 features)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def command(args: argparse.Namespace) -> int:
    from foldwise.workflows.commands.predict import run_predict
    from foldwise.workflows.errors import InputError, RunFailed

    try:
        result = run_predict(args.run, args.data, out=args.out, model=args.model, tracking_uri=args.tracking_uri,
                             executor=args.executor, address=args.address, chunk_rows=args.chunk_rows,
                             progress=not args.no_progress)
    except InputError as e:
        return bad_input(str(e))
    except RunFailed as e:
        return failed(str(e), e.run_id)
    s = result.summary
    print(f"{s['rows']} rows predicted by {s['output']} of {s['model_uri']}; MLflow run {s['run_id']}")
    print(storage.join(result.out_dir, "predictions.csv"))
    print(storage.join(result.out_dir, "summary.json"))
    return EXIT_OK
