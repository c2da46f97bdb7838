"""The HTTP server: the REST API under ``/api/v1``, health probes, docs, and the web app at ``/``.

``create_app(ServeSettings(...))`` returns a FastAPI app; ``egr serve`` runs it with uvicorn.
This module only assembles: it loads the model, builds the shared machinery (thread pool,
micro-batcher, decode workers, admission slots) onto ``app.state``, and includes the routers of
``serve/routes/``, the Gradio-3 routes (``serve/legacy.py``) and the Gradio UI
(``serve/gradio/``), which all work through :mod:`~ethnic_group_recognizer.serve.core`.

Uploads are read into memory, decoded, classified and dropped: nothing is written to disk and no
request body is logged (uvicorn's access log records paths only). Model calls run in a thread
pool sized to the cores, through a micro-batcher when batching is on, so the event loop stays free.
Decoding runs in killable worker processes with a deadline (``serve/decode_worker.py``); uploads
held in memory, explanations and body-read time are bounded (``serve/limits.py``, docs/SERVING.md
"Limits and hardening").
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from PIL import Image

from ethnic_group_recognizer.config import PACKAGE_DIR, Config
from ethnic_group_recognizer.model import Recognizer
from ethnic_group_recognizer.serve.batching import MicroBatcher
from ethnic_group_recognizer.serve.core import (  # noqa: F401 - labels_payload, model_card_text re-exported for callers of serve.app
    API,
    labels_payload,
    model_card_text,
    model_texts,
    run_blocking,
)
from ethnic_group_recognizer.serve.decode_worker import DecodePool
from ethnic_group_recognizer.serve.docs import install_docs
from ethnic_group_recognizer.serve.errors import error_body, install_error_handlers
from ethnic_group_recognizer.serve.examples import scan_examples
from ethnic_group_recognizer.serve.gradio.mount import mount_gradio
from ethnic_group_recognizer.serve.legacy import legacy_router
from ethnic_group_recognizer.serve.limits import BodyDeadlineMiddleware, Slots
from ethnic_group_recognizer.serve.routes import examples, health, model, predict
from ethnic_group_recognizer.serve.settings import (  # noqa: F401 - re-exported: callers import them from here
    CORS_ENV,
    MAX_UPLOAD_MB_CEILING,
    MIB,
    ServeSettings,
    cors_origins_from_env,
    parse_origins,
    upload_bytes_from_mb,
)

log = logging.getLogger(__name__)

#: The static web app (plain HTML/CSS/JS, no build step), shipped as package data.
WEB_DIR = PACKAGE_DIR / "web"


def _onnxruntime_without_telemetry() -> None:
    """Stop onnxruntime's telemetry: the product promises to keep nothing about its users.

    onnxruntime (recent releases, on Linux too) writes a device id and an event store under
    ``~/.cache/Microsoft`` when it is first imported, unless ``ORT_DISABLE_TELEMETRY`` is set
    then; ``disable_telemetry_events`` stops the events of an onnxruntime imported earlier.
    """
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    import onnxruntime

    with contextlib.suppress(AttributeError):
        onnxruntime.disable_telemetry_events()


def _describe(recognizer: Recognizer) -> dict[str, str]:
    """OpenAPI title, summary and description, in the model's own words."""
    texts = model_texts(recognizer)
    count = len(texts.labels)
    abstains = (
        f'`label` is null when the photo shows none of the model\'s {count} labels ("{texts.abstain_text}"); '
        if texts.can_abstain
        else 'This model cannot answer "none of these" (it was trained without `other` photos): `label` '
        f"is always one of its {count} labels. "
    )
    return {
        "title": texts.title,
        "summary": texts.summary,
        "description": (
            "Recognises what a photograph shows, never who a person is: there is no face detection. "
            f"{abstains}"
            "`prediction_set` lists the labels that together hold the right one for `coverage` of photos. "
            "Labels backed by few training images are flagged `low_data`. Uploads are processed in memory "
            "and never stored or logged."
        ),
    }


