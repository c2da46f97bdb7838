"""``egr demo``: the Gradio UI on its own (needs the optional ``demo`` extra).

The UI itself is :mod:`ethnic_group_recognizer.serve.gradio.ui` (``egr serve`` mounts the same
one at ``/gradio``). The CLI imports this module on every run, so it imports Gradio and the UI
only when the command runs. The CLI adds :data:`app` (one command, ``egr demo``) with ``add_typer``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer()


@app.command("demo")
def demo_command(
    model: Annotated[
        Path | None, typer.Option("--model", "-m", help="Model directory (default: the shipped model).")
    ] = None,
    host: Annotated[
        str, typer.Option(help="Interface to listen on; 0.0.0.0 exposes it to the network.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 7860,
    max_upload_mb: Annotated[
        float | None, typer.Option(help="Largest accepted photo in MiB (default: egr serve's limit).")
    ] = None,
) -> None:
    """Launch the Gradio UI on its own (needs the optional 'demo' extra)."""
    from ethnic_group_recognizer.console import fail
    from ethnic_group_recognizer.serve.gradio.ui import INSTALL_HINT, build_demo, gradio_available
    from ethnic_group_recognizer.serve.settings import upload_bytes_from_mb

    if not gradio_available():
        fail(f"the Gradio demo needs the optional extra: {INSTALL_HINT}")
    from ethnic_group_recognizer.model import Recognizer
    from ethnic_group_recognizer.serve.errors import DEFAULT_MAX_UPLOAD_BYTES

    try:
        max_bytes = DEFAULT_MAX_UPLOAD_BYTES if max_upload_mb is None else upload_bytes_from_mb(max_upload_mb)
        recognizer = Recognizer.load(model)
    except (FileNotFoundError, ValueError) as error:
        fail(str(error))
    build_demo(recognizer, max_upload_bytes=max_bytes).launch(
        server_name=host, server_port=port, max_file_size=max_bytes, show_error=True, run_history=False
    )
