"""The HTTP server: the REST API under ``/api/v1``, health probes, and the web app at ``/``.

``create_app(ServeSettings(...))`` returns a FastAPI app; ``egr serve`` runs it with uvicorn.
Uploads are read into memory, decoded, classified and dropped: nothing is written to disk and no
request body is logged (uvicorn's access log records paths only). Model calls run in a thread
pool sized to the cores, through a micro-batcher when batching is on, so the event loop stays free.
Decoding runs in killable worker processes with a deadline (``serve/decode_worker.py``); uploads
held in memory, explanations and body-read time are bounded (``serve/limits.py``, docs/SERVING.md
"Limits and hardening").
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import os
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from fastapi import FastAPI, Query, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse
from fastapi.staticfiles import StaticFiles
from PIL import Image
from pydantic import BaseModel

from ethnic_group_recognizer.config import ABSTAIN_TEXT, PACKAGE_DIR, Config
from ethnic_group_recognizer.model import LOW_DATA_IMAGES, Prediction, Recognizer
from ethnic_group_recognizer.serve.batching import MicroBatcher
from ethnic_group_recognizer.serve.decode_worker import DecodePool, DecodeRefused
from ethnic_group_recognizer.serve.errors import (
    APIError,
    check_upload,
    error_body,
    install_error_handlers,
)
from ethnic_group_recognizer.serve.examples import scan_examples
from ethnic_group_recognizer.serve.limits import BodyDeadlineMiddleware, Slots
from ethnic_group_recognizer.serve.payload import extract_image, read_upload
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
T = TypeVar("T")

#: The static web app (plain HTML/CSS/JS, no build step), shipped as package data.
WEB_DIR = PACKAGE_DIR / "web"
API = "/api/v1"


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


# -- response shapes (for the OpenAPI docs; routes return plain dicts for speed) ---------------
class ErrorDetail(BaseModel):
    status: int
    code: str
    message: str


class ErrorOut(BaseModel):
    error: ErrorDetail


class ScoreOut(BaseModel):
    label: str
    probability: float
    training_images: int
    low_data: bool


class ModelRef(BaseModel):
    name: str
    version: str


class ExplanationOut(BaseModel):
    label: str
    method: str
    grid: int
    base_probability: float
    heatmap: list[list[float]]
    heatmap_png: str
    milliseconds: float


class PredictOut(BaseModel):
    label: str | None
    display_label: str
    confidence: float
    abstained: bool
    low_data: bool
    scores: list[ScoreOut]
    explanation: ExplanationOut | None = None
    model: ModelRef


_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {
        "model": ErrorOut,
        "description": "Undecodable, truncated or too small image, or a decompression bomb",
    },
    408: {"model": ErrorOut, "description": "The request body did not arrive in time"},
    413: {"model": ErrorOut, "description": "Upload larger than the configured limit"},
    415: {"model": ErrorOut, "description": "Not an image, or not a multipart/JSON body"},
    422: {"model": ErrorOut, "description": "Malformed request, or a multipart body with too many parts"},
    429: {"model": ErrorOut, "description": "Every explanation slot is busy (see Retry-After)"},
    503: {
        "model": ErrorOut,
        "description": "Too many uploads at once, or the image took too long to decode (see Retry-After)",
    },
}
_PREDICT_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["image"],
                    "properties": {"image": {"type": "string", "format": "binary"}},
                }
            },
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["image"],
                    "properties": {
                        "image": {
                            "type": "string",
                            "description": "The photo as a data URL, as FileReader.readAsDataURL gives it.",
                            "example": "data:image/jpeg;base64,/9j/4AAQSkZJRg...",
                        }
                    },
                }
            },
        },
    }
}


# -- helpers other route modules reuse --------------------------------------------------------
async def run_blocking(app: FastAPI, function: Callable[..., T], *args: Any) -> T:
    """Run CPU-bound work (decoding, model calls) in the server's thread pool, off the event loop."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(app.state.executor, functools.partial(function, *args))


