"""A real uvicorn server on 127.0.0.1 in a background thread, and generated photos, for the serving tests.

Import the fixtures into a test module (``from serve_fixtures import live_server, ...``). One
server per session keeps the suites fast; it loads the shipped default model once.
"""

from __future__ import annotations

import io
import socket
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import uvicorn
from PIL import Image, ImageDraw

from ethnic_group_recognizer.config import DEFAULT_MODEL_DIR
from ethnic_group_recognizer.model import Recognizer
from ethnic_group_recognizer.serve.app import ServeSettings, create_app

#: The session server refuses images over this, so the 413 tests need not send 10 MB.
TEST_UPLOAD_LIMIT = 2 * 1024 * 1024


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class LiveServer:
    """A uvicorn server running ``app`` on a free 127.0.0.1 port until :meth:`stop`."""

    app: object
    base: str = ""

    def start(self, timeout: float = 60.0) -> LiveServer:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        config = uvicorn.Config(self.app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        self.base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.base}/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if not self.thread.is_alive():
                break
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"test server did not become ready on {self.base}")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


#: A user's own classes: nothing of the shipped model's wording may show for a model of these.
OWN_LABELS = ("kimono", "kilt", "hanbok")
TINY_SIZE = 32


def tiny_model(directory: Path, labels: tuple[str, ...] = OWN_LABELS) -> Path:
    """A real model directory with a tiny ONNX graph (mean colour -> softmax) and its own labels.

    Red, green and blue photos score the first, second and third label; a grey one scores none
    strongly. No training and no backbone download, so any test can have a user's model.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from ethnic_group_recognizer.model_dir import (
        BackboneInfo,
        Calibration,
        ModelMetadata,
        Provenance,
        write_model_dir,
    )

    directory.mkdir(parents=True, exist_ok=True)
    k = len(labels) + 1
    weights = np.zeros((3, k), np.float32)
    for index in range(min(3, len(labels))):
        weights[index, index] = 6.0
    nodes = [
        helper.make_node("GlobalAveragePool", ["pixels"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["embedding"], axis=1),
        helper.make_node("MatMul", ["embedding", "weights"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["batch", 3, TINY_SIZE, TINY_SIZE])],
        [
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", k]),
            helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", 3]),
        ],
        [numpy_helper.from_array(weights, "weights")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(directory / "model.onnx"))
    write_model_dir(
        directory,
        ModelMetadata(
            labels=labels,
            name="my-costumes",
            version="2026.12.01",
            backbone=BackboneInfo(name="mean-colour", image_size=TINY_SIZE, pooling="mean"),
            calibration=Calibration(temperature=1.0, threshold=0.5, calibrated_on="nothing (a test graph)"),
            tta=False,
            format_version=1,  # a hand-made one-view-a-row graph [N, 3, S, S]
            training_counts=dict.fromkeys(labels, 40),
            abstain_training_count=0,
            provenance=Provenance(0, 0.2, 0, 0, "", "", 0.0),
            options={},
        ),
    )
    return directory


def require_default_model() -> Path:
    if not (DEFAULT_MODEL_DIR / "model.onnx").is_file():
        pytest.skip(f"the shipped default model is not built yet ({DEFAULT_MODEL_DIR})")
    return DEFAULT_MODEL_DIR


def photo(seed: int = 0, size: tuple[int, int] = (320, 240)) -> Image.Image:
    """A generated colourful 'photo': stripes, a disc and noise; no third-party pixels."""
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
    draw = ImageDraw.Draw(image)
    for x in range(0, size[0], 24):
        draw.rectangle([x, 0, x + 10, size[1]], fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
    draw.ellipse([size[0] // 4, size[1] // 4, size[0] // 2, size[1] // 2], fill=(200, 30, 30))
    return image


def encode(image: Image.Image, fmt: str = "JPEG", **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def write_examples(root: Path) -> Path:
    """A small examples folder in the shared-data layout (<label>/<file>), made of generated photos."""
    for i, label in enumerate(("Bai people", "Naga people", "other")):
        folder = root / label
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"generated{i}.png").write_bytes(encode(photo(100 + i), "PNG"))
    return root


@pytest.fixture(scope="session")
def recognizer() -> Recognizer:
    return Recognizer.load(require_default_model())


@pytest.fixture(scope="session")
def site_origin() -> str:
    """An origin (free port) the session server allows by CORS; the browser test serves a built site there."""
    return f"http://127.0.0.1:{free_port()}"


@pytest.fixture(scope="session")
def live_server(
    recognizer: Recognizer, tmp_path_factory: pytest.TempPathFactory, site_origin: str
) -> Iterator[LiveServer]:
    """The session's server: batching on, a 2 MB upload limit, generated examples, one allowed origin."""
    settings = ServeSettings(
        cors_origins=["https://site.example", site_origin],
        max_upload_bytes=TEST_UPLOAD_LIMIT,
        examples_dir=write_examples(tmp_path_factory.mktemp("examples")),
        batching=True,
        batch_wait_ms=10,
        # The concurrency tests send 16 uploads at once to 8 slots; on a busy machine the default
        # 2 s wait for a slot can pass (a 503), which is not what they test.
        upload_wait_s=60,
    )
    server = LiveServer(create_app(settings, recognizer=recognizer)).start()
    yield server
    server.stop()


