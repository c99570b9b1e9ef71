"""The docs are checked, not trusted: README.md and docs/*.md.

- Every relative link resolves to a file that exists (and an anchor to a heading of that file), and
  every docs page is linked from README.md, which stays a front door (at most 12 KiB) and keeps the
  two commands CI runs.
- Every `foldwise ...` command line in a fenced shell block (also after `$ `, `VAR=value `, `&&`, and
  across `\\` continuations) parses with foldwise's real parser; its spec file exists and loads with
  its `--set` overrides (and the job arguments after `submit ... --` parse as that command's). The
  examples are concrete: no SPEC / RUN_A / URL / `<...>` placeholders in fenced blocks. The one spec
  allowed not to exist is the file a `foldwise init` line earlier in the same block writes (the
  real `init` below shows such a spec loads). `python -m foldwise...` modules and `python x.py`
  scripts exist; complete specs in YAML blocks load; every `foldwise.tasks/workflows/infra` name
  and `from foldwise import ...` in the docs resolves.
- The cheap examples run for real, in this process: `foldwise --help`, `foldwise init` on a CSV
  written here, `foldwise check` (the README's init -> check flow with `--executor local`, and
  breast_cancer.yaml, which has no test set, so no Ray starts), `foldwise cache ls` / `prune --dry-run`.

The expensive commands are only parsed here; these files run them for real:
  run, init:              tests/workflows_tests/test_run_e2e.py, test_run_more.py
  check:                  tests/workflows_tests/test_check.py
  sweep:                  tests/workflows_tests/test_sweep.py
  ablate:                 tests/workflows_tests/test_ablate.py
  compare:                tests/workflows_tests/test_compare_cmd.py
  ui:                     tests/workflows_tests/test_mlflow_ui.py
  cache, resume, faults:  tests/workflows_tests/test_cache.py, test_faults.py
  images:                 tests/workflows_tests/test_images_run.py
  cluster, submit, jobs, logs, stop:  tests/infra_tests/test_cluster_jobs.py, test_submit_args.py
  python -m foldwise.infra.mlflow_server:  tests/infra_tests/test_mlflow_server.py
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from foldwise.workflows.cli.main import COMMANDS, build_parser, main
from foldwise.workflows.pipeline.spec import load_spec

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
PAGES = sorted((REPO / "docs").glob("*.md"))
DOCS = [README, *PAGES]
README_MAX_BYTES = 12 * 1024

TWO_COMMANDS = (
    "python3 -m venv .venv && . .venv/bin/activate && pip install -e . && "
    "foldwise run workflows/examples/breast_cancer.yaml",
    "python3 -m venv .venv && . .venv/bin/activate && pip install torch==2.13.0 && "
    "pip install -c constraints-dev.txt -e '.[dev]' && python -m pytest -q",
)

SHELL_LANGS = {"", "bash", "sh", "shell", "console"}
FENCE = re.compile(r"^(\s*)(```|~~~)\s*([\w+-]*)\s*$")
ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
PLACEHOLDER = re.compile(r"^[A-Z][A-Z0-9_]*$|<[^>]*>|\.\.\.")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
DOTTED = re.compile(r"\bfoldwise(?:\.(?:tasks|workflows|infra))(?:\.[A-Za-z_]\w*)+")
FROM_IMPORT = re.compile(r"^\s*from\s+(foldwise(?:\.\w+)*)\s+import\s+(.+)$", re.M)
# `workflows.cv`, `from infra.x`, `python -m tasks.y`: import paths from before they were namespaced
# (file paths such as workflows/examples/x.yaml are fine)
STALE = re.compile(r"(?<![\w./-])(?:tasks|workflows|infra)\.[a-z_]\w*")


def rel(path: Path) -> str:
    return str(path.relative_to(REPO))


# --------------------------------------------------------------------------- reading markdown


@dataclass(frozen=True)
class Block:
    doc: Path
    line: int  # 1-based line of the opening fence
    lang: str
    lines: tuple[str, ...]


def fenced_blocks(doc: Path) -> list[Block]:
    """Fenced code blocks, also indented ones (inside list items), dedented by their fence's indent."""
    lines, blocks, i = doc.read_text().splitlines(), [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, lang = m.groups()
        start, body = i + 1, []
        i += 1
        while i < len(lines) and lines[i].strip() != fence:
            body.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i].lstrip())
            i += 1
        blocks.append(Block(doc, start, lang.lower(), tuple(body)))
        i += 1
    return blocks


