"""`python -m foldwise.workflows.cli` is the `foldwise` command."""

import sys

from foldwise.workflows.cli.main import main

sys.exit(main())
