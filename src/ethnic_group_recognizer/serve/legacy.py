"""The Gradio 3 ``/run/predict`` contract, so clients of the original Space work against ``egr serve``.

The project this product follows was a Gradio 3 Space whose static web page POSTed
``{"data": ["data:image/...;base64,..."]}`` to ``/run/predict`` and printed
``json.data[0].label``. These routes answer that request the way the Space did, so an old
client changes nothing but the host. Differences are additive only: an abstention is the
model's readable "none of these" text (the old page would print ``null`` otherwise), and extra
keys flag abstention and low-data classes and give the prediction set.

Images are decoded in memory and never written or logged.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request, Response

from ethnic_group_recognizer.serve.core import (
    RecognizerDep,
    decode_upload,
    gradio3_payload,
    model_texts,
    predict_image,
    run_blocking,
)
from ethnic_group_recognizer.serve.errors import APIError, decode_data_url
from ethnic_group_recognizer.serve.payload import body_limit, parse_json, read_limited
from ethnic_group_recognizer.serve.schemas import Gradio3Out

#: The Gradio Label JSON of one prediction (one builder for ``/run/predict`` and the Gradio UI).
label_payload = gradio3_payload

#: Routes Gradio 3 answered for an Interface's default endpoint; both spellings, with and without "/".
LEGACY_PATHS: tuple[str, ...] = ("/run/predict", "/api/predict")

_REQUEST_SCHEMA: dict[str, Any] = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["data"],
                "properties": {
                    "data": {
                        "type": "array",
                        "minItems": 1,
                        "maxItems": 1,
                        "items": {"type": "string", "example": "data:image/png;base64,iVBORw0KGgo..."},
                        "description": "One image as a data URL, as FileReader.readAsDataURL gives it.",
                    }
                },
                "additionalProperties": True,
            }
        }
    },
}
_RESPONSE_EXAMPLE: dict[str, Any] = {
    "data": [
        {
            "label": "label A",
            "confidences": [
                {"label": "label A", "confidence": 0.93, "low_data": False},
                {"label": "label B", "confidence": 0.04, "low_data": False},
            ],
            "abstained": False,
            "low_data": False,
            "prediction_set": ["label A"],
            "coverage": 0.9,
        }
    ],
    "is_generating": False,
    "duration": 0.05,
    "average_duration": 0.05,
}


def parse_legacy_body(body: bytes | bytearray) -> str:
    """The one data URL in a Gradio 3 ``{"data": [...]}`` body, or a 422 saying what is wrong.

    Any Content-Type is accepted: browsers that send ``JSON.stringify`` output without a header
    label it ``text/plain``, and the old Space accepted those too.
    """
    try:
        payload = parse_json(body)
    except APIError as error:
        raise APIError(
            422, f'body must be JSON such as {{"data": ["data:image/png;base64,..."]}} ({error.message})'
        ) from None
    if not isinstance(payload, dict) or not isinstance(payload.get("data"), list):
        raise APIError(422, 'body must be a JSON object with a "data" list')
    data = payload["data"]
    if len(data) != 1:
        raise APIError(422, f'"data" must hold exactly one image (a data URL); it holds {len(data)} items')
    if not isinstance(data[0], str):
        raise APIError(422, '"data"[0] must be the image as a data URL string')
    return data[0]


def legacy_image_bytes(body: bytes | bytearray, max_bytes: int) -> bytes:
    """Request body to the image's bytes (JSON, base64): CPU work, so it runs in the thread pool."""
    return decode_data_url(parse_legacy_body(body), max_bytes)


class _Timing:
    """Gradio's ``average_duration``: the mean time of the calls answered so far."""

    def __init__(self) -> None:
        self.total = 0.0
        self.calls = 0

    def add(self, duration: float) -> float:
        self.total += duration
        self.calls += 1
        return self.total / self.calls


def legacy_router() -> APIRouter:
    """``POST /run/predict`` and ``POST /api/predict`` (with or without a trailing slash).

    Needs what :func:`~ethnic_group_recognizer.serve.app.create_app` sets up: the recognizer,
    settings, thread pool and error handlers (errors come back in the product's JSON shape).
    """
    router = APIRouter(tags=["gradio-compatible"])
    timing = _Timing()

    async def legacy_predict(request: Request, response: Response, recognizer: RecognizerDep) -> dict:
        """Classify one image sent as a Gradio 3 Interface call; reply the way Gradio 3 did."""
        started = time.perf_counter()
        app = request.app
        max_bytes = app.state.settings.max_upload_bytes
        async with app.state.upload_slots.hold():
            body = await read_limited(request, body_limit(max_bytes))
            data = await run_blocking(app, legacy_image_bytes, body, max_bytes)
            del body
            image = await decode_upload(app, data)
            del data
            prediction = await predict_image(app, image)
        duration = time.perf_counter() - started
        low_data = frozenset(recognizer.low_data_labels())
        answer = gradio3_payload(prediction, low_data, model_texts(recognizer).abstain_text)
        response.headers["Cache-Control"] = "no-store"
        return {
            "data": [answer],
            "is_generating": False,
            "duration": duration,
            "average_duration": timing.add(duration),
        }

    for index, path in enumerate(LEGACY_PATHS):
        for variant in (path, path + "/"):
            router.add_api_route(
                variant,
                legacy_predict,
                methods=["POST"],
                response_model=Gradio3Out,
                name=f"legacy_predict_{index}{'_slash' if variant.endswith('/') else ''}",
                summary="Gradio 3 compatible prediction (drop-in for the original Space)",
                include_in_schema=not variant.endswith("/"),
                openapi_extra={"requestBody": _REQUEST_SCHEMA},
                responses={
                    200: {"content": {"application/json": {"example": _RESPONSE_EXAMPLE}}},
                    400: {"description": "an image that cannot be decoded"},
                    408: {"description": "the body did not arrive in time"},
                    413: {"description": "image or body over the upload limit"},
                    415: {"description": "the data URL or its content is not an image"},
                    422: {"description": "malformed body or data URL"},
                    503: {"description": "too many uploads at once, or decoding passed its deadline"},
                },
            )
    return router
