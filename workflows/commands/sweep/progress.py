"""The sweep's live line: trials ended / pruned / failed / running and the best so far (rich, on stderr)."""

from __future__ import annotations

import time

import numpy as np

from foldwise.workflows.tracking.sweep_book import SweepBook

REDRAW_SECONDS = 0.2  # at most five redraws a second, however fast trials end


class SweepProgress:
    """The live line, redrawn whenever the book changes (the book's watcher)."""

    def __init__(self, enabled: bool, total: int, metric: str) -> None:
        self.enabled, self.total, self.metric = enabled, total, metric
        self._progress = None
        self._task = None
        self._drawn = 0.0

    def __enter__(self) -> SweepProgress:
        if self.enabled:
            from rich.console import Console
            from rich.progress import Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(TextColumn("[bold]trials {task.completed}/{task.total}"), TimeElapsedColumn(),
                                      TextColumn("{task.description}"), console=Console(stderr=True))
            self._progress.start()
            self._task = self._progress.add_task("", total=self.total)
        return self

    def update(self, book: SweepBook, force: bool = False) -> None:
        if self._progress is None or (not force and time.monotonic() - self._drawn < REDRAW_SECONDS):
            return
        self._drawn = time.monotonic()
        self._progress.update(self._task, completed=book.tally()["total"], description=describe(book, self.metric))

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()


def describe(book: SweepBook, metric: str) -> str:
    """The live line's text, from the book's running tallies (no pass over every trial)."""
    c = book.tally()
    best = book.best
    best_text = (f"best {float(np.mean(list(best.fold_scores.values()))):.5f} (trial {best.number})" if best
                 else "none completed yet")
    return f"{c['completed']} completed, {c['pruned']} pruned, {c['failed']} failed, {book.running} running; {best_text}"
