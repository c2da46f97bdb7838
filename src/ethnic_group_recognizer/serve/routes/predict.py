"""``POST /api/v1/predict``: one photo in (multipart or a JSON data URL), the model's answer out.

The body is read into memory within the upload limit, the image taken out of it off the event
loop, decoded in a killable worker process, classified, and dropped: nothing is written or logged.
"""

from __future__ import annotations

import contextlib
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from ethnic_group_recognizer.serve.core import (
    API,
    RecognizerDep,
    SettingsDep,
    decode_upload,
    explain_image,
    explanation_target,
    predict_image,
    prediction_payload,
    run_blocking,
)
from ethnic_group_recognizer.serve.errors import APIError
from ethnic_group_recognizer.serve.payload import extract_image, read_upload
from ethnic_group_recognizer.serve.schemas import ERRORS, PredictOut

router = APIRouter(prefix=API, tags=["predict"])

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


@router.post(
    "/predict",
    summary="Classify one photo (multipart field 'image', or JSON with a data URL)",
    response_model=PredictOut,
    # "explanation" is left out unless asked for; a null label (an abstention) stays.
    response_model_exclude_unset=True,
    responses=ERRORS,
    openapi_extra=_PREDICT_BODY,
)
async def predict(
    request: Request,
    recognizer: RecognizerDep,
    settings: SettingsDep,
    explain: Annotated[
        bool, Query(description="Add an occlusion heatmap of the regions the result depends on.")
    ] = False,
) -> dict:
    app = request.app
    # An explanation slot is taken first, so a flood of them is refused (429) before any body is
    # read or decoded; then an upload slot bounds the memory held in flight.
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
            explanation = await run_blocking(
                app, explain_image, recognizer, image, settings.explain_grid, explanation_target(prediction)
            )
            body["explanation"] = explanation.to_dict()
    return body


@router.get("/predict", include_in_schema=False)
async def predict_get() -> None:
    # Without this the web app mounted at "/" would answer a GET here with a 404.
    raise APIError(405, "use POST with a multipart 'image' field or a JSON data URL")