# -- hostile payloads (tests/test_serve_hardening.py and benchmarks/abuse.py replay them) -------
def _jpeg_segments(data: bytes) -> list[tuple[int, int, int]]:
    """(marker, start, end) of each segment of a JPEG; a scan runs to the next non-RST marker."""
    position, segments = 2, []
    while position < len(data) and data[position] == 0xFF:
        marker = data[position + 1]
        if marker == 0xD9:
            segments.append((marker, position, position + 2))
            break
        end = position + 2 + struct.unpack(">H", data[position + 2 : position + 4])[0]
        if marker == 0xDA:
            while True:
                end = data.index(b"\xff", end)
                if data[end + 1] == 0 or 0xD0 <= data[end + 1] <= 0xD7:
                    end += 2
                    continue
                break
        segments.append((marker, position, end))
        position = end
    return segments


def scan_bomb(side: int = 7000, scans: int = 96) -> bytes:
    """A progressive grey JPEG of ``side`` x ``side`` whose last scan (with its Huffman table) is
    repeated until the file has ``scans`` scans: about 200 kB that cost ~0.1 s of CPU per scan at
    7000 px (13 s for 96 scans, under the 100-scan limit), because every scan walks every block."""
    buffer = io.BytesIO()
    Image.new("L", (side, side), 128).save(buffer, "JPEG", progressive=True, quality=90)
    data = buffer.getvalue()
    segments = _jpeg_segments(data)
    sos = [segment for segment in segments if segment[0] == 0xDA]
    last = segments.index(sos[-1])
    start = segments[last - 1][1] if segments[last - 1][0] == 0xC4 else sos[-1][1]
    repeat = data[start : sos[-1][2]]
    return data[: sos[-1][2]] + repeat * max(0, scans - len(sos)) + data[sos[-1][2] :]


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return (
        struct.pack(">I", len(payload))
        + kind
        + payload
        + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)
    )


def zlib_bomb_png(chunk: bytes = b"zTXt", inflated: int = 64 * 1024 * 1024) -> bytes:
    """A valid small PNG with a zTXt (or iCCP) chunk that inflates to ``inflated`` bytes."""
    base = encode(photo(7, (64, 64)), "PNG")
    compressed = zlib.compress(bytes(inflated), 9)
    payload = (b"Comment" if chunk == b"zTXt" else b"icc") + b"\x00\x00" + compressed
    return base[:33] + _png_chunk(chunk, payload) + base[33:]


def bad_exif_jpeg() -> bytes:
    """A normal JPEG whose EXIF block claims 65,535 entries and ends after two bytes of them."""
    exif = b"Exif\x00\x00" + b"II*\x00\x08\x00\x00\x00" + b"\xff\xff" + b"\x12\x01\x03\x00"
    return encode(photo(8), "JPEG", exif=exif)


def sixteen_bit_png(side: int = 7990) -> bytes:
    """A flat 16-bit grey PNG of ``side`` x ``side`` pixels: about 120 kB on the wire."""
    return encode(Image.fromarray(np.zeros((side, side), np.uint16)), "PNG")


def many_parts_body(parts: int = 170_000, boundary: str = "b") -> bytes:
    """A multipart body of ``parts`` empty fields (and no image)."""
    field = f'--{boundary}\r\nContent-Disposition: form-data; name="f"\r\n\r\n\r\n'.encode()
    return field * parts + f"--{boundary}--\r\n".encode()


def deep_json(depth: int = 100_000, key: str = "image") -> bytes:
    return ('{"' + key + '": ' + "[" * depth + "]" * depth + "}").encode()


def huge_int_json(digits: int = 5_000, key: str = "image") -> bytes:
    return ('{"' + key + '": ' + "7" * digits + "}").encode()


def padded_png(size: int) -> bytes:
    """A real PNG padded after its end with zeros to exactly ``size`` bytes (decoders ignore the tail)."""
    data = encode(photo(9), "PNG")
    return data + bytes(size - len(data))