def prose(doc: Path) -> str:
    """The text outside fenced blocks and inline code spans (where links live)."""
    text = re.sub(r"^(\s*)(```|~~~).*?^\s*\2\s*$", "", doc.read_text(), flags=re.M | re.S)
    return re.sub(r"`[^`\n]*`", "", text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(doc: Path) -> set[str]:
    text = re.sub(r"^(\s*)(```|~~~).*?^\s*\2\s*$", "", doc.read_text(), flags=re.M | re.S)
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, re.M)}


@dataclass(frozen=True)
class Shell:
    """One simple command of a shell block: its words, and the files an earlier `init` in the block writes."""

    doc: Path
    line: int
    words: tuple[str, ...]
    written: frozenset[str]

    @property
    def id(self) -> str:
        return f"{rel(self.doc)}:{self.line}:{' '.join(self.words[:3])}"


def shell_commands(block: Block) -> list[Shell]:
    found: list[Shell] = []
    written: set[str] = set()
    logical: list[tuple[int, str]] = []
    pending, first = "", 0
    for n, line in enumerate(block.lines, start=block.line + 1):
        if not pending:
            first = n
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        logical.append((first, pending + line))
        pending = ""
    for n, line in logical:
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
        lexer.whitespace_split, lexer.commenters = True, "#"
        segment: list[str] = []
        for token in [*lexer, ";"]:
            if token and set(token) <= set(";&|"):
                while segment and (segment[0] == "$" or ENV_ASSIGNMENT.match(segment[0])):
                    segment.pop(0)
                if segment:
                    found.append(Shell(block.doc, n, tuple(segment), frozenset(written)))
                    if segment[:2] == ["foldwise", "init"]:
                        written.add(init_writes(segment[2:]))
                segment = []
            else:
                segment.append(token)
    return found


def init_writes(argv: list[str]) -> str:
    """The spec file `foldwise init ARGS` writes (its --out, else <name or the data file's stem>.yaml)."""
    ns = build_parser().parse_args(["init", *argv])
    return ns.out or f"{ns.name or Path(ns.data.removeprefix('sklearn:')).name.split('.')[0]}.yaml"


ALL_SHELL = [c for doc in DOCS for b in fenced_blocks(doc) if b.lang in SHELL_LANGS for c in shell_commands(b)]
FOLDWISE = [c for c in ALL_SHELL if c.words[0] == "foldwise"]
PYTHON = [c for c in ALL_SHELL if c.words[0] in ("python", "python3") and len(c.words) > 1]


# --------------------------------------------------------------------------- the page set


def test_readme_is_a_front_door() -> None:
    size = len(README.read_bytes())
    assert size <= README_MAX_BYTES, f"README.md is {size} bytes; move detail to docs/ (at most {README_MAX_BYTES})"
    text = README.read_text()
    for command in TWO_COMMANDS:  # CI greps for the test command: not a character changes
        assert command in text
    assert "shared/DESIGN.md" not in text


def test_every_relative_link_resolves() -> None:
    broken = []
    for doc in DOCS:
        for target in LINK.findall(prose(doc)):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            file = (doc.parent / path).resolve() if path else doc
            if not file.exists():
                broken.append(f"{rel(doc)}: {target} (no such file)")
            elif anchor and file.suffix == ".md" and anchor not in anchors(file):
                broken.append(f"{rel(doc)}: {target} (no heading #{anchor} in {rel(file)})")
    assert broken == []


def test_every_docs_page_is_linked_from_the_readme() -> None:
    linked = {(REPO / t.partition("#")[0]).resolve() for t in LINK.findall(prose(README)) if "://" not in t}
    assert PAGES, "no docs pages found"
    assert [rel(p) for p in PAGES if p.resolve() not in linked] == []


def test_every_command_page_shows_runnable_examples() -> None:
    with_examples = {c.doc for c in FOLDWISE}
    assert [rel(p) for p in PAGES if p.name != "architecture.md" and p not in with_examples] == []
    tour = {c.words[1] for c in FOLDWISE if c.doc == README}
    assert {"run", "ui", "sweep", "ablate", "compare", "submit", "init", "check"} <= tour


