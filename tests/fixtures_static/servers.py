"""Helpers shared by the serving tests: a real ``egr serve`` subprocess and small generated images.

Imported as ``fixtures_static.servers`` (pytest puts ``tests/`` on ``sys.path``).
"""

from __future__ import annotations

import base64
import io
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest
import uvicorn
from PIL import Image

from ethnic_group_recognizer.model import DEFAULT_MODEL_DIR, Recognizer

PAGE_DIR = Path(__file__).parent / "page"
START_TIMEOUT_S = 90


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def default_recognizer() -> Recognizer:
    """The shipped model, which the server loads too; skip when this checkout has none."""
    if not (DEFAULT_MODEL_DIR / "model.onnx").is_file():
        pytest.skip(f"the shipped default model is not in this checkout ({DEFAULT_MODEL_DIR})")
    return Recognizer.load()


@dataclass
class Server:
    """A running server: its base URL and, once it has stopped, everything it printed."""

    base: str
    process: subprocess.Popen
    log_path: Path
    output: str = field(default="")

    def log(self) -> str:
        return self.output or (self.log_path.read_text(errors="replace") if self.log_path.exists() else "")


def wait_until_up(server: Server, probe: str) -> None:
    """Poll ``probe`` until the server answers anything; fail with its output if it dies or hangs."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if server.process.poll() is not None:
            raise RuntimeError(f"server exited with {server.process.returncode}:\n{server.log()[-4000:]}")
        try:
            httpx.get(server.base + probe, timeout=2)
            return
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"server did not start in {START_TIMEOUT_S} s:\n{server.log()[-4000:]}"
                ) from None
            time.sleep(0.2)


def stop(process: subprocess.Popen) -> None:
    """SIGTERM; a second one if open streams (Gradio's heartbeat) hold uvicorn's graceful stop."""
    for signal_count in range(2):
        process.terminate()
        try:
            process.wait(3 if signal_count == 0 else 10)
            return
        except subprocess.TimeoutExpired:
            continue
    process.kill()
    process.wait(5)


@contextmanager
def run_server(
    command: list[str], base: str, probe: str, env: dict[str, str] | None = None
) -> Iterator[Server]:
    """Start ``command`` (a server listening at ``base``), wait for it, stop it afterwards."""
    handle, name = tempfile.mkstemp(prefix="egr-server-", suffix=".log")
    log_path = Path(name)
    with os.fdopen(handle, "wb") as out:
        process = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            cwd=Path(__file__).resolve().parents[2],
        )
    server = Server(base, process, log_path)
    try:
        wait_until_up(server, probe)
        yield server
    finally:
        stop(process)
        server.output = server.log()
        log_path.unlink(missing_ok=True)


@contextmanager
def egr_serve(*args: str, env: dict[str, str] | None = None, preamble: str = "") -> Iterator[Server]:
    """Run the real ``egr serve`` CLI on a free 127.0.0.1 port.

    ``preamble`` is Python run first in the server process (used to hide the optional extra).
    """
    port = free_port()
    code = f"{preamble}\nfrom ethnic_group_recognizer.cli import app\napp(prog_name='egr')"
    command = [sys.executable, "-c", code, "serve", "--host", "127.0.0.1", "--port", str(port), *args]
    with run_server(command, f"http://127.0.0.1:{port}", "/run/predict", env) as server:
        yield server


def photo_bytes(fmt: str, size: tuple[int, int] = (160, 120), seed: int = 0) -> bytes:
    """A small deterministic 'photo' (smooth colours plus texture) encoded as ``fmt``."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0 : size[1], 0 : size[0]]
    pixels = np.stack([x * 255 / size[0], y * 255 / size[1], (x + y) % 64 * 4], axis=-1)
    pixels = np.clip(pixels + rng.normal(0, 20, pixels.shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def plain_bytes(color: tuple[int, int, int] = (255, 255, 255)) -> bytes:
    """A generated plain image: no dress, crafts or festival, so the product should abstain."""
    buffer = io.BytesIO()
    Image.new("RGB", (96, 96), color).save(buffer, format="PNG")
    return buffer.getvalue()


def data_url(data: bytes, mime: str) -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")


@contextmanager
def serve_in_thread(app) -> Iterator[str]:
    """Serve an ASGI ``app`` with uvicorn on a free port of 127.0.0.1 in this process; yields its base URL."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
