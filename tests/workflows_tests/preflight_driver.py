"""Runs foldwise's CLI (`foldwise.workflows.cli.main.main`) once per case in THIS process, and records
per case: the exit code, everything written to file descriptor 2, whether an exception escaped,
whether Ray was started (initialised, or any child process), and the files under the workspace
before and after. One process for every case keeps the bad-input test fast: each case would
otherwise pay the CLI's start-up. Usage: python preflight_driver.py CASES.json RESULTS.json
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import traceback
from pathlib import Path


def snapshot(root: Path) -> dict[str, list[int]]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            try:
                st = p.lstat()
            except OSError:
                continue
            out[str(p.relative_to(root))] = [st.st_size, st.st_mtime_ns] if name in filenames else [-1, 0]
    return out


def run_case(argv: list[str], workspace: Path) -> dict:
    import psutil

    from foldwise.workflows.cli.main import main

    before = snapshot(workspace)
    with tempfile.TemporaryFile() as err:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(err.fileno(), 2)
        escaped = None
        try:
            rc = main(argv)
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else 1
        except BaseException:  # noqa: BLE001 - exactly what the test looks for
            escaped = traceback.format_exc()
            rc = 1
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
        err.seek(0)
        stderr = err.read().decode(errors="replace")
    ray = sys.modules.get("ray")
    ray_started = bool(ray is not None and ray.is_initialized())
    if ray_started:
        ray.shutdown()
    children = [p.name() for p in psutil.Process().children(recursive=True)]
    after = snapshot(workspace)
    changed = sorted(k for k in after if before.get(k) != after[k] and after[k][0] != -1)
    new = sorted(set(after) - set(before))
    return {"rc": rc, "stderr": stderr, "escaped": escaped, "ray_started": ray_started, "children": children,
            "new_files": new, "changed_files": changed}


def main() -> None:
    cases = json.loads(Path(sys.argv[1]).read_text())
    workspace = Path.cwd()
    results = {name: run_case(argv, workspace) for name, argv in cases.items()}
    Path(sys.argv[2]).write_text(json.dumps(results))


if __name__ == "__main__":
    main()
