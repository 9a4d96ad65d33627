"""One rich progress-bar style for every long job (drawing, caching, training, evaluation)."""
from __future__ import annotations

from rich.progress import BarColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.text import Text


class InfoColumn(ProgressColumn):
    """Free text a task may carry (`info=`), e.g. the running loss."""

    def render(self, task) -> Text:
        return Text(str(task.fields.get("info", "")))


_SILENT = []  # non-empty in a process whose bars would fight another's on one terminal (a study's worker)


def silence_progress() -> None:
    """Every bar of this process hidden from now on, transformers' too: the process that started it shows one bar for
    all."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    _SILENT.append(True)


def progress_bar(enabled: bool = True, console=None) -> Progress:
    enabled = enabled and not _SILENT
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                    InfoColumn(), TimeElapsedColumn(), TimeRemainingColumn(), disable=not enabled, console=console)
