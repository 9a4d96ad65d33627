"""One rich progress-bar style for every long job (drawing, caching, training, evaluation)."""
from __future__ import annotations

from rich.progress import BarColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.text import Text


class InfoColumn(ProgressColumn):
    """Free text a task may carry (`info=`), e.g. the running loss."""

    def render(self, task) -> Text:
        return Text(str(task.fields.get("info", "")))


def progress_bar(enabled: bool = True, console=None) -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                    InfoColumn(), TimeElapsedColumn(), TimeRemainingColumn(), disable=not enabled, console=console)
