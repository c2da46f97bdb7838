"""The HTTP server: the REST API under ``/api/v1``, health probes, and the web app at ``/``.

``create_app(ServeSettings(...))`` returns a FastAPI app; ``egr serve`` runs it with uvicorn.
Uploads are read into memory, decoded, classified and dropped: nothing is written to disk and no
request body is logged (uvicorn's access log records paths only). Model calls run in a thread
pool sized to the cores, through a micro-batcher when batching is on, so the event loop stays free.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
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
from ethnic_group_recognizer.serve.errors import (
    DEFAULT_MAX_UPLOAD_BYTES,
    APIError,
    decode_image,
    error_body,
    install_error_handlers,
)
from ethnic_group_recognizer.serve.examples import scan_examples
from ethnic_group_recognizer.serve.payload import image_bytes

log = logging.getLogger(__name__)
T = TypeVar("T")

#: The static web app (plain HTML/CSS/JS, no build step), shipped as package data.
WEB_DIR = PACKAGE_DIR / "web"
API = "/api/v1"
CORS_ENV = "EGR_CORS_ORIGINS"


def parse_origins(text: str | None) -> list[str]:
    """``"https://a.org, https://b.org"`` -> a list; ``*`` allows any origin."""
    return [origin.strip().rstrip("/") for origin in (text or "").split(",") if origin.strip()]


def cors_origins_from_env() -> list[str]:
    return parse_origins(os.environ.get(CORS_ENV))


@dataclass
class ServeSettings:
    """Everything ``egr serve`` can be told; defaults are the ones ``make serve`` uses."""

    model_dir: Path | None = None  # None: the model shipped inside the package
    host: str = "127.0.0.1"
    port: int = 8000
    #: Origins allowed to call the API from a page on another host (``*``: any); also ``$EGR_CORS_ORIGINS``.
    cors_origins: list[str] = field(default_factory=cors_origins_from_env)
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    examples_dir: Path | None = None
    #: Off by default: on CPU a batch costs the same CPU per photo as single calls (measured in
    #: benchmarks/load.py), so batching adds queueing latency without adding throughput.
    batching: bool = False
    max_batch_size: int = 8
    batch_wait_ms: float = 5.0
    #: Batches that may run at once (each uses onnxruntime's threads); more overlaps decoding with inference.
    batch_concurrency: int = 2
    #: Thread-pool size for decoding and model calls; 0 means one per core.
    threads: int = 0
    #: onnxruntime threads inside one model call. 1 with a pool of one thread per core gives the
    #: most requests/s under load (no intra-op synchronisation); 0 = all cores, for one user at a time.
    onnx_threads: int = 1
    #: Occlusion grid of ``?explain=true`` (grid x grid + 1 forward passes).
    explain_grid: int = 7

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be 0-65535, got {self.port}")
        if self.max_upload_bytes < 1:
            raise ValueError("max_upload_bytes must be positive")
        if self.max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        if not 0 <= self.batch_wait_ms <= 1000:
            raise ValueError("batch_wait_ms must be between 0 and 1000")
        if self.batch_concurrency < 1:
            raise ValueError("batch_concurrency must be at least 1")
        if self.onnx_threads < 0:
            raise ValueError("onnx_threads must be 0 (one per core) or more")
        if self.threads < 0:
            raise ValueError("threads must be 0 (one per core) or more")
        self.cors_origins = list(self.cors_origins)
        for origin in self.cors_origins:
            if origin != "*" and not origin.startswith(("http://", "https://")):
                raise ValueError(f"CORS origin must be '*' or start with http:// or https://, got {origin!r}")

    @property
    def worker_threads(self) -> int:
        """Threads for the pool and for onnxruntime: the cores this process may run on (taskset/cgroups aware)."""
        if self.threads:
            return self.threads
        try:
            return len(os.sched_getaffinity(0)) or 1
        except AttributeError:  # not on Linux
            return os.cpu_count() or 1


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
    413: {"model": ErrorOut, "description": "Upload larger than the configured limit"},
    415: {"model": ErrorOut, "description": "Not an image, or not a multipart/JSON body"},
    422: {"model": ErrorOut, "description": "Malformed request"},
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

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # One warm-up call, so the first real request does not pay onnxruntime's start-up.
        await run_blocking(app, recognizer.probabilities, [Image.new("RGB", (64, 64), (128, 128, 128))])
        app.state.ready = True
        try:
            yield
        finally:
            app.state.ready = False
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
        data = await image_bytes(request, settings.max_upload_bytes)
        image = await run_blocking(app, decode_image, data, recognizer.config, settings.max_upload_bytes)
        del data
        prediction = await predict_image(app, image)
        body = prediction_payload(prediction, recognizer)
        if explain:
            from ethnic_group_recognizer.explain import explain as occlusion

            # Explain the label shown first: the answer, or the closest label when it abstained.
            target = prediction.label or prediction.ranked()[0][0]
            explanation = await run_blocking(app, occlusion, recognizer, image, settings.explain_grid, target)
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