async def predict_image(app: FastAPI, image: Image.Image) -> Prediction:
    """Classify one decoded image, batched with concurrent requests when batching is on."""
    recognizer: Recognizer = app.state.recognizer
    batcher: MicroBatcher | None = app.state.batcher
    if batcher is not None:
        return recognizer.decide(await batcher.submit(image))
    return (await run_blocking(app, recognizer.predict_images, [image]))[0]


async def decode_upload(app: FastAPI, data: bytes | bytearray) -> Image.Image:
    """Uploaded bytes to an RGB image through the decoding workers, or the right :class:`APIError`.

    413/400/415 as :func:`~ethnic_group_recognizer.serve.errors.check_upload`; 400 undecodable;
    503 with ``Retry-After`` when decoding passed its deadline (the worker was killed) or every
    decoder stayed busy.
    """
    settings: ServeSettings = app.state.settings
    check_upload(data, settings.max_upload_bytes)
    pool: DecodePool | None = getattr(app.state, "decoder", None)
    if pool is None:
        raise APIError(503, "the server is starting; try again shortly", headers={"Retry-After": "2"})
    try:
        width, height, pixels = await pool.decode(data)
    except DecodeRefused as refusal:
        if refusal.kind in ("image", "crashed"):
            raise APIError(400, refusal.message) from None
        retry = str(max(1, math.ceil(settings.decode_timeout_s)))
        raise APIError(
            503, refusal.message, headers={"Retry-After": retry}, code=f"decode_{refusal.kind}"
        ) from None
    return Image.frombytes("RGB", (width, height), pixels)


#: Occluded copies per model call in an explanation. onnxruntime's memory arena keeps the peak
#: of the largest batch it ever ran: 25 copies at 320 px kept about 300 MB more than 5 do, at
#: the same speed (docs/SERVING.md, "Limits and hardening").
EXPLAIN_BATCH = 5


def explain_in_small_batches(recognizer: Recognizer, image: Image.Image, grid: int, label: str) -> Any:
    """:func:`ethnic_group_recognizer.explain.explain`, with the occluded copies run 5 at a time."""
    import time

    from ethnic_group_recognizer.explain import Explanation, occlusion_heatmap

    started = time.perf_counter()
    heatmap, overlay = occlusion_heatmap(recognizer, image, grid, label, batch_size=EXPLAIN_BATCH)
    index = recognizer.labels.index(label)
    base = float(recognizer.run(recognizer.preprocess(image.convert("RGB"))[None])[0][0][index])
    return Explanation(label, heatmap, overlay, base, (time.perf_counter() - started) * 1000)


def prediction_payload(prediction: Prediction, recognizer: Recognizer) -> dict:
    """The JSON of one prediction: label (null = none of the 12), ranked scores with data flags."""
    counts = recognizer.training_counts
    low = set(recognizer.low_data_labels())
    return {
        "label": prediction.label,
        "display_label": prediction.display_label,
        "confidence": round(prediction.confidence, 6),
        "abstained": prediction.abstained,
        "low_data": prediction.label in low,
        "scores": [
            {
                "label": label,
                "probability": round(probability, 6),
                "training_images": counts.get(label, 0),
                "low_data": label in low,
            }
            for label, probability in prediction.ranked()
        ],
        "model": {"name": recognizer.name, "version": recognizer.version},
    }


def labels_payload(recognizer: Recognizer) -> dict:
    """The 12 labels with training counts, low-data flags and held-out metrics from the model card."""
    metrics = recognizer.metadata.get("metrics") or {}
    per_class = metrics.get("per_class") or {}
    low = set(recognizer.low_data_labels())
    labels = []
    for label, count in recognizer.training_counts.items():
        scores = per_class.get(label) or {}
        support = scores.get("support")
        labels.append(
            {
                "label": label,
                "training_images": count,
                "low_data": label in low,
                # Per-class accuracy is the share of held-out photos of the class labelled correctly
                # (its recall); null where the held-out split has no photo of it.
                "accuracy": scores.get("recall") if support else None,
                "precision": scores.get("precision") if support else None,
                "f1": scores.get("f1") if support else None,
                "support": support,
            }
        )
    return {
        "labels": labels,
        "low_data_below": LOW_DATA_IMAGES,
        "abstain": {"label": None, "text": ABSTAIN_TEXT},
        "metrics_split": metrics.get("split"),
    }


