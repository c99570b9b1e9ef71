"""A `Comparison` (tasks.compare) as people read it: sections rendered as markdown (the MLflow
note, compare.md), self-contained HTML, and two plots (fold deltas, the slice grid).
No Ray, no MLflow."""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from foldwise.tasks.compare import Comparison, RunFacts

# --------------------------------------------------------------------------- rendering


@dataclass(frozen=True)
class Block:
    """One piece of a section: a paragraph, a callout, a bullet list, a table or an image."""

    kind: str  # para | alert | bullets | table | code | image
    text: str = ""
    items: tuple[str, ...] = ()
    header: tuple[str, ...] = ()
    rows: tuple[tuple[str, ...], ...] = ()
    image: str = ""  # file name next to the write-up


@dataclass(frozen=True)
class Section:
    title: str
    blocks: tuple[Block, ...]
    in_note: bool = True  # part of the MLflow run description (kept under the tag size limit)


def _f(x: float, digits: int = 5) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _fs(x: float, digits: int = 5) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:+.{digits}f}"


def _p(x: float) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{x:.3g}"


SLICE_MARK = {"better": "▲ B better", "worse": "▼ B worse", "within noise": "≈ within noise", "n/a": "-"}


def sections(c: Comparison, plots: Mapping[str, str] | None = None) -> list[Section]:
    """The write-up as data; `to_markdown` / `to_html` only format it."""
    plots = plots or {}
    a, b = c.a, c.b
    out: list[Section] = []
    out.append(Section(f"Compare: A = {a.name} ({a.run_id[:8]}) vs B = {b.name} ({b.run_id[:8]})", (
        Block("para", text=f"**Headline:** {c.verdict}"),
        Block("para", text=f"Metric `{b.metric}` ({b.task}), scorer's sign: greater is better. Delta = B - A."),
    )))
    out.append(Section("What A and B are", (Block("table", header=("", "A", "B"), rows=(
        ("run", f"{a.name} `{a.run_id}`", f"{b.name} `{b.run_id}`"),
        ("what is compared", _what(a), _what(b)),
        ("experiment", a.experiment, b.experiment),
        ("started / status", f"{a.started} {a.status}", f"{b.started} {b.status}"),
        ("cv score", _f(a.cv_score), _f(b.cv_score)),
        ("folds", a.folds, b.folds),
    )),)))
    change_blocks: list[Block] = []
    if c.changes:
        change_blocks.append(Block("table", header=("config key", "A", "B"),
                                   rows=tuple((ch.key, ch.a, ch.b) for ch in c.changes[:40])))
        if len(c.changes) > 40:
            change_blocks.append(Block("para", text=f"... and {len(c.changes) - 40} more changed keys."))
    else:
        change_blocks.append(Block("para", text="No difference in the logged effective config."))
    change_blocks.append(Block("table", header=("provenance", "A", "B", "same?"),
                               rows=tuple((p.key, p.a, p.b, "yes" if p.a == p.b else "**no**") for p in c.provenance)))
    if c.features_added or c.features_removed:
        change_blocks.append(Block("bullets", items=tuple(
            ([f"features added in B: {', '.join(c.features_added)}"] if c.features_added else [])
            + ([f"features removed in B: {', '.join(c.features_removed)}"] if c.features_removed else []))))
    out.append(Section("What changed", tuple(change_blocks)))

    fold_blocks: list[Block] = [Block("para", text=f"cv score A {_f(a.cv_score)}, B {_f(b.cv_score)}, "
                                                   f"**delta {_fs(c.delta)}**.")]
    if c.paired is None:
        fold_blocks.append(Block("alert", text=c.folds_note))
        fold_blocks.append(Block("table", header=("fold", "A (own split)", "B (own split)"), rows=tuple(
            (str(k), _f(x) if k < len(a.fold_scores) else "", _f(y) if k < len(b.fold_scores) else "")
            for k, x, y in _zip_long(a.fold_scores, b.fold_scores))))
    else:
        p = c.paired
        fold_blocks.append(Block("para", text=c.folds_note))
        fold_blocks.append(Block("table", header=("fold", "A", "B", "B - A"), rows=tuple(
            (_split_label(k, a.n_folds, len(p.fold_deltas)), _f(x), _f(y), _fs(d))
            for k, (x, y, d) in enumerate(zip(a.fold_scores, b.fold_scores, p.fold_deltas))
        ) + (("mean", _f(a.cv_score), _f(b.cv_score), _fs(p.mean)),)))
        k = len(p.fold_deltas)
        fold_blocks.append(Block("table", header=("paired test", "p-value", "note"), rows=(
            ("paired t-test", _p(p.p_t), f"t = {p.t_stat:.3f}, {k - 1} df"),
            ("Wilcoxon signed-rank", _p(p.p_wilcoxon), f"with {k} folds the smallest possible p is {2 / 2 ** k:.3g}"),
            ("corrected t (Nadeau-Bengio)", _p(p.p_corrected), "accounts for overlapping training folds"
             + (f"; corrected repeated k-fold t over {k} repeat x fold pairs" if a.n_folds and k > a.n_folds else "")),
        )))
        fold_blocks.append(Block("para", text=f"B wins {p.b_wins} of {k} folds; fold-delta std {_f(p.std)}."))
    if "fold_deltas" in plots:
        fold_blocks.append(Block("image", text="per-fold delta", image=plots["fold_deltas"]))
    out.append(Section("Headline delta, per fold", tuple(fold_blocks)))

    slice_blocks: list[Block] = []
    if c.slices:
        if not c.same_folds:
            slice_blocks.append(Block("alert", text="The folds differ: slice deltas below mix the change with the "
                                                    "split, so they get no intervals and no verdicts."))
        slice_blocks.append(Block("para", text=(
            "B - A on row subsets of the OOF predictions, with a 95% paired bootstrap interval over the slice's rows. "
            "▲/▼ = the interval excludes 0; '-' = no verdict (under 20 rows, or score undefined). With many slices, "
            "about 1 in 20 flags is expected by chance. " + c.ranking_note)))
        slice_blocks.append(Block("table", header=("slice", "source", "rows", "A", "B", "B - A", "95% CI", "verdict"),
                                  rows=tuple((s.name, s.source, str(s.rows), _f(s.score_a, 4), _f(s.score_b, 4),
                                              _fs(s.delta, 4), f"[{_fs(s.lo, 4)}, {_fs(s.hi, 4)}]",
                                              SLICE_MARK[s.verdict]) for s in c.slices)))
        queries = {s.name: s.query for s in c.slices if s.source == "auto"}
        if queries:
            slice_blocks.append(Block("para", text="The automatic slices as spec entries (paste under `slices:` to "
                                                   "have every run score them):"))
            slice_blocks.append(Block("code", text=yaml_slices(queries)))
    else:
        slice_blocks.append(Block("para", text=f"No slice grid: {c.slice_note}."))
    if "slice_grid" in plots:
        slice_blocks.append(Block("image", text="slice grid", image=plots["slice_grid"]))
    out.append(Section("Slices", tuple(slice_blocks)))

    out.append(Section("Efficiency", (Block("table", header=("", "A", "B", "B / A"), rows=c.efficiency),
                                      Block("para", text="Predict time is the held-out folds' predict calls, per "
                                                         "1,000 OOF rows. Peak memory is the most resident memory a "
                                                         "fold added over its worker's start, for the largest fold "
                                                         "(`peak_memory_bytes`); 'not recorded' when a run has "
                                                         "none.")), in_note=False))

    agree_blocks: list[Block] = []
    if c.agreement is not None:
        ag = c.agreement
        txt = f"OOF prediction correlation: Pearson {_f(ag.pearson, 4)}, Spearman {_f(ag.spearman, 4)}"
        if ag.label_agreement is not None:
            txt += f"; predicted labels agree on {ag.label_agreement:.1%} of rows"
        agree_blocks.append(Block("para", text=txt + "."))
        t = ag.disagreements
        agree_blocks.append(Block("table", header=tuple(map(str, t.columns)),
                                  rows=tuple(tuple(str(v) for v in r) for r in t.itertuples(index=False))))
    else:
        agree_blocks.append(Block("para", text=f"Not available: {c.rows_note}."))
    out.append(Section("Where A and B disagree", tuple(agree_blocks), in_note=False))

    if c.importance_shifts:
        imp = Block("table", header=("feature", "share A", "share B", "shift"),
                    rows=tuple((f, f"{x:.3f}", f"{y:.3f}", f"{y - x:+.3f}") for f, x, y in c.importance_shifts))
    else:
        imp = Block("para", text="Not recorded: these runs carry no feature importances, and permutation importance "
                                 "needs the fitted fold models, which runs do not keep.")
    out.append(Section("Feature-importance shifts", (imp,), in_note=False))
    out.append(Section("Conclusion", conclusion_blocks(c)))
    return out


