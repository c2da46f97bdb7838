"""Limits that keep one client from taking the server: a body-read deadline and admission slots.

* :class:`BodyDeadlineMiddleware` (pure ASGI): the whole request body must arrive within
  ``timeout_s`` of the first read, or the request is answered 408 and the connection closed.
  uvicorn only times out idle keep-alive connections; a body trickling at 1 byte a second would
  otherwise hold a worker slot and its buffer for as long as the client likes.
* :class:`Slots`: a counted admission gate. Uploads held in memory wait up to ``wait_s`` for one
  of ``size`` slots, then get 503 with ``Retry-After``; explanations get 429 at once when full.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator
from typing import Any

from ethnic_group_recognizer.serve.errors import APIError

#: Sent with the 408: a client that trickles its body loses the connection, not just the request.
#: Other refusals keep it open, so the client reads the answer (closing with unread data in the
#: socket resets the connection before the client sees why); uvicorn discards the rest of the body.
CLOSE = {"Connection": "close"}


class BodyDeadlineMiddleware:
    """Answer 408 when a request body has not fully arrived ``timeout_s`` after it was first read."""

    def __init__(self, app: Any, timeout_s: float):
        if not timeout_s > 0:
            raise ValueError("the body-read timeout must be positive")
        self.app = app
        self.timeout_s = timeout_s

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        state: dict[str, Any] = {"deadline": None, "done": False}

        async def receive_with_deadline() -> dict:
            if state["done"]:  # the body is in: later reads wait for a disconnect, untimed
                return await receive()
            if state["deadline"] is None:
                state["deadline"] = loop.time() + self.timeout_s
            remaining = state["deadline"] - loop.time()
            try:
                if remaining <= 0:
                    raise TimeoutError
                message = await asyncio.wait_for(receive(), remaining)
            except TimeoutError:
                raise APIError(
                    408,
                    f"the request body did not arrive within {self.timeout_s:g} s; send it faster or smaller",
                    headers=CLOSE,
                ) from None
            if message.get("type") != "http.request" or not message.get("more_body", False):
                state["done"] = True
            return message

        await self.app(scope, receive_with_deadline, send)


class Slots:
    """At most ``size`` holders at once; a newcomer waits up to ``wait_s`` (0: not at all), then is refused."""

    def __init__(self, size: int, wait_s: float, status: int, what: str, retry_after_s: float):
        if size < 1:
            raise ValueError(f"{what}: at least one slot is needed")
        if not 0 <= wait_s <= 600:
            raise ValueError(f"{what}: the wait must be between 0 and 600 s")
        self.size = size
        self.wait_s = wait_s
        self.status = status
        self.what = what
        self.retry_after = str(max(1, math.ceil(retry_after_s)))
        self._semaphore = asyncio.Semaphore(size)
        #: How many newcomers were refused so far (for the tests and the abuse benchmark).
        self.refused = 0

    def _refuse(self) -> APIError:
        self.refused += 1
        return APIError(
            self.status,
            f"too many {self.what} at once (the limit is {self.size}); retry after {self.retry_after} s",
            headers={"Retry-After": self.retry_after},
        )

    @contextlib.asynccontextmanager
    async def hold(self) -> AsyncIterator[None]:
        if self._semaphore.locked() and not self.wait_s:
            raise self._refuse()
        try:
            await asyncio.wait_for(self._semaphore.acquire(), self.wait_s or None)
        except TimeoutError:
            raise self._refuse() from None
        try:
            yield
        finally:
            self._semaphore.release()
