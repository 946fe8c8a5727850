"""Progress bars (rich) for every long job, silent when disabled or not on a terminal."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator


class _Bar:
    def __init__(self, progress, task):
        self._progress, self._task = progress, task

    def advance(self, n: int = 1) -> None:
        if self._progress is not None:
            self._progress.advance(self._task, n)


@contextmanager
def progress_bar(total: int | None, description: str, *, enabled: bool = True) -> Iterator[_Bar]:
    """``with progress_bar(n, "encoding") as bar: ... bar.advance(k)``."""
    if not enabled:
        yield _Bar(None, None)
        return
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    columns = [TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TimeRemainingColumn()]
    with Progress(*columns, transient=False) as progress:
        task = progress.add_task(description, total=total)
        yield _Bar(progress, task)