def conclusion_blocks(c: Comparison) -> tuple[Block, ...]:
    worse = [s.name for s in c.slices if s.verdict == "worse"]
    better = [s.name for s in c.slices if s.verdict == "better"]
    facts = [c.verdict]
    if better:
        facts.append(f"B is better beyond row noise on: {', '.join(better)}.")
    if worse:
        facts.append(f"B is worse beyond row noise on: {', '.join(worse)}.")
    if c.slices and not better and not worse:
        facts.append("No slice moves beyond row noise.")
    slower = [e for e in c.efficiency if e[3].endswith("x") and float(e[3][:-1]) > 1.5 and "seconds" in e[0]]
    if slower:
        facts.append("B is notably slower: " + "; ".join(f"{e[0]} {e[3]}" for e in slower) + ".")
    prompts = [
        "Is the delta worth it at this fold noise? If not, prefer the simpler / cheaper run.",
        "Do any slices where B is worse matter for the product or the leaderboard's test distribution?",
        "Is the efficiency cost acceptable at inference scale?",
        "Did anything besides the intended change move (data fingerprint, git commit, features)?",
        "Decision: adopt B / keep A / need more evidence (more folds, repeated CV, another seed). Record it here.",
    ]
    if not c.same_folds:
        prompts.insert(0, "The folds differ: re-run both runs with the same cv scheme, folds and seed before deciding.")
    return (Block("bullets", items=tuple(facts)), Block("para", text="**For the human decision:**"),
            Block("bullets", items=tuple(f"[ ] {p}" for p in prompts)))


