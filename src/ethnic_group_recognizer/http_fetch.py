"""The one capped HTTP body reader, shared by ``egr collect`` and the batch engines' URL inputs.

Why one: a URL is untrusted input. Both readers must refuse a body larger than their limit (as
declared by ``Content-Length`` and as actually sent), a transfer that trickles past its deadline,
an empty body and a truncated one, with the same words, so a fix to one is a fix to both.
"""

from __future__ import annotations

import time

import httpx


class Refused(Exception):
    """A response we will not use; ``transient`` when asking again later may help."""

    def __init__(
        self,
        message: str,
        transient: bool = False,
        status: int | None = None,
        retry_after: float | None = None,
    ):
        super().__init__(message)
        self.transient = transient
        self.status = status
        self.retry_after = retry_after


def declared_length(response: httpx.Response) -> int | None:
    """The ``Content-Length`` the server declared, or None when absent or not a number."""
    value = response.headers.get("content-length", "").strip()
    return int(value) if value.isdigit() else None


def read_capped(
    response: httpx.Response,
    max_bytes: int,
    *,
    started: float | None = None,
    total_timeout: float | None = None,
) -> bytes:
    """The body of a streamed ``response``, read chunk by chunk, never holding over ``max_bytes``.

    ``started`` (a :func:`time.monotonic` reading, by default now) and ``total_timeout`` bound the
    whole transfer, which httpx's per-read timeout does not: a server sending one byte a second
    would otherwise hold the reader for ever. Raises :class:`Refused` for every unusable body.
    """
    started = time.monotonic() if started is None else started
    declared = declared_length(response)
    if declared and declared > max_bytes:
        raise Refused(f"too large: {declared:,} bytes (limit {max_bytes:,})")
    chunks, size = [], 0
    for chunk in response.iter_bytes():
        size += len(chunk)
        if size > max_bytes:
            raise Refused(f"too large: over {max_bytes:,} bytes")
        if total_timeout is not None and time.monotonic() - started > total_timeout:
            raise Refused(f"too slow: not complete after {total_timeout:g} s", transient=True)
        chunks.append(chunk)
    data = b"".join(chunks)
    if not data:
        raise Refused("empty response")
    if declared and len(data) < declared:
        raise Refused(f"truncated: {len(data):,} of {declared:,} bytes", transient=True)
    return data
