"""Mount the Gradio UI at ``/gradio`` in ``egr serve``, so one process serves API, web app and UI.

Modern Gradio clients then work unchanged:
``Client("http://HOST:PORT/gradio/").predict(handle_file(path), api_name="/predict")``.
The UI's work goes through the server's own machinery: decoding in the killable decode workers,
predictions through the batcher and thread pool, explanations through the explanation slots.
Without the optional ``demo`` extra the server starts as before; ``/gradio`` then answers a 404
in the product's error shape that says how to enable it, and the reason is logged at startup.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from PIL import Image

from ethnic_group_recognizer.explain import Explanation
from ethnic_group_recognizer.model import Prediction
from ethnic_group_recognizer.serve.core import decode_upload, explain_image, predict_image, run_blocking
from ethnic_group_recognizer.serve.errors import error_body
from ethnic_group_recognizer.serve.gradio.ui import INSTALL_HINT, build_demo, gradio_available

#: Where the Gradio UI lives inside ``egr serve``.
GRADIO_PATH = "/gradio"
logger = logging.getLogger("ethnic_group_recognizer.serve")


def mount_gradio(app: FastAPI) -> None:
    """Mount the UI at :data:`GRADIO_PATH` when Gradio is installed; otherwise explain its absence.

    Sets ``app.state.gradio_path`` (the mount path, or None) and ``app.state.gradio_message``
    (one line for the server to print at startup).
    """
    if not gradio_available():
        message = (
            f"Gradio UI not mounted: the optional 'demo' extra is not installed ({INSTALL_HINT}); "
            f"with it, the UI is served at {GRADIO_PATH}/"
        )
        app.state.gradio_path = None
        app.state.gradio_message = message
        logger.warning(message)

        async def gradio_missing() -> JSONResponse:
            return JSONResponse(error_body(404, message), status_code=404)

        for path in (GRADIO_PATH, GRADIO_PATH + "/{rest:path}"):
            app.add_api_route(path, gradio_missing, methods=["GET", "POST"], include_in_schema=False)
        return

    import gradio as gr

    settings = app.state.settings
    recognizer = app.state.recognizer

    async def predict(image: Image.Image) -> Prediction:
        return await predict_image(app, image)

    async def decode(data: bytes) -> Image.Image:
        async with app.state.upload_slots.hold():
            return await decode_upload(app, data)

    async def explain(image: Image.Image, label: str) -> Explanation:
        async with app.state.explain_slots.hold():
            return await run_blocking(app, explain_image, recognizer, image, settings.explain_grid, label)

    async def offload(function, *args):  # noqa: ANN001, ANN202 - the OffloadFn shape
        return await run_blocking(app, function, *args)

    max_bytes = settings.max_upload_bytes
    blocks = build_demo(
        recognizer,
        predict,
        decode=decode,
        explain=explain,
        offload=offload,
        max_upload_bytes=max_bytes,
        explain_grid=settings.explain_grid,
    )
    gr.mount_gradio_app(
        app, blocks, path=GRADIO_PATH, max_file_size=max_bytes, show_error=True, run_history=False
    )
    app.state.gradio_path = GRADIO_PATH
    app.state.gradio_message = f"Gradio UI at {GRADIO_PATH}/"
