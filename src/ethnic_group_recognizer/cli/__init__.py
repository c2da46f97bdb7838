"""The ``egr`` command: one Typer app made of one sub-app per command group.

Each group is a module-level ``typer.Typer()`` in its own module (``cli/data.py``: data import
and info; ``cli/clean.py``: collect, clean, review; ``cli/model.py``: train, evaluate, predict;
``cli/batch.py``: embed, embed-import and the Ray side of predict), added here. ``egr serve`` and
``egr site build`` come from :mod:`ethnic_group_recognizer.serve.cli`, ``egr demo`` from
:mod:`ethnic_group_recognizer.demo`, each through its ``register`` hook; ``egr space build`` from
:mod:`ethnic_group_recognizer.space_cli`.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from typing import Annotated

import typer

from ethnic_group_recognizer import demo, space_cli
from ethnic_group_recognizer.cli import batch, clean, data, model
from ethnic_group_recognizer.serve import cli as serve_cli

#: What ``egr --help`` opens with: what the tool does, for the person who just installed it.
HELP = """Recognise what a photo shows, with the shipped model (traditional dress, adornment, crafts
and festivals) or one trained on your own classes, and say "none of these" when it shows none
of them.

Your own model: egr data import, egr clean, egr train, egr evaluate, then egr serve or egr predict.
'egr COMMAND --help' explains each command."""

DISTRIBUTION = "ethnic-group-recognizer"

app = typer.Typer(no_args_is_help=True, add_completion=False, help=HELP)


def package_version() -> str:
    """The installed package's version (``pyproject.toml``), as ``pip show`` reports it."""
    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def _print_version(requested: bool) -> None:
    if requested:
        typer.echo(f"egr {package_version()}")
        raise typer.Exit()


@app.callback()
def main(
    show_version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """(The text of ``egr --help`` is :data:`HELP`.)"""


def _registered(register: Callable[[typer.Typer], None]) -> typer.Typer:
    """A module's ``register(app)`` hook applied to a sub-app of its own, so --help keeps this order."""
    sub_app = typer.Typer()
    register(sub_app)
    return sub_app


app.add_typer(data.app, name="data")
app.add_typer(clean.app)  # collect, clean, review
app.add_typer(model.app)  # train, evaluate, predict
app.add_typer(_registered(serve_cli.register))  # serve, site build
app.add_typer(demo.app)  # demo
app.add_typer(batch.app)  # embed, embed-import
app.add_typer(space_cli.app, name="space")  # space build