def create_app(settings: ServeSettings | None = None, recognizer: Recognizer | None = None) -> FastAPI:
    """Build the server: load the model, set up the thread pool and batcher, register every route."""
    settings = settings or ServeSettings()
    _onnxruntime_without_telemetry()
    recognizer = recognizer or Recognizer.load(
        settings.model_dir, Config(threads=settings.onnx_threads or settings.worker_threads)
    )
    executor = ThreadPoolExecutor(max_workers=settings.worker_threads, thread_name_prefix="egr-infer")
    batcher = (
        MicroBatcher(
            recognizer.probabilities,
            executor,
            max_batch_size=settings.max_batch_size,
            wait_s=settings.batch_wait_ms / 1000,
            max_in_flight=settings.batch_concurrency,
        )
        if settings.batching
        else None
    )
    decoder = DecodePool(
        settings.decode_processes, settings.decode_timeout_s, recognizer.config, recognizer.decode_side
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await decoder.start()
        app.state.decoder = decoder
        # One warm-up call, so the first real request does not pay onnxruntime's start-up.
        await run_blocking(app, recognizer.probabilities, [Image.new("RGB", (64, 64), (128, 128, 128))])
        app.state.ready = True
        try:
            yield
        finally:
            app.state.ready = False
            app.state.decoder = None
            await decoder.close()
            if batcher is not None:
                await batcher.close()
            executor.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(
        version=recognizer.version,
        lifespan=lifespan,
        docs_url=None,  # /docs and /redoc come from serve/docs.py: Swagger UI 5, offline
        redoc_url=None,
        **_describe(recognizer),
    )
    app.state.settings = settings
    app.state.recognizer = recognizer
    app.state.executor = executor
    app.state.batcher = batcher
    app.state.examples = scan_examples(settings.examples_dir, recognizer.labels)
    app.state.ready = False
    app.state.decoder = None  # the DecodePool, once the server has started
    app.state.upload_slots = Slots(
        settings.max_uploads,
        settings.upload_wait_s,
        503,
        "uploads",
        retry_after_s=max(1.0, settings.upload_wait_s),
    )
    app.state.explain_slots = Slots(settings.explain_slots, 0, 429, "explanations", retry_after_s=2)
    install_error_handlers(app)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, error: Exception) -> JSONResponse:
        log.error("unexpected %s while serving a request", type(error).__name__)  # never the body
        return JSONResponse(error_body(500, "internal error; the request was not stored"), status_code=500)

    if settings.cors_origins:
        allow_all = "*" in settings.cors_origins
        app.add_middleware(
            CORSMiddleware,
            allow_origins=["*"] if allow_all else settings.cors_origins,
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["Content-Type"],
            allow_credentials=False,
            max_age=600,
        )
    app.add_middleware(BodyDeadlineMiddleware, timeout_s=settings.body_timeout_s)

    @app.middleware("http")
    async def _headers(request: Request, call_next: Callable) -> Any:
        response = await call_next(request)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        if request.url.path.startswith(f"{API}/predict"):
            response.headers["Cache-Control"] = "no-store"
        return response

    install_docs(app)
    for router in (health.router, predict.router, model.router, examples.router, legacy_router()):
        app.include_router(router)
    mount_gradio(app)
    if WEB_DIR.is_dir():
        _redirect_bare_page_names(app)
        app.mount("/", StaticFiles(directory=WEB_DIR, html=True), name="web")
    return app


def _redirect_bare_page_names(app: FastAPI) -> None:
    """``/about`` -> ``about.html`` (people type the page's name; StaticFiles only knows files).

    The redirect is relative, so it also works behind a proxy that serves the app under a prefix.
    """
    for page in sorted(WEB_DIR.glob("*.html")):
        if page.stem == "index":
            continue
        app.add_api_route(
            f"/{page.stem}", _redirect_to(page.name), methods=["GET", "HEAD"], include_in_schema=False
        )


def _redirect_to(target: str) -> Callable[[], Any]:
    """An endpoint with no parameters (so no query string can choose where it sends anyone)."""

    async def redirect() -> RedirectResponse:
        return RedirectResponse(target, status_code=308)

    return redirect
