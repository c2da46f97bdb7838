"""Liveness and readiness probes."""

from __future__ import annotations

from fastapi import APIRouter, Request

from ethnic_group_recognizer.serve.core import RecognizerDep
from ethnic_group_recognizer.serve.errors import APIError
from ethnic_group_recognizer.serve.schemas import ErrorOut, HealthOut, ReadyOut

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness: the process answers", response_model=HealthOut)
async def healthz() -> dict:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Readiness: the model is loaded and warmed up",
    response_model=ReadyOut,
    responses={503: {"model": ErrorOut}},
)
async def readyz(request: Request, recognizer: RecognizerDep) -> dict:
    if not getattr(request.app.state, "ready", False) or recognizer is None:
        raise APIError(503, "model not loaded yet")
    return {"status": "ready", "model": {"name": recognizer.name, "version": recognizer.version}}
