"""The one JSON error shape every route returns, and safe decoding of uploaded image payloads.

Errors look like ``{"error": {"status": 415, "code": "unsupported_media_type", "message": "..."}}``.
Uploads are decoded in memory; nothing here writes to disk or logs the bytes.
"""

from __future__ import annotations

import base64
import binascii
import re

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from PIL import Image
from starlette.exceptions import HTTPException as StarletteHTTPException

from ethnic_group_recognizer.config import Config
from ethnic_group_recognizer.images import ImageError, load_image, sniff_format

DEFAULT_MAX_UPLOAD_BYTES = 10 * 1024 * 1024
_CODES = {
    400: "bad_image",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "malformed_request",
    429: "too_many_requests",
    500: "internal_error",
    503: "not_ready",
}
_DATA_URL = re.compile(
    r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+=[\w.+-]+)*)(?P<b64>;base64)?,", re.I
)


class APIError(Exception):
    """An error with an HTTP status and a message meant for the person calling the API."""

    def __init__(
        self, status: int, message: str, headers: dict[str, str] | None = None, code: str | None = None
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        #: Extra response headers, e.g. ``Retry-After`` or ``Connection: close``.
        self.headers = dict(headers or {})
        self.code = code


def error_body(status: int, message: str, code: str | None = None) -> dict:
    return {"error": {"status": status, "code": code or _CODES.get(status, "error"), "message": message}}


def install_error_handlers(app: FastAPI) -> None:
    """Make every error, ours or the framework's, come back in the one JSON shape."""

    @app.exception_handler(APIError)
    async def _api_error(_: Request, error: APIError) -> JSONResponse:
        return JSONResponse(
            error_body(error.status, error.message, error.code),
            status_code=error.status,
            headers=error.headers,
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, error: RequestValidationError) -> JSONResponse:
        details = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}" for e in error.errors()
        )
        return JSONResponse(error_body(422, f"malformed request: {details}"), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, error: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(error_body(error.status_code, str(error.detail)), status_code=error.status_code)


def mib(n_bytes: int | float) -> str:
    """A byte count in MiB as people read upload limits ("10 MiB", "18.5 MiB")."""
    value = n_bytes / 2**20
    return f"{value:.0f} MiB" if value >= 100 or float(value).is_integer() else f"{value:.1f} MiB"


def too_large(size: int | float, limit: int) -> str:
    """The one 413 message: sizes in MiB, and the exact bytes for a client that wants them."""
    return f"the photo is {mib(size)} ({int(size):,} bytes); the limit is {mib(limit)}"


def check_size(data: bytes | bytearray, max_bytes: int = DEFAULT_MAX_UPLOAD_BYTES) -> None:
    if len(data) > max_bytes:
        raise APIError(413, too_large(len(data), max_bytes))


def decode_data_url(text: str, max_bytes: int = DEFAULT_MAX_UPLOAD_BYTES) -> bytes:
    """Bytes of a ``data:image/...;base64,...`` URL, as a browser's FileReader produces it."""
    if not isinstance(text, str):
        raise APIError(422, "image must be a data URL string")
    match = _DATA_URL.match(text[:200])
    if not match:
        raise APIError(422, "image must be a data URL such as 'data:image/png;base64,...'")
    mime = (match.group("mime") or "").lower()
    if mime and not mime.startswith("image/"):
        raise APIError(415, f"data URL is {mime}, not an image")
    if not match.group("b64"):
        raise APIError(422, "data URL must be base64-encoded")
    payload = text[match.end() :]
    try:
        data = base64.b64decode(payload, validate=False)
    except (binascii.Error, ValueError):
        raise APIError(422, "data URL is not valid base64") from None
    # The decoded bytes count (padding does not), exactly as for a multipart upload; the body
    # limit already bounded what is decoded here.
    check_size(data, max_bytes)
    return data


def check_upload(data: bytes | bytearray, max_bytes: int = DEFAULT_MAX_UPLOAD_BYTES) -> None:
    """The cheap checks before decoding: 413 too large, 400 empty, 415 not an image by content."""
    check_size(data, max_bytes)
    if not data:
        raise APIError(400, "empty image")
    if sniff_format(bytes(data[:16])) is None:
        raise APIError(415, "not an image: the content is none of JPEG, PNG, WebP, GIF, BMP or TIFF")


def decode_image(
    data: bytes, config: Config | None = None, max_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
) -> Image.Image:
    """Decode uploaded bytes into an RGB image, in memory, or raise the right :class:`APIError`.

    413 too large, 415 not an image at all (by content, not by name or header), 400 an image
    that cannot be decoded (truncated, corrupt, decompression bomb, too small). The server
    decodes in :mod:`~ethnic_group_recognizer.serve.decode_worker` processes instead; this
    in-process form is for callers without a pool.
    """
    check_upload(data, max_bytes)
    try:
        return load_image(data, config)
    except ImageError as error:
        raise APIError(400, str(error)) from None