def yaml_slices(queries: Mapping[str, str]) -> str:
    import yaml

    return yaml.safe_dump({"slices": dict(queries)}, sort_keys=False, allow_unicode=True, width=1000).rstrip()


def _what(r: RunFacts) -> str:
    if r.kind == "run":
        return f"`foldwise run` ensemble of {', '.join(r.models) or '?'}"
    return f"model `{r.prediction}` (child run)"


def _split_label(split: int, n_folds: int | None, n_splits: int) -> str:
    """'k' for one repeat; 'repeat r, fold k' when the deltas run over repeats x folds."""
    if not n_folds or n_splits <= n_folds:
        return str(split)
    return f"r{split // n_folds} f{split % n_folds}"


def _zip_long(x: Sequence[float], y: Sequence[float]) -> list[tuple[int, float, float]]:
    n = max(len(x), len(y))
    return [(k, x[k] if k < len(x) else float("nan"), y[k] if k < len(y) else float("nan")) for k in range(n)]


def _cell_md(s: str) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def to_markdown(secs: Sequence[Section], note: bool = False) -> str:
    """GitHub-flavoured markdown; `note=True` keeps only the sections meant for the run description
    and drops images (relative files do not resolve there)."""
    lines: list[str] = []
    for i, sec in enumerate(secs):
        if note and not sec.in_note:
            continue
        lines.append(f"{'#' if i == 0 else '##'} {sec.title}\n")
        for blk in sec.blocks:
            if blk.kind == "para":
                lines.append(blk.text + "\n")
            elif blk.kind == "alert":
                lines.append(f"> **WARNING:** {blk.text}\n")
            elif blk.kind == "code":
                lines.append(f"```yaml\n{blk.text}\n```\n")
            elif blk.kind == "bullets":
                lines.extend([f"- {it}" for it in blk.items] + [""])
            elif blk.kind == "table":
                lines.append("| " + " | ".join(_cell_md(h) for h in blk.header) + " |")
                lines.append("|" + "|".join("---" for _ in blk.header) + "|")
                lines.extend("| " + " | ".join(_cell_md(v) for v in r) + " |" for r in blk.rows)
                lines.append("")
            elif blk.kind == "image" and not note:
                lines.append(f"![{blk.text}]({blk.image})\n")
    return "\n".join(lines)


