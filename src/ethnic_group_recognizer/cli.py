"""``egr``: a thin Typer layer over the Python API. Each command parses, calls, prints."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from ethnic_group_recognizer.config import Config

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
data_app = typer.Typer(no_args_is_help=True, help="Dataset folders and their manifests.")
app.add_typer(data_app, name="data")
stderr = Console(stderr=True)

#: Modules that add their own commands with ``register(app)``; one line each, one owner each.
COMMAND_MODULES: list[str] = []


def fail(message: str, code: int = 2) -> None:
    stderr.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)


@data_app.command("import")
def data_import(
    sources: Annotated[
        list[Path], typer.Argument(help="Folders of class folders, class folders or image files.")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Dataset folder to create or extend.")],
    link: Annotated[bool, typer.Option(help="Symlink instead of copying.")] = False,
    label: Annotated[str | None, typer.Option(help="Force one label for every imported file.")] = None,
) -> None:
    """Import images into a dataset folder (idempotent); an 'other' folder at any depth is the abstain class."""
    from ethnic_group_recognizer.dataset import Dataset, import_images

    try:
        stats = import_images(sources, out, link=link, label=label)
    except FileNotFoundError as error:
        fail(str(error))
    counts = Dataset(out).counts()
    stderr.print(
        f"imported {stats['imported']}, already present {stats['skipped']}, unreadable {stats['unreadable']}"
    )
    table = Table("label", "usable images")
    for name, count in counts.items():
        table.add_row(name, str(count))
    Console().print(table)


@data_app.command("info")
def data_info(dataset: Path) -> None:
    """Refresh a dataset's manifest and show per-class counts and unreadable files."""
    from ethnic_group_recognizer.dataset import STATUS_ERROR, Dataset

    try:
        ds = Dataset.open(dataset)
    except FileNotFoundError as error:
        fail(str(error))
    table = Table("label", "usable images")
    for name, count in ds.counts().items():
        table.add_row(name, str(count))
    Console().print(table)
    for record in ds.records.values():
        if record.status == STATUS_ERROR:
            stderr.print(f"unreadable: {record.path}: {record.error}")


def _register_plugins() -> None:
    for name in COMMAND_MODULES:
        importlib.import_module(f"ethnic_group_recognizer.{name}").register(app)


_register_plugins()


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())

__all__ = ["app", "Config", "json"]
