"""Read an upload out of a request entirely in memory, with a size cap, and say clearly what is wrong.

Starlette's own form parser spools file parts over 1 MB to a temporary file; uploads here must
never touch the disk, so multipart bodies are parsed in memory with python-multipart's streaming
parser instead. Nothing here logs the bytes.
"""

from __future__ import annotations

import json
import math

from fastapi import Request
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from ethnic_group_recognizer.serve.errors import APIError, decode_data_url

#: Room in a body for multipart headers and boundaries, or the JSON wrapper and data-URL prefix.
BODY_SLACK_BYTES = 64 * 1024
#: The form field (multipart) or JSON key that carries the image.
IMAGE_FIELD = "image"


def body_limit(max_image_bytes: int) -> int:
    """Largest body worth reading: the base64 form of the largest allowed image plus slack."""
    return math.ceil(max_image_bytes / 3) * 4 + BODY_SLACK_BYTES


async def read_limited(request: Request, limit: int) -> bytes:
    """The request body, but a 413 as soon as it is known to pass ``limit`` (declared or streamed)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise APIError(413, f"request body is {int(declared):,} bytes; the limit is {limit:,} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise APIError(413, f"request body is over the limit of {limit:,} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def multipart_field(body: bytes, content_type: str, field: str = IMAGE_FIELD) -> bytes:
    """The bytes of form field ``field`` in a multipart body, parsed in memory (422 if absent)."""
    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise APIError(422, "multipart/form-data request has no boundary")
    parts: list[tuple[dict[str, str], bytearray]] = []
    header: dict[str, bytearray] = {"field": bytearray(), "value": bytearray()}

    def on_part_begin() -> None:
        parts.append(({}, bytearray()))

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header["field"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header["value"] += data[start:end]

    def on_header_end() -> None:
        name = header["field"].decode("latin-1").strip().lower()
        parts[-1][0][name] = header["value"].decode("latin-1").strip()
        header["field"], header["value"] = bytearray(), bytearray()

    def on_part_data(data: bytes, start: int, end: int) -> None:
        parts[-1][1].extend(data[start:end])

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_part_data": on_part_data,
        },
    )
    try:
        parser.write(body)
        parser.finalize()
    except MultipartParseError as error:
        raise APIError(422, f"malformed multipart/form-data body: {error}") from None
    for headers, data in parts:
        _, disposition = parse_options_header(headers.get("content-disposition", ""))
        if disposition.get(b"name", b"").decode("utf-8", "replace") == field:
            return bytes(data)
    names = [
        parse_options_header(h.get("content-disposition", ""))[1]
        .get(b"name", b"?")
        .decode("utf-8", "replace")
        for h, _ in parts
    ]
    raise APIError(422, f"multipart/form-data has no {field!r} field (fields: {', '.join(names) or 'none'})")


def json_image(body: bytes, max_bytes: int, key: str = IMAGE_FIELD) -> bytes:
    """The image bytes of a ``{"image": "data:image/...;base64,..."}`` body."""
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise APIError(422, f"body is not valid JSON: {error}") from None
    if not isinstance(payload, dict) or key not in payload:
        raise APIError(422, f'JSON body must be an object with an "{key}" data URL')
    return decode_data_url(payload[key], max_bytes)


async def image_bytes(request: Request, max_bytes: int) -> bytes:
    """The uploaded image's bytes from a multipart or JSON request; 415 for any other body type."""
    content_type = request.headers.get("content-type", "")
    media = content_type.split(";", 1)[0].strip().lower()
    if media == "multipart/form-data":
        body = await read_limited(request, max_bytes + BODY_SLACK_BYTES)
        return multipart_field(body, content_type)
    if media == "application/json" or media.endswith("+json"):
        body = await read_limited(request, body_limit(max_bytes))
        return json_image(body, max_bytes)
    shown = media or "no Content-Type"
    raise APIError(
        415,
        f"request body is {shown}; send multipart/form-data with an 'image' file field, "
        'or JSON {"image": "data:image/...;base64,..."}',
    )
