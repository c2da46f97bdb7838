"""The one stderr console of the CLI and its error exit, shared by every command module."""

from __future__ import annotations

from typing import NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from ethnic_group_recognizer.dataset import printable

stderr = Console(stderr=True)


def fail(message: str, code: int = 2) -> NoReturn:
    """Print ``error: message`` on stderr and exit with ``code`` (2: bad input, 1: nothing usable).

    The message is escaped: a path like ``photos/[draft]/a.jpg`` is no markup tag, and control
    characters in a file name are shown as escapes, so the message is one line. ``soft_wrap``
    keeps a long path on one line, so it can be copied.
    """
    stderr.print(f"[bold red]error:[/] {escape(printable(message))}", soft_wrap=True)
    raise typer.Exit(code)
