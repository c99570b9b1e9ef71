"""Progress shown on long work: a bar of folds done, on stderr."""

from __future__ import annotations


class FoldProgress:
    """A rich progress bar of folds done (on stderr), or nothing when disabled."""

    def __init__(self, enabled: bool, total: int, done: int = 0) -> None:
        self.enabled, self.total, self.done = enabled, total, done
        self._progress = None

    def __enter__(self) -> FoldProgress:
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(TextColumn("[bold]folds"), BarColumn(), MofNCompleteColumn(),
                                      TimeElapsedColumn(), TextColumn("{task.description}"),
                                      console=Console(stderr=True))
            self._progress.start()
            self._task = self._progress.add_task(f"{self.done} from the cache" if self.done else "",
                                                 total=self.total, completed=self.done)
        return self

    def advance(self, description: str) -> None:
        if self._progress is not None:
            self._progress.update(self._task, advance=1, description=description)

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