def note_markdown(secs: Sequence[Section], artifact_hint: str, limit: int = 7900) -> str:
    """The MLflow run description: the note sections, cut to fit the tag value limit."""
    tail = f"\n\nFull write-up with plots: artifact `{artifact_hint}`."
    text = to_markdown(secs, note=True)
    if len(text) + len(tail) > limit:
        keep = limit - len(tail) - 40
        text = text[:keep].rsplit("\n", 1)[0] + "\n\n*(cut to fit the run description)*"
    return text + tail


_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ccc;padding:3px 8px;font-size:14px}
th{background:#f3f3f3}.alert{background:#fde8e8;border-left:6px solid #c0392b;padding:.6em 1em;font-weight:600}
code{background:#f3f3f3;padding:0 3px}img{max-width:100%}"""


def _inline_html(text: str) -> str:
    """**bold** and `code` only: the subset the write-up uses."""
    out = html.escape(str(text))
    parts = out.split("`")
    out = "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))
    parts = out.split("**")
    return "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(parts))


def to_html(secs: Sequence[Section], folder: Path | None = None) -> str:
    """One self-contained page (images embedded as data URIs when `folder` holds them)."""
    body: list[str] = []
    for i, sec in enumerate(secs):
        tag = "h1" if i == 0 else "h2"
        body.append(f"<{tag}>{html.escape(sec.title)}</{tag}>")
        for blk in sec.blocks:
            if blk.kind == "para":
                body.append(f"<p>{_inline_html(blk.text)}</p>")
            elif blk.kind == "alert":
                body.append(f"<div class='alert'>{_inline_html(blk.text)}</div>")
            elif blk.kind == "code":
                body.append(f"<pre><code>{html.escape(blk.text)}</code></pre>")
            elif blk.kind == "bullets":
                body.append("<ul>" + "".join(f"<li>{_inline_html(it)}</li>" for it in blk.items) + "</ul>")
            elif blk.kind == "table":
                head = "".join(f"<th>{_inline_html(h)}</th>" for h in blk.header)
                rows = "".join("<tr>" + "".join(f"<td>{_inline_html(v)}</td>" for v in r) + "</tr>" for r in blk.rows)
                body.append(f"<table><tr>{head}</tr>{rows}</table>")
            elif blk.kind == "image":
                src = blk.image
                if folder is not None and (folder / blk.image).exists():
                    src = "data:image/png;base64," + base64.b64encode((folder / blk.image).read_bytes()).decode()
                body.append(f"<img alt='{html.escape(blk.text)}' src='{src}'>")
    title = html.escape(secs[0].title if secs else "compare")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title><style>{_CSS}</style></head>"
            f"<body>{''.join(body)}</body></html>\n")


# --------------------------------------------------------------------------- plots


def plot_fold_deltas(c: Comparison, path: Path) -> Path:
    """Bars of B - A per fold (paired), or both runs' own fold scores side by side when folds differ."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.2), dpi=110)
    ax = fig.subplots()
    if c.paired is not None:
        d = np.asarray(c.paired.fold_deltas)
        ax.bar(range(len(d)), d, color=["#2e7d32" if x > 0 else "#c62828" for x in d])
        ax.axhline(0, color="black", lw=0.8)
        ax.axhline(d.mean(), color="#1565c0", ls="--", lw=1, label=f"mean {d.mean():+.4f}")
        ax.set_title(f"B - A per fold ({c.b.metric}); paired t p={_p(c.paired.p_t)}", fontsize=10)
        ax.legend(fontsize=8)
    else:
        ka, kb = len(c.a.fold_scores), len(c.b.fold_scores)
        ax.bar(np.arange(ka) - 0.2, c.a.fold_scores, width=0.4, label="A (own split)", color="#90a4ae")
        ax.bar(np.arange(kb) + 0.2, c.b.fold_scores, width=0.4, label="B (own split)", color="#5c6bc0")
        lo = min(min(c.a.fold_scores, default=0), min(c.b.fold_scores, default=0))
        hi = max(max(c.a.fold_scores, default=1), max(c.b.fold_scores, default=1))
        pad = (hi - lo) * 0.5 + 1e-9
        ax.set_ylim(lo - pad, hi + pad)
        ax.set_title("FOLDS DIFFER: fold scores are not paired", fontsize=10, color="#c62828")
        ax.legend(fontsize=8)
    ax.set_xticks(range(max(len(c.a.fold_scores), len(c.b.fold_scores))))
    ax.set_xlabel("fold")
    fig.tight_layout()
    fig.savefig(path)
    return path


def plot_slice_grid(c: Comparison, path: Path) -> Path | None:
    """Heatmap: each slice's A and B scores (left) and B - A coloured by sign, marked ▲/▼ beyond noise (right)."""
    if not c.slices:
        return None
    from matplotlib.figure import Figure

    n = len(c.slices)
    fig = Figure(figsize=(8, 0.32 * n + 1.4), dpi=110)
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [2, 1]})
    scores = np.array([[s.score_a, s.score_b] for s in c.slices], dtype=float)
    left.imshow(np.ma.masked_invalid(scores), aspect="auto", cmap="viridis")
    lo, hi = np.nanmin(scores) if np.isfinite(scores).any() else 0, np.nanmax(scores) if np.isfinite(scores).any() else 1
    left.set_xticks([0, 1], ["A", "B"])
    left.set_yticks(range(n), [f"{s.name} ({s.rows})" for s in c.slices], fontsize=7)
    for i in range(n):
        for j in range(2):
            if not np.isnan(scores[i, j]):
                bright = (scores[i, j] - lo) / ((hi - lo) or 1) > 0.6  # viridis turns yellow at the top
                left.text(j, i, f"{scores[i, j]:.3f}", ha="center", va="center", fontsize=7,
                          color="black" if bright else "white")
    deltas = np.array([[s.delta] for s in c.slices], dtype=float)
    span = np.nanmax(np.abs(deltas)) if np.isfinite(deltas).any() else 1.0
    right.imshow(np.ma.masked_invalid(deltas), aspect="auto", cmap="RdYlGn", vmin=-span or -1, vmax=span or 1)
    right.set_xticks([0], ["B - A"])
    right.set_yticks([])
    marks = {"better": "▲", "worse": "▼", "within noise": "≈", "n/a": ""}
    for i, s in enumerate(c.slices):
        right.text(0, i, f"{marks[s.verdict]} {_fs(s.delta, 4)}", ha="center", va="center", fontsize=7)
    fig.suptitle(f"{c.b.metric} by slice (▲/▼: 95% bootstrap CI excludes 0)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    return path
