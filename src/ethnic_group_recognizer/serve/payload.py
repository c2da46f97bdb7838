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

from ethnic_group_recognizer.serve.errors import APIError, decode_data_url, mib

#: Room in a body for multipart headers and boundaries, or the JSON wrapper and data-URL prefix.
BODY_SLACK_BYTES = 64 * 1024
#: The form field (multipart) or JSON key that carries the image.
IMAGE_FIELD = "image"


def body_limit(max_image_bytes: int) -> int:
    """Largest body worth reading: the base64 form of the largest allowed image plus slack."""
    return math.ceil(max_image_bytes / 3) * 4 + BODY_SLACK_BYTES


#: Most parts a multipart body may have: the form needs one; 170,000 empty ones blocked a loop for seconds.
DEFAULT_MAX_PARTS = 16
#: Most headers in one part, and the most bytes of one header line.
MAX_PART_HEADERS = 16
MAX_HEADER_BYTES = 8 * 1024


async def read_limited(request: Request, limit: int) -> bytearray:
    """The request body, but a 413 as soon as it is known to pass ``limit`` (declared or streamed)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise APIError(
            413,
            f"request body is {mib(int(declared))} ({int(declared):,} bytes); the limit for a request body is {mib(limit)}",
        )
    body = bytearray()  # one growing buffer: no list of chunks plus a joined copy
    async for chunk in request.stream():
        if len(body) + len(chunk) > limit:
            raise APIError(413, f"request body is over the limit of {mib(limit)} ({limit:,} bytes)")
        body += chunk
    return body


def multipart_field(
    body: bytes | bytearray,
    content_type: str,
    field: str = IMAGE_FIELD,
    max_parts: int = DEFAULT_MAX_PARTS,
) -> bytearray:
    """The bytes of form field ``field`` in a multipart body, parsed in memory (422 if absent).

    CPU work on untrusted input: the server runs it in its thread pool, never on the event loop,
    and refuses a body with more than ``max_parts`` parts as soon as the parser meets one more.
    Only the wanted field's bytes are kept.
    """
    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise APIError(422, "multipart/form-data request has no boundary")
    names: list[str] = []
    found: list[bytearray] = []
    state: dict = {"headers": {}, "field": bytearray(), "value": bytearray(), "keep": False}

    def on_part_begin() -> None:
        if len(names) >= max_parts:
            raise APIError(422, f"multipart/form-data body has more than {max_parts} parts")
        names.append("?")
        state["headers"], state["keep"] = {}, False

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state["field"] += data[start:end]
        if len(state["field"]) > MAX_HEADER_BYTES:
            raise APIError(422, "multipart/form-data part header is too long")

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state["value"] += data[start:end]
        if len(state["value"]) > MAX_HEADER_BYTES:
            raise APIError(422, "multipart/form-data part header is too long")

    def on_header_end() -> None:
        if len(state["headers"]) >= MAX_PART_HEADERS:
            raise APIError(422, f"multipart/form-data part has more than {MAX_PART_HEADERS} headers")
        name = state["field"].decode("latin-1").strip().lower()
        state["headers"][name] = state["value"].decode("latin-1").strip()
        state["field"], state["value"] = bytearray(), bytearray()

    def on_headers_finished() -> None:
        _, disposition = parse_options_header(state["headers"].get("content-disposition", ""))
        names[-1] = disposition.get(b"name", b"?").decode("utf-8", "replace")
        state["keep"] = names[-1] == field and not found
        if state["keep"]:
            found.append(bytearray())

    def on_part_data(data: bytes, start: int, end: int) -> None:
        if state["keep"]:
            found[0].extend(data[start:end])

    def on_part_end() -> None:
        state["keep"] = False

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
        },
    )
    try:
        parser.write(body)
        parser.finalize()
    except MultipartParseError as error:
        raise APIError(422, f"malformed multipart/form-data body: {error}") from None
    if found:
        return found[0]
    raise APIError(422, f"multipart/form-data has no {field!r} field (fields: {', '.join(names) or 'none'})")


def parse_json(body: bytes | bytearray) -> object:
    """``json.loads`` that answers 422 for anything it cannot take: bad syntax, bad UTF-8,
    nesting deeper than the interpreter's recursion limit, integers of more than 4,300 digits."""
    try:
        return json.loads(body)
    except RecursionError:
        raise APIError(422, "body is not usable JSON: it is nested too deeply") from None
    except ValueError as error:  # JSONDecodeError, UnicodeDecodeError, the int-digits limit
        raise APIError(422, f"body is not valid JSON: {error}") from None


def json_image(body: bytes | bytearray, max_bytes: int, key: str = IMAGE_FIELD) -> bytes:
    """The image bytes of a ``{"image": "data:image/...;base64,..."}`` body."""
    payload = parse_json(body)
    if not isinstance(payload, dict) or key not in payload:
        raise APIError(422, f'JSON body must be an object with an "{key}" data URL')
    return decode_data_url(payload[key], max_bytes)


def body_kind(request: Request) -> str:
    """``"multipart"`` or ``"json"`` from the Content-Type; 415 for any other body type."""
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media == "multipart/form-data":
        return "multipart"
    if media == "application/json" or media.endswith("+json"):
        return "json"
    shown = media or "no Content-Type"
    raise APIError(
        415,
        f"request body is {shown}; send multipart/form-data with an 'image' file field, "
        'or JSON {"image": "data:image/...;base64,..."}',
    )


async def read_upload(request: Request, max_bytes: int) -> tuple[str, bytearray]:
    """(kind, body) of an upload request, read within the size limit of its kind."""
    kind = body_kind(request)
    limit = max_bytes + BODY_SLACK_BYTES if kind == "multipart" else body_limit(max_bytes)
    return kind, await read_limited(request, limit)


def extract_image(
    kind: str, content_type: str, body: bytes | bytearray, max_bytes: int, max_parts: int = DEFAULT_MAX_PARTS
) -> bytes | bytearray:
    """The image bytes inside a body :func:`read_upload` returned (CPU work: run it off the loop)."""
    if kind == "multipart":
        return multipart_field(body, content_type, max_parts=max_parts)
    return json_image(body, max_bytes)
