"""Decode uploads in worker processes that can be killed, so no image can hold the server's CPU.

A crafted JPEG (thousands of progressive scans) or PNG can take tens of seconds of CPU inside
the C decoder, where no Python thread can be interrupted. Uploads are therefore decoded in a
small pool of separate processes (``python -m ethnic_group_recognizer.serve.decode_worker``,
started with fork+exec, never a bare fork of a process that runs onnxruntime threads). Each
request has a deadline: when it passes, the worker is killed (its CPU use stops at once), a
fresh one replaces it and the client gets a 503.

The pipe protocol is length-prefixed frames of JSON plus raw bytes (no pickle): a request is
``{"config": {...}, "target_side": int}`` + the encoded image; a reply is
``{"ok": true, "width": w, "height": h}`` + the RGB pixels, or ``{"ok": false, "message": ...}``.
Nothing is written to disk or logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import struct
import sys
from typing import Any, BinaryIO

#: Frame header: JSON length, payload length (big-endian, 4 + 8 bytes).
_FRAME = struct.Struct(">IQ")
#: A worker lowers its own priority, so inference in the server process runs first under load.
WORKER_NICENESS = 5
#: The longest side of the image a worker hands back: the model sees 320 px and the explanation
#: overlay 384 px, so more is memory and pipe time for nothing.
MAX_RETURN_SIDE = 1024
#: Address space a worker may map: the pixel budget needs a few hundred MB at most, so this only
#: turns a runaway allocation into a clean "out of memory" refusal instead of a swapping host.
WORKER_ADDRESS_SPACE_BYTES = 3 * 1024**3
#: A worker must say it is ready within this many seconds of being started.
START_TIMEOUT_S = 60.0

log = logging.getLogger(__name__)


class DecodeRefused(Exception):
    """The worker could not decode the image (a message for the client) or ran out of time."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind  # "image": the image is bad; "timeout"; "busy"; "crashed"
        self.message = message


# -- the worker process ------------------------------------------------------------------------
def _read_frame(stream: BinaryIO) -> tuple[dict, bytes] | None:
    head = stream.read(_FRAME.size)
    if len(head) < _FRAME.size:
        return None
    header_size, payload_size = _FRAME.unpack(head)
    header = json.loads(stream.read(header_size))
    payload = stream.read(payload_size)
    return header, payload


def _write_frame(stream: BinaryIO, header: dict, payload: bytes | memoryview = b"") -> None:
    encoded = json.dumps(header).encode()
    stream.write(_FRAME.pack(len(encoded), len(payload)))
    stream.write(encoded)
    stream.write(payload)
    stream.flush()


def _decode(header: dict, payload: bytes) -> tuple[dict, bytes]:
    """Decode one upload with the product's one image gate; shrink it to what serving needs."""
    from PIL import Image

    from ethnic_group_recognizer.config import Config
    from ethnic_group_recognizer.images import ImageError, load_image

    known = {f.name for f in dataclasses.fields(Config)}
    config = Config(**{k: v for k, v in header.get("config", {}).items() if k in known})
    target_side = int(header["target_side"]) if header.get("target_side") else None
    try:
        image = load_image(payload, config, target_side=target_side)
    except ImageError as error:
        return {"ok": False, "message": str(error)}, b""
    except Exception as error:  # noqa: BLE001 - images.py should refuse it first; a worker never dies of it
        return {"ok": False, "message": f"corrupt image: {type(error).__name__}"}, b""
    max_side = int(header.get("max_side") or MAX_RETURN_SIDE)
    if max(image.size) > max_side:
        scale = max_side / max(image.size)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.BILINEAR)
    return {"ok": True, "width": image.width, "height": image.height}, image.tobytes()


def worker_main() -> None:
    """Serve decode requests on stdin/stdout until stdin closes (the server went away)."""
    import resource

    with contextlib.suppress(OSError):
        os.nice(WORKER_NICENESS)
    with contextlib.suppress(OSError, ValueError):
        resource.setrlimit(resource.RLIMIT_AS, (WORKER_ADDRESS_SPACE_BYTES, WORKER_ADDRESS_SPACE_BYTES))
    # The protocol owns the original stdout; anything printed by a library goes to stderr.
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    source = os.fdopen(os.dup(0), "rb")
    _write_frame(out, {"ready": True})
    while (frame := _read_frame(source)) is not None:
        header, payload = frame
        reply, pixels = _decode(header, payload)
        del payload
        _write_frame(out, reply, pixels)


# -- the pool, in the server ---------------------------------------------------------------------
class _Worker:
    """One worker process and its pipes."""

    def __init__(self, process: asyncio.subprocess.Process):
        self.process = process

    @property
    def pid(self) -> int:
        return self.process.pid

    async def _read(self) -> tuple[dict, bytes]:
        assert self.process.stdout is not None
        head = await self.process.stdout.readexactly(_FRAME.size)
        header_size, payload_size = _FRAME.unpack(head)
        header = json.loads(await self.process.stdout.readexactly(header_size))
        payload = await self.process.stdout.readexactly(payload_size) if payload_size else b""
        return header, payload

    @property
    def alive(self) -> bool:
        return self.process.returncode is None

    async def send(self, header: dict, data: bytes | bytearray) -> None:
        assert self.process.stdin is not None
        encoded = json.dumps(header).encode()
        self.process.stdin.write(_FRAME.pack(len(encoded), len(data)) + encoded)
        self.process.stdin.write(data)
        await self.process.stdin.drain()

    async def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()
        with contextlib.suppress(Exception):
            await self.process.wait()