def test_architecture_names_every_module_of_the_layers() -> None:
    """docs/architecture.md is kept current: it names each module of engine, tracking, pipeline,
    commands (and of their subpackages, such as commands/sweep/) and infra (a new module means a
    line there)."""
    text = (REPO / "docs" / "architecture.md").read_text()
    layers = [REPO / "workflows" / name for name in ("engine", "tracking", "pipeline", "commands")]
    packages = [p.parent for layer in layers for p in sorted(layer.rglob("__init__.py"))]
    folders = [rel(p) for p in packages] + ["infra"]
    modules = [p for f in folders for p in sorted((REPO / f).glob("*.py")) if not p.name.startswith("__")]
    assert modules, "no modules found"
    unnamed = [rel(p) for p in modules if f"`{p.name}`" not in text and f"`{p.stem}`" not in text]
    assert unnamed == [], "docs/architecture.md does not describe these modules"
    for folder in (*folders, "workflows/cli", "tasks"):
        assert f"{folder}/" in text, folder


# --------------------------------------------------------------------------- every command parses


def parse(argv: list[str], where: str):
    try:
        return build_parser().parse_args(argv)
    except SystemExit as e:
        if e.code == 0:  # --help
            return None
        pytest.fail(f"{where}: `foldwise {shlex.join(argv)}` does not parse (exit {e.code}); fix the docs")


@pytest.mark.parametrize("cmd", FOLDWISE, ids=[c.id for c in FOLDWISE])
def test_command_example_parses_and_its_spec_loads(cmd: Shell) -> None:
    argv = list(cmd.words[1:])
    where = f"{rel(cmd.doc)}:{cmd.line}"
    placeholders = [w for w in argv if PLACEHOLDER.search(w)]
    assert placeholders == [], f"{where}: write a concrete example instead of {placeholders}"
    ns = parse(argv, where)
    if ns is None or not getattr(ns, "spec", None):
        return
    overrides = list(getattr(ns, "overrides", []) or [])
    if ns.command == "submit":  # the job's own command line: `foldwise <command> SPEC <args after -->`
        job = parse([ns.job_command, ns.spec, *ns.args], f"{where} (the job's arguments after --)")
        overrides = list(job.overrides)
    if ns.spec in cmd.written:  # written by `foldwise init` above it in the same block
        return
    spec = REPO / ns.spec
    assert spec.is_file(), f"{where}: spec {ns.spec} does not exist"
    load_spec(spec, overrides)


@pytest.mark.parametrize("cmd", PYTHON, ids=[c.id for c in PYTHON])
def test_python_example_names_a_module_or_script_that_exists(cmd: Shell) -> None:
    where = f"{rel(cmd.doc)}:{cmd.line}"
    if cmd.words[1] == "-m":
        module = cmd.words[2]
        if module.startswith("foldwise"):
            assert importlib.util.find_spec(module) is not None, f"{where}: no module {module}"
    elif cmd.words[1].endswith(".py"):
        assert (REPO / cmd.words[1]).is_file(), f"{where}: no script {cmd.words[1]}"


def test_complete_specs_in_yaml_blocks_load() -> None:
    specs = []
    for doc in DOCS:
        for block in fenced_blocks(doc):
            if block.lang in ("yaml", "yml"):
                raw = yaml.safe_load("\n".join(block.lines))
                if isinstance(raw, dict) and {"name", "data", "models"} <= set(raw):
                    specs.append((f"{rel(doc)}:{block.line}", raw))
    assert specs, "no complete spec in the docs"
    for where, raw in specs:
        spec = load_spec(raw)
        assert spec.name and spec.models, where


def test_python_names_in_the_docs_exist() -> None:
    missing = []
    for doc in DOCS:
        text = doc.read_text()
        missing += [f"{rel(doc)}: {name} (now foldwise.{name})" for name in sorted(set(STALE.findall(text)))]
        for name in sorted(set(DOTTED.findall(text))):
            if not resolves(name):
                missing.append(f"{rel(doc)}: {name}")
        for module, names in FROM_IMPORT.findall(text):
            for attr in (n.strip() for n in names.split(",")):
                if not hasattr(importlib.import_module(module), attr):
                    missing.append(f"{rel(doc)}: from {module} import {attr}")
    assert missing == []


