"""The stderr console: progress, summaries, notices. stdout carries data only."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console


class _LazyConsole:
    """The stderr ``rich`` Console, created on first use.

    Importing rich.console costs 40-60 ms, which shell completion (run on every Tab) would
    pay for nothing; every command module imports ``err`` at the top.
    """

    _console: Console | None = None

    def get(self) -> Console:
        if self._console is None:
            from rich.console import Console

            self._console = Console(stderr=True, highlight=False, soft_wrap=True)
        return self._console

    def __getattr__(self, name: str) -> Any:
        return getattr(self.get(), name)


err = _LazyConsole()


def notice(message: str) -> None:
    err.print(f"[dim]{message}[/dim]")


@contextmanager
def progress(description: str, total: int | None = None,
             unit: str = "records") -> Iterator[Any]:
    """A progress bar on stderr when it is a terminal; a no-op advance function otherwise."""
    if not sys.stderr.isatty():
        yield lambda _n=1: None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    cols = [TextColumn("[progress.description]{task.description}"), BarColumn(),
            MofNCompleteColumn() if total else TextColumn(f"{{task.completed:,}} {unit}"),
            TaskProgressColumn(show_speed=True), TimeElapsedColumn()]
    with Progress(*cols, console=err.get(), transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n=1: bar.advance(task, n)
