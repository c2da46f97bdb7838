"""What the model is: its labels with their data and accuracy, its metadata, its card."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse

from ethnic_group_recognizer.serve.core import (
    API,
    RecognizerDep,
    SettingsDep,
    labels_payload,
    model_card_text,
    model_payload,
)
from ethnic_group_recognizer.serve.schemas import LabelsOut, ModelOut

router = APIRouter(prefix=API, tags=["model"])


@router.get(
    "/labels",
    summary="The model's labels, their training images and per-class accuracy",
    response_model=LabelsOut,
)
async def labels(recognizer: RecognizerDep) -> dict:
    return labels_payload(recognizer)


@router.get("/model", summary="The model's metadata and the server's limits", response_model=ModelOut)
async def model(recognizer: RecognizerDep, settings: SettingsDep) -> dict:
    return model_payload(recognizer, settings)


@router.get("/model-card", summary="The model card (Markdown)", response_class=PlainTextResponse)
async def model_card(recognizer: RecognizerDep) -> PlainTextResponse:
    return PlainTextResponse(model_card_text(recognizer), media_type="text/markdown; charset=utf-8")
