"""What every ``egr`` command module shares: usage lines a person reads, option errors, plain text.

Parameters are checked once, by the options dataclasses (:class:`~ethnic_group_recognizer.config.Config`,
``TrainOptions``, …) in ``__post_init__``; a command builds them from its flags and turns their
ValueError into the one error exit with :func:`fail_option`.
"""

from __future__ import annotations

import re
from typing import NoReturn

import typer
from rich.console import Console
from rich.text import Text
from typer.core import TyperArgument, TyperCommand

from ethnic_group_recognizer.console import fail
from ethnic_group_recognizer.dataset import printable

#: ``"batch_size must be …"``: the options dataclasses name the field first.
_FIELD_FIRST = re.compile(r"^([a-z][a-z0-9]*(?:_[a-z0-9]+)*) must ")
#: Wide enough that a table piped to a file never folds a path; a terminal uses its own width.
PIPE_WIDTH = 10_000


class PlainUsage(TyperCommand):
    """A usage line as the README writes it: ``egr predict [OPTIONS] PATH...``, not ``{paths}...``."""

    def collect_usage_pieces(self, ctx: typer.Context) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if not isinstance(param, TyperArgument):
                continue
            name = param.metavar or (param.name or "ARG").upper()
            if param.nargs != 1 and not name.endswith("..."):
                name += "..."
            pieces.append(name if param.required else f"[{name}]")
        return pieces


def fail_option(error: ValueError) -> NoReturn:
    """Exit 2 with an options dataclass's message, its field named as the flag (``--batch-size``)."""
    message = str(error)
    field = _FIELD_FIRST.match(message)
    if field:
        message = f"--{field[1].replace('_', '-')}{message[field.end(1) :]}"
    fail(message)


def plain(text: object) -> Text:
    """A table cell shown as it is: no markup (``[draft]``), control characters escaped."""
    return Text(printable(str(text)))


def stdout_console() -> Console:
    """The console for results on stdout: no markup or highlighting; piped, it never folds lines."""
    console = Console(highlight=False, markup=False)
    if not console.is_terminal:
        console = Console(highlight=False, markup=False, width=PIPE_WIDTH)
    return console
