"""The sweep's live line: trials ended / pruned / failed / running and the best so far (rich, on stderr)."""

from __future__ import annotations

from foldwise.tasks.sweep_report import best_of, counts
from foldwise.workflows.tracking.sweep_book import SweepBook


class SweepProgress:
    """The live line, redrawn whenever the book changes (the book's watcher)."""

    def __init__(self, enabled: bool, total: int, metric: str) -> None:
        self.enabled, self.total, self.metric = enabled, total, metric
        self._progress = None
        self._task = None

    def __enter__(self) -> SweepProgress:
        if self.enabled:
            from rich.console import Console
            from rich.progress import Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(TextColumn("[bold]trials {task.completed}/{task.total}"), TimeElapsedColumn(),
                                      TextColumn("{task.description}"), console=Console(stderr=True))
            self._progress.start()
            self._task = self._progress.add_task("", total=self.total)
        return self

    def update(self, book: SweepBook) -> None:
        if self._progress is None:
            return
        self._progress.update(self._task, completed=len(book.ended()), description=describe(book, self.metric))

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()


def describe(book: SweepBook, metric: str) -> str:
    c = counts(book.outcomes())
    best = best_of(book.outcomes())
    best_text = f"best {best.cv_score:.5f} (trial {best.number})" if best else "none completed yet"
    return (f"{c['completed']} completed, {c['pruned']} pruned, {c['failed']} failed, "
            f"{sum(not r.replaying for r in book.live.values())} running; {best_text}")
