"""``egr serve`` and ``egr site build``: flags to :class:`ServeSettings` and :func:`build_site` calls.

``egr serve`` hands :class:`~ethnic_group_recognizer.serve.settings.ServeSettings` only the
flags given on the command line; every other setting comes from its ``EGR_*`` environment
variable or its default there, so the environment is read, and every value checked, in one place.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ethnic_group_recognizer.console import fail as _fail
from ethnic_group_recognizer.console import stderr

site_app = typer.Typer(no_args_is_help=True, help="The web app as a static site.")


def serve(
    ctx: typer.Context,
    model: Annotated[Path | None, typer.Option(help="Model directory (default: the shipped model).")] = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    cors_origins: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated origins allowed to call the API ('*': any; also $EGR_CORS_ORIGINS)."
        ),
    ] = None,
    max_upload_mb: Annotated[
        float,
        typer.Option(
            help="Largest accepted image, in MiB (1 MiB = 1,048,576 bytes; above 0, at most 100; also $EGR_MAX_UPLOAD_MB).",
        ),
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
    max_uploads: Annotated[
        int,
        typer.Option(help="Uploads held in memory at once; more wait, then 503."),
    ] = 8,
    upload_wait_s: Annotated[
        float,
        typer.Option(help="How long an upload waits for a slot before a 503."),
    ] = 2.0,
    body_timeout_s: Annotated[
        float,
        typer.Option(help="Seconds the whole request body may take to arrive, then 408."),
    ] = 30.0,
    decode_timeout_s: Annotated[
        float,
        typer.Option(help="Seconds one image may take to decode, then 503."),
    ] = 10.0,
    decode_workers: Annotated[
        int,
        typer.Option(help="Image-decoding worker processes; 0 = one per core plus two."),
    ] = 0,
    explain_slots: Annotated[
        int,
        typer.Option(help="Explanations computed at once; more get 429."),
    ] = 1,
    max_parts: Annotated[int, typer.Option(help="Most parts in a multipart body, then 422.")] = 16,
) -> None:
    """Serve the API (/api/v1, /docs), the web app (/) and the Gradio UI (/gradio) with uvicorn.

    Every setting can also come from an EGR_* variable (EGR_MAX_UPLOAD_MB, EGR_CORS_ORIGINS, ...); a flag wins.
    """
    import uvicorn
    from pydantic import ValidationError

    from ethnic_group_recognizer.serve.app import create_app
    from ethnic_group_recognizer.serve.settings import ServeSettings, settings_error_lines

    flags = {
        "model_dir": model,
        "host": host,
        "port": port,
        "cors_origins": cors_origins,
        "max_upload_mb": max_upload_mb,
        "examples_dir": examples,
        "batching": batching,
        "max_batch_size": max_batch_size,
        "batch_wait_ms": batch_wait_ms,
        "batch_concurrency": batch_concurrency,
        "threads": threads,
        "onnx_threads": onnx_threads,
        "max_uploads": max_uploads,
        "upload_wait_s": upload_wait_s,
        "body_timeout_s": body_timeout_s,
        "decode_timeout_s": decode_timeout_s,
        "decode_workers": decode_workers,
        "explain_slots": explain_slots,
        "max_parts": max_parts,
    }
    names = {"model_dir": "model", "examples_dir": "examples"}
    given = _given_on_command_line(ctx)
    try:
        settings = ServeSettings(
            **{
                key: value
                for key, value in flags.items()
                if value is not None and names.get(key, key) in given
            }
        )
    except ValidationError as error:
        _fail("; ".join(settings_error_lines(error)))
    _check_port_free(settings.host, settings.port)
    try:
        app = create_app(settings)
    except (FileNotFoundError, ValueError) as error:
        _fail(str(error))
    stderr.print(
        f"serving {app.state.recognizer.name} {app.state.recognizer.version} "
        f"on http://{settings.host}:{settings.port}/"
    )
    # Access log lines carry method, path and status only; request bodies are never logged.
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="info", access_log=access_log)


def _check_port_free(host: str, port: int) -> None:
    """One clear line now, rather than uvicorn's error after the model has loaded."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        _fail(f"cannot listen on {host}:{port}: {error.strerror or error}")
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind(address)
        except OSError as error:
            _fail(
                f"cannot listen on {host}:{port}: {error.strerror or error} (is another server on it? pick --port)"
            )


def _given_on_command_line(ctx: typer.Context) -> set[str]:
    """Names of the parameters given as flags, not left at their default (nor taken from a default map)."""
    given = set()
    for name in ctx.params:
        source = ctx.get_parameter_source(name)
        if source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP"):
            given.add(name)
    return given


@site_app.command("build")
def site_build(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write the static site to.")],
    api_url: Annotated[
        str | None,
        typer.Option(help="Base URL of the API the pages will call, e.g. https://api.example.org."),
    ] = None,
    in_browser: Annotated[
        bool,
        typer.Option(
            "--in-browser",
            help="No server: the page runs the model in the visitor's browser (onnxruntime-web, fetched with npm).",
        ),
    ] = False,
    model: Annotated[
        Path | None, typer.Option(help="Model directory for --in-browser (default: the shipped model).")
    ] = None,
    weights: Annotated[
        str,
        typer.Option(help="--in-browser model weights: auto (fp16 if it keeps every label), fp16 or fp32."),
    ] = "auto",
    force: Annotated[
        bool,
        typer.Option(
            help="Write into a non-empty folder that is not a site egr built (it is all published)."
        ),
    ] = False,
) -> None:
    """Write the web app as a static site: calling the API at --api-url, or running the model in the browser."""
    if in_browser == (api_url is not None):
        _fail("give exactly one of --api-url URL (pages call that API) or --in-browser (no server)")
    if not in_browser and model is not None:
        _fail("--model is for --in-browser; an --api-url site uses the model of the server it calls")
    if in_browser:
        _site_build_in_browser(out, model, weights, force)
        return
    from ethnic_group_recognizer.site import build_site

    try:
        files = build_site(api_url, out, force=force)
    except (FileNotFoundError, ValueError) as error:
        _fail(str(error))
    stderr.print(f"wrote {len(files)} files to {out}; publish that folder on any static host")


def _site_build_in_browser(out: Path, model: Path | None, weights: str, force: bool) -> None:
    from ethnic_group_recognizer.site import build_in_browser_site
    from ethnic_group_recognizer.vendor_ort import RuntimeFetchError

    try:
        site = build_in_browser_site(out, model, weights, force=force)
    except (FileNotFoundError, ValueError, RuntimeFetchError) as error:
        _fail(str(error))
    facts = site.manifest
    stderr.print(
        f"wrote {len(site.files)} files to {out}: model {site.model_bytes / 1e6:.1f} MB "
        f"({site.notes[0]}), onnxruntime-web {facts['runtime']['version']} {site.runtime_bytes / 1e6:.1f} MB; "
        "publish that folder on any static host (a sub-path such as /project-name/ works)"
    )


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
    app.add_typer(site_app, name="site")
