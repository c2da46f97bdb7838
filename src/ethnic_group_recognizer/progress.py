"""The one progress bar of the package: rich, on stderr, so stdout stays clean for --jsonl."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

T = TypeVar("T")
_stderr = Console(stderr=True)


def progress(
    items: Iterable[T],
    description: str,
    disable: bool = False,
    total: int | None = None,
    weight: Callable[[T], int] | None = None,
) -> Iterator[T]:
    """Yield ``items`` while drawing a progress bar on stderr.

    ``weight`` says how many units one item stands for (the rows of a result table, say), so the
    bar counts what a person cares about rather than how the work happened to be chunked; without
    it every item is one. Silent when there is nothing to do (``total`` is 0): no empty "0/0" bar.
    """
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    if disable or total == 0:
        yield from items
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=_stderr, transient=False) as bar:
        task = bar.add_task(description, total=total)
        for item in items:
            yield item
            bar.advance(task, 1 if weight is None else weight(item))
