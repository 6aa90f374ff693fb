"""What a user watches and reads: one progress bar for long work, and the result tables
the CLI prints (API functions return :class:`Table` values, so the CLI only prints)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Table:
    """A titled table of already formatted cells."""

    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)


def progress(enabled: bool = True, eta: bool = False):
    """The progress bar every long job shows: description, bar, done of total, elapsed
    (and, with ``eta``, the time left). Use as a context manager (rich's ``Progress``)."""
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn()]
    if eta:
        columns += [TextColumn("ETA"), TimeRemainingColumn()]
    return Progress(*columns, disable=not enabled, transient=False)


__all__ = ["Table", "progress"]
