"""``egr space build``: the Typer command over :func:`ethnic_group_recognizer.space.build_space`.

Added to ``egr`` with ``app.add_typer(space_cli.app, name="space")``; it parses, calls, prints.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ethnic_group_recognizer.console import fail, stderr
from ethnic_group_recognizer.model_dir import ModelError
from ethnic_group_recognizer.space import DEFAULT_LICENSE, PLACEHOLDER_SOURCE, SpaceError, build_space

app = typer.Typer(no_args_is_help=True, help="Deploy a model as a Hugging Face Space.")


@app.callback()
def space() -> None:
    """Deploy a model as a Hugging Face Space (a Gradio app, its requirements and the model)."""


@app.command("build")
def space_command(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write the Space into (empty or new).")],
    model: Annotated[
        Path | None, typer.Option("--model", "-m", help="Model directory (default: the shipped model).")
    ] = None,
    source: Annotated[
        str,
        typer.Option(
            help="Where the Space installs this product from: a pip URL such as "
            "git+https://github.com/you/ethnic-group-recognizer.git@v0.1.0, or a local checkout "
            "folder (for trying the Space on this machine). The default is a placeholder to replace."
        ),
    ] = PLACEHOLDER_SOURCE,
    requirement: Annotated[
        str | None,
        typer.Option(help="The whole requirements.txt line instead of --source (one pip requirement)."),
    ] = None,
    title: Annotated[
        str | None, typer.Option(help="The Space's title (default: the model's title or name).")
    ] = None,
    license_id: Annotated[
        str, typer.Option("--license", help="Licence identifier in the Space card.")
    ] = DEFAULT_LICENSE,
    force: Annotated[
        bool, typer.Option("--force", help="Replace the Space files in a non-empty --out.")
    ] = False,
) -> None:
    """Write a complete Gradio Space: app.py, requirements.txt, README.md and the model."""
    try:
        written = build_space(
            out,
            model,
            source,
            requirement=requirement,
            title=title,
            license_id=license_id,
            force=force,
        )
    except (SpaceError, ModelError) as error:
        fail(str(error))
    typer.echo(f"wrote a Gradio Space to {written}")
    if requirement is None and source == PLACEHOLDER_SOURCE:
        stderr.print(
            f"warning: requirements.txt installs from the placeholder {PLACEHOLDER_SOURCE}; "
            "rebuild with --source git+https://<your repository> before pushing the Space",
            markup=False,
            soft_wrap=True,
        )
