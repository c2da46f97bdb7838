"""``egr embed`` and ``egr embed-import``: backbone embeddings as Parquet, computed here or on Ray.

Why: at archive scale the embeddings (the slow part of ``egr train`` and ``egr clean``) are
computed once on a cluster; ``egr embed-import`` then seeds this machine's embedding cache from
that file, so training and cleaning read no pixels for those images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ethnic_group_recognizer.console import fail as _fail
from ethnic_group_recognizer.console import stderr


def register(app: typer.Typer) -> None:
    """Add ``embed`` and ``embed-import`` to the ``egr`` app."""

    @app.command("embed")
    def embed(
        sources: Annotated[
            list[str],
            typer.Argument(help="Image files, folders, globs, URLs, or .txt/.parquet lists of them."),
        ],
        out: Annotated[
            Path, typer.Option("--out", "-o", help="Embeddings Parquet folder to create or resume.")
        ],
        engine: Annotated[str, typer.Option(help="local (this process) or ray (Ray Data).")] = "local",
        address: Annotated[
            str | None, typer.Option(help="ray: address of an existing cluster (default: a local Ray).")
        ] = None,
        backbone: Annotated[
            str, typer.Option(help="lite0 (default, 13 MB) or lite2 (larger, slower).")
        ] = "lite0",
        batch_size: Annotated[int, typer.Option(help="Images per model call.")] = 32,
        mirror: Annotated[
            bool, typer.Option(help="Also store the mirror-image embedding (training uses both).")
        ] = True,
    ) -> None:
        """Embed images with the frozen backbone into Parquet: path, sha256, embedding(s), error."""
        from ethnic_group_recognizer.distributed import MissingExtraError, embed_to_parquet, finish_command

        if engine not in ("local", "ray"):
            _fail(f"unknown engine {engine!r}: use 'local' or 'ray'")
        try:
            summary = embed_to_parquet(
                sources,
                out,
                backbone,
                engine=engine,
                address=address,
                batch_size=batch_size,
                mirror=mirror,
            )
        except (MissingExtraError, FileNotFoundError, ValueError, RuntimeError) as error:
            _fail(str(error))
        finish_command(summary, "embedded")

    @app.command("embed-import")
    def embed_import(
        files: Annotated[list[Path], typer.Argument(help="Embeddings written by 'egr embed'.")],
        backbone: Annotated[
            str | None, typer.Option(help="Backbone to file them under (default: as stored in the file).")
        ] = None,
    ) -> None:
        """Seed this machine's embedding cache, so that train and clean read no pixels for these images."""
        from ethnic_group_recognizer.distributed import MissingExtraError, seed_embedding_cache

        for path in files:
            try:
                counts = seed_embedding_cache(path, backbone)
            except (MissingExtraError, FileNotFoundError, ValueError) as error:
                _fail(str(error))
            stderr.print(f"{path}: cached {counts['plain']} embeddings and {counts['mirror']} mirrored")
