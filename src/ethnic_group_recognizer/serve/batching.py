"""An asyncio micro-batcher: concurrent requests share one model call instead of queueing for one each.

A batch of N photos through onnxruntime costs less than N single calls (fewer kernel launches
and better cache use), so under load the batcher waits a few milliseconds for company, then runs
the whole batch in the thread pool. With a single request in flight it adds at most that wait.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor

import numpy as np
from PIL import Image

RunBatch = Callable[[Sequence[Image.Image]], np.ndarray]


class MicroBatcher:
    """Collect images for up to ``wait_s`` (or ``max_batch_size`` images), run them as one batch.

    ``max_in_flight`` batches may run at once in ``executor``; while they do, new requests
    queue and form the next batch. Bound to the event loop it is first used on.
    """

    def __init__(
        self,
        run_batch: RunBatch,
        executor: Executor,
        max_batch_size: int = 8,
        wait_s: float = 0.005,
        max_in_flight: int = 1,
    ):
        if max_batch_size < 1 or max_in_flight < 1 or wait_s < 0:
            raise ValueError("max_batch_size and max_in_flight must be >= 1 and wait_s >= 0")
        self.run_batch = run_batch
        self.executor = executor
        self.max_batch_size = max_batch_size
        self.wait_s = wait_s
        self.max_in_flight = max_in_flight
        self._pending: deque[tuple[Image.Image, asyncio.Future]] = deque()
        self._wakeup: asyncio.Event | None = None
        self._slots: asyncio.Semaphore | None = None
        self._task: asyncio.Task | None = None
        self._running: set[asyncio.Task] = set()
        #: Sizes of the batches run so far (bounded), for the benchmark and the tests.
        self.batch_sizes: deque[int] = deque(maxlen=10_000)

    async def submit(self, image: Image.Image) -> np.ndarray:
        """The probability row for one image, computed in a batch with whatever else is waiting."""
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done():
            self._wakeup = asyncio.Event()
            self._slots = asyncio.Semaphore(self.max_in_flight)
            self._task = loop.create_task(self._collect())
        future: asyncio.Future = loop.create_future()
        self._pending.append((image, future))
        self._wakeup.set()
        return await future

    async def _collect(self) -> None:
        assert self._wakeup is not None and self._slots is not None
        loop = asyncio.get_running_loop()
        while True:
            await self._slots.acquire()  # wait for a free slot first: the queue grows meanwhile
            while not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
            deadline = loop.time() + self.wait_s
            while len(self._pending) < self.max_batch_size and (remaining := deadline - loop.time()) > 0:
                self._wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
            batch = [self._pending.popleft() for _ in range(min(self.max_batch_size, len(self._pending)))]
            batch = [(image, future) for image, future in batch if not future.done()]  # drop cancelled
            if not batch:
                self._slots.release()
                continue
            task = loop.create_task(self._run(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _run(self, batch: list[tuple[Image.Image, asyncio.Future]]) -> None:
        assert self._slots is not None
        try:
            images = [image for image, _ in batch]
            self.batch_sizes.append(len(images))
            loop = asyncio.get_running_loop()
            probabilities = await loop.run_in_executor(self.executor, self.run_batch, images)
            for (_, future), row in zip(batch, probabilities, strict=True):
                if not future.done():
                    future.set_result(row)
        except Exception as error:  # every waiting request learns of the failure
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
        finally:
            self._slots.release()

    async def close(self) -> None:
        """Stop collecting; requests still waiting fail rather than hang."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        while self._pending:
            _, future = self._pending.popleft()
            if not future.done():
                future.set_exception(RuntimeError("server is shutting down"))