class DecodePool:
    """``size`` decoding processes; :meth:`decode` gives each upload ``timeout_s`` to decode, or 503.

    Bound to the event loop it is started on (the server's). Workers that time out, die or are
    abandoned by a cancelled request are killed and replaced.
    """

    def __init__(self, size: int, timeout_s: float, config: Any, target_side: int | None = None):
        if size < 1 or not timeout_s > 0:
            raise ValueError("a decode pool needs at least one worker and a positive timeout")
        self.size = size
        self.timeout_s = timeout_s
        self.target_side = target_side
        self.config_fields = {
            f.name: getattr(config, f.name)
            for f in dataclasses.fields(config)
            if isinstance(getattr(config, f.name), bool | int | float | str)
        }
        self._idle: asyncio.Queue[_Worker] | None = None
        self._workers: set[_Worker] = set()
        self._spawning: set[asyncio.Task] = set()
        self._closed = False
        #: Workers killed at their deadline so far (for tests and the abuse benchmark).
        self.killed: list[int] = []

    @property
    def pids(self) -> list[int]:
        return sorted(worker.pid for worker in self._workers)

    async def start(self) -> None:
        self._idle = asyncio.Queue()
        workers = await asyncio.gather(*(self._spawn() for _ in range(self.size)))
        for worker in workers:
            self._idle.put_nowait(worker)

    async def _spawn(self) -> _Worker:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "ethnic_group_recognizer.serve.decode_worker",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=None,
            env={**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"},
        )
        worker = _Worker(process)
        try:
            header, _ = await asyncio.wait_for(worker._read(), START_TIMEOUT_S)
        except (TimeoutError, asyncio.IncompleteReadError, ValueError) as error:
            await worker.kill()
            raise RuntimeError(f"image decoding worker did not start: {error!r}") from None
        if not header.get("ready"):
            await worker.kill()
            raise RuntimeError("image decoding worker did not start")
        self._workers.add(worker)
        return worker

    def _replace(self, worker: _Worker) -> None:
        """Kill ``worker`` and start another in the background, so the pool keeps its size."""
        self._workers.discard(worker)

        async def replace() -> None:
            await worker.kill()
            if self._closed:
                return
            try:
                fresh = await self._spawn()
            except RuntimeError as error:
                log.error("%s", error)
                return
            if self._closed:
                await fresh.kill()
            elif self._idle is not None:
                self._idle.put_nowait(fresh)

        task = asyncio.get_running_loop().create_task(replace())
        self._spawning.add(task)
        task.add_done_callback(self._spawning.discard)

    async def decode(self, data: bytes | bytearray) -> tuple[int, int, bytes]:
        """(width, height, RGB bytes) of the upload, or :class:`DecodeRefused`."""
        if self._idle is None:
            raise RuntimeError("DecodePool.start() was not awaited")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        header = {"config": self.config_fields, "target_side": self.target_side}
        for _ in range(self.size + 1):  # a worker found dead before it got the image is skipped
            worker = await self._acquire(deadline)
            try:
                await asyncio.wait_for(worker.send(header, data), max(0.001, deadline - loop.time()))
            except (ConnectionError, BrokenPipeError):
                self._replace(worker)
                continue
            except BaseException as error:
                self._replace(worker)
                if isinstance(error, TimeoutError):
                    raise self._timed_out(worker) from None
                raise
            break
        else:
            raise DecodeRefused("busy", "no image decoder could be started; try again shortly")
        try:
            reply, pixels = await asyncio.wait_for(worker._read(), max(0.001, deadline - loop.time()))
        except TimeoutError:
            self._replace(worker)
            raise self._timed_out(worker) from None
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):  # it died decoding this file
            self._replace(worker)
            raise DecodeRefused("crashed", "the image decoder failed on this file") from None
        except BaseException:  # cancelled mid-request: the worker's state is unknown
            self._replace(worker)
            raise
        self._idle.put_nowait(worker)
        if not reply.get("ok"):
            raise DecodeRefused("image", str(reply.get("message") or "undecodable image"))
        return int(reply["width"]), int(reply["height"]), pixels

    async def _acquire(self, deadline: float) -> _Worker:
        """An idle, living worker, waiting for one until ``deadline``."""
        assert self._idle is not None
        loop = asyncio.get_running_loop()
        while True:
            try:
                worker = await asyncio.wait_for(self._idle.get(), max(0.001, deadline - loop.time()))
            except TimeoutError:
                raise DecodeRefused(
                    "busy", f"every image decoder stayed busy for {self.timeout_s:g} s; try again shortly"
                ) from None
            if worker.alive:
                return worker
            self._replace(worker)

    def _timed_out(self, worker: _Worker) -> DecodeRefused:
        self.killed.append(worker.pid)
        return DecodeRefused(
            "timeout",
            f"decoding the image took longer than {self.timeout_s:g} s and was stopped; "
            "the file is too costly to decode",
        )

    async def close(self) -> None:
        self._closed = True
        for task in list(self._spawning):
            task.cancel()
        await asyncio.gather(*(worker.kill() for worker in list(self._workers)), return_exceptions=True)
        self._workers.clear()


if __name__ == "__main__":
    worker_main()
