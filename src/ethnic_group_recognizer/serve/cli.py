"""``egr serve`` and ``egr site build``: thin wrappers over :func:`create_app` and :func:`build_site`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ethnic_group_recognizer.console import fail as _fail
from ethnic_group_recognizer.console import stderr

site_app = typer.Typer(no_args_is_help=True, help="The web app as a static site.")


def serve(
    model: Annotated[Path | None, typer.Option(help="Model directory (default: the shipped model).")] = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    cors_origins: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated origins allowed to call the API ('*': any; default $EGR_CORS_ORIGINS)."
        ),
    ] = None,
    max_upload_mb: Annotated[
        float, typer.Option(help="Largest accepted image, in MiB (1 MiB = 1,048,576 bytes).")
    ] = 10.0,
    examples: Annotated[
        Path | None,
        typer.Option(help="Folder of example photos for the gallery (e.g. ../shared/data/examples)."),
    ] = None,
    batching: Annotated[
        bool,
        typer.Option(
            help="Batch concurrent requests into one model call (off: no gain on CPU, see docs/SERVING.md)."
        ),
    ] = False,
    max_batch_size: Annotated[int, typer.Option(help="Most photos per batched model call.")] = 8,
    batch_wait_ms: Annotated[float, typer.Option(help="How long a request may wait for company.")] = 5.0,
    batch_concurrency: Annotated[int, typer.Option(help="Batches that may run at once.")] = 2,
    threads: Annotated[int, typer.Option(help="Thread-pool size; 0 = one per core.")] = 0,
    onnx_threads: Annotated[
        int, typer.Option(help="onnxruntime threads per model call; 0 = one per core.")
    ] = 1,
    access_log: Annotated[
        bool, typer.Option(help="Log one line per request (method, path, status; never bodies).")
    ] = True,
) -> None:
    """Serve the API (/api/v1, /docs) and the web app (/) with uvicorn."""
    import uvicorn

    from ethnic_group_recognizer.serve.app import ServeSettings, create_app, parse_origins

    try:
        settings = ServeSettings(
            model_dir=model,
            host=host,
            port=port,
            max_upload_bytes=int(max_upload_mb * 1024 * 1024),
            examples_dir=examples,
            batching=batching,
            max_batch_size=max_batch_size,
            batch_wait_ms=batch_wait_ms,
            batch_concurrency=batch_concurrency,
            threads=threads,
            onnx_threads=onnx_threads,
            **({"cors_origins": parse_origins(cors_origins)} if cors_origins is not None else {}),
        )
        app = create_app(settings)
    except (FileNotFoundError, ValueError) as error:
        _fail(str(error))
    stderr.print(
        f"serving {app.state.recognizer.name} {app.state.recognizer.version} on http://{host}:{port}/"
    )
    # Access log lines carry method, path and status only; request bodies are never logged.
    uvicorn.run(app, host=host, port=port, log_level="info", access_log=access_log)


@site_app.command("build")
def site_build(
    api_url: Annotated[
        str, typer.Option(help="Base URL of the API the pages will call, e.g. https://api.example.org.")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write the static site to.")],
) -> None:
    """Write the web app as a static site that calls the API at --api-url (allow its origin with --cors-origins)."""
    from ethnic_group_recognizer.site import build_site

    try:
        files = build_site(api_url, out)
    except (FileNotFoundError, ValueError) as error:
        _fail(str(error))
    stderr.print(f"wrote {len(files)} files to {out}; publish that folder on any static host")


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
    app.add_typer(site_app, name="site")
