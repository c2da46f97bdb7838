"""The example-photo gallery: photos from the folder given at start-up, addressed by number only."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse

from ethnic_group_recognizer.serve.core import API
from ethnic_group_recognizer.serve.errors import APIError
from ethnic_group_recognizer.serve.schemas import ErrorOut, ExamplesOut

router = APIRouter(prefix=f"{API}/examples", tags=["examples"])


@router.get("", summary="Example photos the server was started with", response_model=ExamplesOut)
async def list_examples(request: Request) -> dict:
    return {"examples": [example.to_dict(f"{API}/examples") for example in request.app.state.examples]}


@router.get(
    "/{example_id}",
    summary="One example photo",
    response_class=FileResponse,
    responses={404: {"model": ErrorOut}},
)
async def get_example(request: Request, example_id: int) -> FileResponse:
    examples = request.app.state.examples
    if not 0 <= example_id < len(examples):
        raise APIError(404, f"no example {example_id}")
    example = examples[example_id]
    return FileResponse(
        example.path, media_type=example.media_type, headers={"Cache-Control": "max-age=3600"}
    )