def model_card_text(recognizer: Recognizer) -> str:
    """MODEL_CARD.md of the model directory, or a minimal card generated from its metadata."""
    card = recognizer.directory / "MODEL_CARD.md"
    if card.is_file():
        return card.read_text(encoding="utf-8")
    meta = recognizer.metadata
    rows = "\n".join(
        f"| {label} | {count}{' **low data**' if label in recognizer.low_data_labels() else ''} |"
        for label, count in recognizer.training_counts.items()
    )
    return (
        f"# Model card: {recognizer.name} ({recognizer.version})\n\n"
        "This model has no full model card (run `egr evaluate --update-model`).\n\n"
        "## What it does\nSays which of 12 ethnic groups' visual culture (dress, adornment, crafts, "
        f'festivals) a photo shows, or abstains ("{ABSTAIN_TEXT}"). It must never be used to infer '
        "any individual's ethnicity.\n\n"
        f"## Model\n- Backbone: {meta.get('backbone', 'unknown')}\n"
        f"- Abstain threshold: {recognizer.threshold:.2f}\n\n"
        f"## Training images\n| label | training images |\n| --- | --- |\n{rows}\n"
    )


# -- the app ---------------------------------------------------------------------------------
def create_app(settings: ServeSettings | None = None, recognizer: Recognizer | None = None) -> FastAPI:
    """Build the server: load the model, set up the thread pool and batcher, register every route."""
    settings = settings or ServeSettings()
    _onnxruntime_without_telemetry()
    recognizer = recognizer or Recognizer.load(
        settings.model_dir, Config(threads=settings.onnx_threads or settings.worker_threads)
    )
    examples = scan_examples(settings.examples_dir)
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
        settings.decode_processes, settings.decode_timeout_s, recognizer.config, recognizer.image_size
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
        title="Ethnic Group Recognizer",
        version=recognizer.version,
        summary="Which of 12 ethnic groups' visual culture (dress, adornment, crafts, festivals) a photo shows.",
        description=(
            "Recognises visual culture in photographs, never a person's ethnicity (EU AI Act Art. 5(1)(g)). "
            f'`label` is null when the photo shows none of the 12 groups ("{ABSTAIN_TEXT}"). '
            "Labels backed by few training images are flagged `low_data`. Uploads are processed in memory "
            "and never stored or logged."
        ),
        lifespan=lifespan,
        docs_url=None,  # served below from the swagger-ui-bundle package: no CDN, works offline
    )
    _install_offline_docs(app)
    app.state.settings = settings
    app.state.recognizer = recognizer
    app.state.executor = executor
    app.state.batcher = batcher
    app.state.examples = examples
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

    @app.get("/healthz", tags=["health"], summary="Liveness: the process answers")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get(
        "/readyz",
        tags=["health"],
        summary="Readiness: the model is loaded and warmed up",
        responses={503: {"model": ErrorOut}},
    )
    async def readyz() -> dict:
        if not getattr(app.state, "ready", False) or app.state.recognizer is None:
            raise APIError(503, "model not loaded yet")
        return {"status": "ready", "model": {"name": recognizer.name, "version": recognizer.version}}

    @app.post(
        f"{API}/predict",
        tags=["predict"],
        summary="Classify one photo (multipart field 'image', or JSON with a data URL)",
        response_model=None,
        responses={200: {"model": PredictOut}, **_ERRORS},
        openapi_extra=_PREDICT_BODY,
    )
    async def predict(
        request: Request,
        explain: bool = Query(
            False, description="Add an occlusion heatmap of the regions the result depends on."
        ),
    ) -> JSONResponse:
        # An explanation slot is taken first, so a flood of them is refused (429) before any
        # body is read or decoded; then an upload slot bounds the memory held in flight.
        explain_slot = app.state.explain_slots.hold() if explain else contextlib.nullcontext()
        async with explain_slot, app.state.upload_slots.hold():
            kind, raw = await read_upload(request, settings.max_upload_bytes)
            content_type = request.headers.get("content-type", "")
            data = await run_blocking(
                app, extract_image, kind, content_type, raw, settings.max_upload_bytes, settings.max_parts
            )
            del raw
            image = await decode_upload(app, data)
            del data
            prediction = await predict_image(app, image)
            body = prediction_payload(prediction, recognizer)
            if explain:
                # Explain the label shown first: the answer, or the closest label when it abstained.
                target = prediction.label or prediction.ranked()[0][0]
                explanation = await run_blocking(
                    app, explain_in_small_batches, recognizer, image, settings.explain_grid, target
                )
                body["explanation"] = explanation.to_dict()
        return JSONResponse(body)

    @app.get(f"{API}/predict", include_in_schema=False)
    async def predict_get() -> None:
        # Without this the web app mounted at "/" would answer a GET here with a 404.
        raise APIError(405, "use POST with a multipart 'image' field or a JSON data URL")

    @app.get(f"{API}/labels", tags=["model"], summary="The 12 labels, training counts and per-class accuracy")
    async def labels() -> dict:
        return labels_payload(recognizer)

    @app.get(f"{API}/model", tags=["model"], summary="The model's metadata")
    async def model() -> dict:
        return {
            **recognizer.metadata,
            "labels": recognizer.labels,
            "low_data_labels": recognizer.low_data_labels(),
            "threshold": recognizer.threshold,
            "serving": {
                "batching": settings.batching,
                "max_batch_size": settings.max_batch_size,
                "batch_concurrency": settings.batch_concurrency,
                "max_upload_bytes": settings.max_upload_bytes,
                "max_uploads": settings.max_uploads,
                "upload_wait_s": settings.upload_wait_s,
                "body_timeout_s": settings.body_timeout_s,
                "decode_timeout_s": settings.decode_timeout_s,
                "decode_workers": settings.decode_processes,
                "explain_slots": settings.explain_slots,
                "max_parts": settings.max_parts,
                "threads": settings.worker_threads,
                "onnx_threads": settings.onnx_threads or settings.worker_threads,
            },
        }

    @app.get(
        f"{API}/model-card",
        tags=["model"],
        summary="The model card (Markdown)",
        response_class=PlainTextResponse,
    )
    async def model_card() -> PlainTextResponse:
        return PlainTextResponse(model_card_text(recognizer), media_type="text/markdown; charset=utf-8")

    @app.get(f"{API}/examples", tags=["examples"], summary="Example photos the server was started with")
    async def list_examples() -> dict:
        return {"examples": [example.to_dict(f"{API}/examples") for example in examples]}

    @app.get(
        f"{API}/examples/{{example_id}}",
        tags=["examples"],
        summary="One example photo",
        response_class=FileResponse,
        responses={404: {"model": ErrorOut}},
    )
    async def get_example(example_id: int) -> FileResponse:
        if not 0 <= example_id < len(examples):
            raise APIError(404, f"no example {example_id}")
        example = examples[example_id]
        return FileResponse(
            example.path, media_type=example.media_type, headers={"Cache-Control": "max-age=3600"}
        )

    _install_optional(app)
    if WEB_DIR.is_dir():
        app.mount("/", StaticFiles(directory=WEB_DIR, html=True), name="web")
    return app


def _install_offline_docs(app: FastAPI) -> None:
    """OpenAPI docs at ``/docs`` with Swagger UI's files from a PyPI package, not from a CDN."""
    from fastapi.openapi.docs import get_swagger_ui_html
    from swagger_ui_bundle import swagger_ui_path

    app.mount("/docs-static", StaticFiles(directory=swagger_ui_path), name="docs-static")

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui():
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title}: API",
            swagger_js_url="/docs-static/swagger-ui-bundle.js",
            swagger_css_url="/docs-static/swagger-ui.css",
            swagger_favicon_url="/docs-static/favicon-32x32.png",
        )


def _install_optional(app: FastAPI) -> None:
    """Add the Gradio-3-compatible routes and the Gradio UI when those modules are present."""
    try:
        from ethnic_group_recognizer.serve.legacy import install_legacy_routes
    except ImportError:
        log.info("legacy /run/predict routes not available")
    else:
        install_legacy_routes(app)
    try:
        from ethnic_group_recognizer.serve.gradio_mount import mount_gradio
    except ImportError:
        log.info("Gradio mount not available")
    else:
        mount_gradio(app)