def resolves(dotted: str) -> bool:
    """A module, or an attribute of the longest module prefix."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        module = ".".join(parts[:i])
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if found:
            obj = importlib.import_module(module)
            for attr in parts[i:]:
                if not hasattr(obj, attr):
                    return False
                obj = getattr(obj, attr)
            return True
    return False


# --------------------------------------------------------------------------- the cheap examples run


@pytest.fixture(autouse=True)
def own_sys_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """`foldwise` puts the working directory on sys.path, as `python -m` does: undone after each test."""
    monkeypatch.setattr(sys, "path", list(sys.path))


@pytest.fixture
def sandbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working folder of its own."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def churn_csvs(folder: Path) -> None:
    rng = np.random.default_rng(0)

    def frame(n: int, start: int) -> pd.DataFrame:
        usage = rng.gamma(2.0, 10.0, n)
        return pd.DataFrame({"customer_id": np.arange(start, start + n), "plan": rng.choice(["basic", "pro"], n),
                             "usage": usage, "tenure": rng.integers(1, 60, n)})

    (folder / "data").mkdir()
    train = frame(240, 0)
    train["churned"] = (train["usage"] + rng.normal(0, 8, len(train)) < 18).astype(int)
    train.to_csv(folder / "data" / "train.csv", index=False)
    frame(80, 10_000).to_csv(folder / "data" / "test.csv", index=False)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """One MLflow store for the checks below (creating a store's tables takes seconds)."""
    return f"sqlite:///{tmp_path_factory.mktemp('docs-mlflow') / 'mlflow.db'}"


def last_line(text: str) -> str:
    return text.strip().splitlines()[-1]


def test_help_lists_every_command(capsys) -> None:
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: foldwise")
    assert [c for c in COMMANDS if c not in out] == []


def test_readme_init_then_check_run_as_written(sandbox: Path, store: str, capsys) -> None:
    """The README's `foldwise init ...` and `foldwise check <its spec>` lines, verbatim, on CSVs
    written here (the check with `--executor local`, an --out here and the shared store)."""
    lines = [c for c in FOLDWISE if c.doc == README and c.words[1] in ("init", "check")]
    init = next(c.words[1:] for c in lines if c.words[1] == "init")
    check = next(c.words[1:] for c in lines if c.words[1] == "check" and c.written)
    churn_csvs(sandbox)

    assert main(list(init)) == 0
    spec_path = Path(last_line(capsys.readouterr().out))
    assert spec_path.is_file() and str(spec_path) == check[1]
    spec = load_spec(spec_path)
    assert spec.task == "binary" and spec.data.id == "customer_id" and spec.data.test
    assert [m.name for m in spec.models] == ["logreg", "lgbm"]

    rc = main([*check, "--executor", "local", "--out", str(sandbox / "check"), "--tracking-uri", store,
               "--cache", str(sandbox / "cache"), "--folds", "3", "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0
    summary = json.loads(Path(last_line(out)).read_text())
    assert summary["command"] == "check" and summary["errors"] == []
    assert 0.0 <= summary["adversarial_auc"] <= 1.0  # train vs the test file: adversarial validation ran
    assert {d["feature"] for d in summary["drift"]} >= {"usage", "plan"}
    assert (sandbox / "check" / "check.md").is_file()


def test_check_of_the_breast_cancer_example_runs(tmp_path: Path, store: str, capsys) -> None:
    """`foldwise check workflows/examples/breast_cancer.yaml`: no test set and no --reference, so only
    the checks run (no adversarial validation, no Ray)."""
    spec = REPO / "workflows" / "examples" / "breast_cancer.yaml"
    rc = main(["check", str(spec), "--out", str(tmp_path / "out"), "--tracking-uri", store,
               "--cache", str(tmp_path / "cache"), "--no-progress"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err[-2000:]
    summary = json.loads(Path(last_line(captured.out)).read_text())
    assert summary["command"] == "check" and summary["errors"] == [] and summary["adversarial_auc"] is None
    assert summary["run_id"] and (tmp_path / "out" / "check.md").is_file()


def test_cache_ls_and_prune_dry_run(tmp_path: Path, capsys) -> None:
    cache = tmp_path / "cache"
    assert main(["cache", "ls", "--cache", str(cache)]) == 0
    assert "is empty" in capsys.readouterr().out

    from foldwise.workflows.engine.cache import Cache

    Cache(str(cache)).put("plan", "k" * 64, {"folds": [0, 1, 0, 1]})
    assert main(["cache", "ls", "--cache", str(cache)]) == 0
    assert "plan" in capsys.readouterr().out
    assert main(["cache", "prune", "--older-than", "7d", "--dry-run", "--cache", str(cache)]) == 0
    assert "0 entries" in capsys.readouterr().out
    assert len(Cache(str(cache)).entries()) == 1
