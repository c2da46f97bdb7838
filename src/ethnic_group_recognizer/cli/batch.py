"""``egr embed``, ``egr embed-import`` and ``egr predict --engine ray``: batch jobs from the command line.

Why: at archive scale the embeddings (the slow part of ``egr train`` and ``egr clean``) are
computed once on a cluster; ``egr embed-import`` then seeds this machine's embedding cache from
that file, so cleaning and a ``--views mirror|full`` training read no pixels for those images
(the default ``crops`` views are embedded locally). The work itself lives in
:mod:`ethnic_group_recognizer.batch`; this module parses, calls, reports and picks the exit code.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ethnic_group_recognizer.cli.common import PlainUsage, fail_option
from ethnic_group_recognizer.config import Config
from ethnic_group_recognizer.console import fail, stderr

if TYPE_CHECKING:  # pragma: no cover - typing only
    from ethnic_group_recognizer.batch.jobs import RunSummary

app = typer.Typer()

#: What a batch job may raise for a bad argument, a bad input folder or a missing extra.
#: (MissingExtraError is a RuntimeError, as is a backbone that needs the train extra to export.)
JOB_ERRORS: tuple[type[Exception], ...] = (FileNotFoundError, ValueError, RuntimeError, ConnectionError)


def finish_batch_command(summary: RunSummary, verb: str) -> None:
    """A batch command's last step: the summary line, then exit 2 for no inputs, 1 for nothing readable."""
    stderr.print(summary.describe(verb), markup=False, highlight=False, soft_wrap=True)
    if summary.inputs == 0:
        fail("no images found in the given paths")
    if summary.processed and summary.usable == 0:
        fail("no input image could be read", code=1)


def run_ray_predict(
    paths: list[str],
    *,
    config: Config,
    model: Path | None,
    address: str | None,
    out: Path | None,
    jsonl: bool,
    threshold: float | None,
) -> None:
    """``egr predict SOURCE... --engine ray --out DIR``: Parquet parts in DIR, JSONL in DIR on request."""
    from ethnic_group_recognizer.batch.jobs import predict_to_parquet

    if out is None:
        fail("--engine ray writes a Parquet results folder: give it with --out DIR")
    try:
        summary = predict_to_parquet(
            paths, out, model, address=address, jsonl=jsonl, config=config, threshold=threshold
        )
    except JOB_ERRORS as error:
        fail(str(error))
    finish_batch_command(summary, "predicted")


@app.command("embed", cls=PlainUsage)
def embed(
    sources: Annotated[
        list[str],
        typer.Argument(
            metavar="SOURCE...", help="Image files, folders, globs, URLs, or .txt/.parquet lists of them."
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Embeddings Parquet folder to create or resume.")],
    engine: Annotated[str, typer.Option(help="local (this process) or ray (Ray Data).")] = "local",
    address: Annotated[
        str | None, typer.Option(help="ray: address of an existing cluster (default: a local Ray).")
    ] = None,
    backbone: Annotated[
        str, typer.Option(help="lite0 (default, 13 MB) or lite2 (larger, slower).")
    ] = "lite0",
    batch_size: Annotated[
        int, typer.Option(help="Photos per model call (1, the default, is the fastest measured on 2 cores).")
    ] = 1,
    mirror: Annotated[
        bool, typer.Option(help="Also store the mirror-image embedding (training uses both).")
    ] = True,
) -> None:
    """Embed images with the frozen backbone into Parquet: path, sha256, embedding(s), error."""
    from ethnic_group_recognizer.batch.engine import parse_engine
    from ethnic_group_recognizer.batch.jobs import embed_to_parquet

    try:
        engine_name = parse_engine(engine)
        config = Config(backbone=backbone, batch_size=batch_size)  # type: ignore[arg-type] - checked here
    except ValueError as error:
        fail_option(error)
    try:
        summary = embed_to_parquet(
            sources, out, backbone, engine=engine_name, address=address, config=config, mirror=mirror
        )
    except JOB_ERRORS as error:
        fail(str(error))
    finish_batch_command(summary, "embedded")


@app.command("embed-import", cls=PlainUsage)
def embed_import(
    files: Annotated[
        list[Path], typer.Argument(metavar="EMB.parquet...", help="Embeddings written by 'egr embed'.")
    ],
    backbone: Annotated[
        str | None, typer.Option(help="Backbone to file them under (default: as stored in the file).")
    ] = None,
) -> None:
    """Seed this machine's embedding cache (the photo and its mirror), so that clean and a
    --views mirror|full training read no pixels for these images (--views crops embeds its crops here)."""
    from ethnic_group_recognizer.batch.embeddings import seed_embedding_cache

    for path in files:
        try:
            counts = seed_embedding_cache(path, backbone)
        except JOB_ERRORS as error:
            fail(str(error))
        stderr.print(
            f"{path}: cached {counts['plain']} embeddings and {counts['mirror']} mirrored",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
