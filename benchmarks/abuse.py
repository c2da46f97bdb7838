"""Replay every known attack on ``egr serve`` (127.0.0.1 only, bounded) and show what it costs.

    .venv/bin/python benchmarks/abuse.py [--url http://127.0.0.1:PORT --pid PID] [--attacks a,b,...]

Without ``--url`` it starts ``egr serve`` (the shipped model, default limits) on a free port.
For each attack it prints the statuses the attack got, the latency of normal requests (a
640x480 JPEG, one every 100 ms) sent while the attack runs, and the server's resident memory
before and after (and the decoding workers' total, when the server is this script's child or
``--pid`` is given). The payloads are the ones tests/test_serve_hardening.py uses
(tests/serve_fixtures.py); no third-party pixels.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from serve_fixtures import (  # noqa: E402
    bad_exif_jpeg,
    deep_json,
    encode,
    huge_int_json,
    many_parts_body,
    padded_png,
    photo,
    scan_bomb,
    sixteen_bit_png,
    zlib_bomb_png,
)

PREDICT = "/api/v1/predict"
MIB = 1024 * 1024


def memory_mb(pid: int | None) -> tuple[float, float]:
    """(server RSS, summed RSS of its child processes) in MB; zeros when the pid is unknown."""
    if not pid:
        return 0.0, 0.0

    def rss(process: int) -> float:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{process}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return 0.0

    children = Path(f"/proc/{pid}/task/{pid}/children")
    kids = [int(p) for p in children.read_text().split()] if children.exists() else []
    return rss(pid), sum(rss(kid) for kid in kids)


class Probe:
    """Normal requests, one every ``interval_s``, and the server's peak RSS, while an attack runs."""

    def __init__(self, base: str, photo_bytes: bytes, path: str, pid: int | None, interval_s: float = 0.1):
        self.base, self.photo, self.path, self.pid, self.interval_s = base, photo_bytes, path, pid, interval_s
        self.latencies: list[float] = []
        self.failures: Counter[str] = Counter()
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._requests, daemon=True),
            threading.Thread(target=self._memory, daemon=True),
        ]

    def _requests(self) -> None:
        with httpx.Client(base_url=self.base, timeout=60) as client:
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    if self.path == PREDICT:
                        response = client.post(self.path, files={"image": ("p.jpg", self.photo)})
                    else:
                        response = client.get(self.path)
                    if response.status_code != 200:
                        self.failures[str(response.status_code)] += 1
                except httpx.HTTPError as error:
                    self.failures[type(error).__name__] += 1
                self.latencies.append(time.monotonic() - started)
                self._stop.wait(self.interval_s)

    def _memory(self) -> None:
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, memory_mb(self.pid)[0])
            self._stop.wait(0.05)

    def __enter__(self) -> Probe:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=120)

    def summary(self) -> str:
        if not self.latencies:
            return "no probe answered"
        values = np.array(self.latencies) * 1000
        failed = f", failed {dict(self.failures)}" if self.failures else ""
        p50, top = np.percentile(values, 50), values.max()
        return f"{self.path} p50 {p50:.0f} ms, max {top:.0f} ms (n={len(values)}){failed}"


def post_many(base: str, count: int, path: str = PREDICT, **kwargs: Any) -> tuple[Counter[str], float]:
    """``count`` concurrent POSTs to ``path``; their statuses and the slowest answer's time."""

    def one(_: int) -> tuple[str, float]:
        started = time.monotonic()
        try:
            status = str(httpx.post(base + path, timeout=120, **kwargs).status_code)
        except httpx.HTTPError as error:
            status = type(error).__name__
        return status, time.monotonic() - started

    with ThreadPoolExecutor(count) as pool:
        results = list(pool.map(one, range(count)))
    return Counter(status for status, _ in results), max(seconds for _, seconds in results)


def raw_socket(base: str, head: dict[str, str]) -> tuple[socket.socket, bytes]:
    parts = urlsplit(base)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=60)
    lines = [f"POST {PREDICT} HTTP/1.1", f"Host: {parts.netloc}", *(f"{k}: {v}" for k, v in head.items())]
    return sock, ("\r\n".join(lines) + "\r\n\r\n").encode()


def status_of(sock: socket.socket) -> str:
    received = b""
    with contextlib.suppress(OSError):
        while b"\r\n" not in received and (chunk := sock.recv(4096)):
            received += chunk
    fields = received.split(b" ", 2)
    return fields[1].decode() if len(fields) > 1 else "closed"


# -- the attacks: each takes its prepared payload and returns (what it got, how long it took) ------
def scan_bomb_attack(base: str, bomb: bytes) -> tuple[str, float]:
    counts, seconds = post_many(base, 2, files={"image": ("bomb.jpg", bomb)})
    return f"2 x {len(bomb) // 1000} kB, 96 scans: {dict(counts)}", seconds


def zlib_bomb_attack(base: str, bombs: tuple[bytes, bytes]) -> tuple[str, float]:
    first, t1 = post_many(base, 4, files={"image": ("z.png", bombs[0])})
    second, t2 = post_many(base, 4, files={"image": ("i.png", bombs[1])})
    return f"4 zTXt + 4 iCCP (64 MiB inflated each): {dict(first + second)}", max(t1, t2)


def bad_exif_attack(base: str, data: bytes) -> tuple[str, float]:
    counts, seconds = post_many(base, 4, files={"image": ("exif.jpg", data)})
    return f"4 JPEGs with a truncated EXIF IFD: {dict(counts)}", seconds


def sixteen_bit_attack(base: str, data: bytes) -> tuple[str, float]:
    counts, seconds = post_many(base, 8, files={"image": ("16.png", data)})
    return f"8 x {len(data) // 1000} kB 16-bit 7990x7990 PNG: {dict(counts)}", seconds


def held_open_attack(base: str, body: memoryview, clients: int = 60) -> tuple[str, float]:
    statuses: list[str] = ["none"] * clients
    started = time.monotonic()

    def hold(index: int) -> None:
        head = {"Content-Type": "multipart/form-data; boundary=x", "Content-Length": str(len(body))}
        sock, request = raw_socket(base, head)
        with sock:
            with contextlib.suppress(OSError):
                sock.sendall(request)
                sock.sendall(body[:-1])
            statuses[index] = status_of(sock)

    threads = [threading.Thread(target=hold, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=90)
    return (
        f"{clients} x 10 MiB bodies, last byte never sent: {dict(Counter(statuses))}",
        time.monotonic() - started,
    )


def trickle_attack(base: str, _: None, limit_s: float = 60.0) -> tuple[str, float]:
    sock, request = raw_socket(base, {"Content-Type": "application/json", "Content-Length": "100000"})
    started = time.monotonic()
    status = f"no answer in {limit_s:.0f} s"
    with sock:
        sock.sendall(request)
        sock.settimeout(1.0)
        while time.monotonic() - started < limit_s:
            try:
                sock.sendall(b" ")
                chunk = sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                status = "connection closed"
                break
            status = chunk.split(b" ", 2)[1].decode() if chunk.startswith(b"HTTP/") else "closed"
            break
    return f"1 byte a second: {status}", time.monotonic() - started


def explain_flood_attack(base: str, image: bytes, seconds: float = 10.0) -> tuple[str, float]:
    deadline = time.monotonic() + seconds
    counts: Counter[str] = Counter()

    def client(_: int) -> None:
        with httpx.Client(base_url=base, timeout=120) as http:
            while time.monotonic() < deadline:
                response = http.post(PREDICT, params={"explain": "true"}, files={"image": ("e.jpg", image)})
                counts[str(response.status_code)] += 1
                if response.status_code == 429:
                    time.sleep(0.05)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(client, range(4)))
    return f"4 clients asking for explanations for {seconds:.0f} s: {dict(counts)}", seconds


def many_parts_attack(base: str, body: bytes) -> tuple[str, float]:
    headers = {"content-type": "multipart/form-data; boundary=b"}
    counts, seconds = post_many(base, 8, content=body, headers=headers)
    return f"8 x {len(body) / MIB:.1f} MiB bodies of 170,000 empty fields: {dict(counts)}", seconds


def deep_json_attack(base: str, body: bytes) -> tuple[str, float]:
    headers = {"content-type": "application/json"}
    first, t1 = post_many(base, 2, content=body, headers=headers)
    legacy = body.replace(b'"image"', b'"data"', 1)
    second, t2 = post_many(base, 2, "/run/predict", content=legacy, headers=headers)
    return f"JSON nested 100,000 deep (API, /run/predict): {dict(first)}, {dict(second)}", max(t1, t2)


def huge_int_attack(base: str, body: bytes) -> tuple[str, float]:
    counts, seconds = post_many(base, 2, content=body, headers={"content-type": "application/json"})
    return f"a 5,000-digit integer: {dict(counts)}", seconds


def exact_limit_png(base: str) -> tuple[bytes, str]:
    limit = int(httpx.get(base + "/api/v1/model", timeout=30).json()["serving"]["max_upload_bytes"])
    data = padded_png(limit)
    return data, "data:image/png;base64," + base64.b64encode(data).decode()


def padded_data_url_attack(base: str, payload: tuple[bytes, str]) -> tuple[str, float]:
    multipart, t1 = post_many(base, 1, files={"image": ("p.png", payload[0])})
    as_json, t2 = post_many(base, 1, json={"image": payload[1]})
    return f"a PNG of exactly the limit: multipart {dict(multipart)}, data URL {dict(as_json)}", max(t1, t2)


def normal_jpeg() -> bytes:
    return encode(photo(41, (640, 480)), "JPEG", quality=85)


Attack = Callable[[str, Any], tuple[str, float]]
#: name -> (what to build before the clock starts, given the server URL; the attack; what the probe asks)
ATTACKS: dict[str, tuple[Callable[[str], Any], Attack, str]] = {
    "scan-bomb": (lambda _: scan_bomb(), scan_bomb_attack, PREDICT),
    "zlib-bomb-png": (lambda _: (zlib_bomb_png(b"zTXt"), zlib_bomb_png(b"iCCP")), zlib_bomb_attack, PREDICT),
    "malformed-exif": (lambda _: bad_exif_jpeg(), bad_exif_attack, PREDICT),
    "16-bit-huge-png": (lambda _: sixteen_bit_png(), sixteen_bit_attack, PREDICT),
    "held-open-bodies": (lambda _: memoryview(bytes(10 * MIB)), held_open_attack, "/healthz"),
    "trickle-body": (lambda _: None, trickle_attack, PREDICT),
    "explain-flood": (lambda _: normal_jpeg(), explain_flood_attack, PREDICT),
    "many-field-multipart": (lambda _: many_parts_body(170_000), many_parts_attack, "/healthz"),
    "deep-json": (lambda _: deep_json(100_000), deep_json_attack, PREDICT),
    "huge-int": (lambda _: huge_int_json(5_000), huge_int_attack, PREDICT),
    "padded-data-url": (exact_limit_png, padded_data_url_attack, PREDICT),
}


def start_server(extra: list[str]) -> tuple[str, subprocess.Popen]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, "-m", "ethnic_group_recognizer.cli", "serve", "--port", str(port)]
    process = subprocess.Popen(
        [*command, "--no-access-log", *extra], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"server exited with {process.returncode}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(base + "/readyz", timeout=2).status_code == 200:
                return base, process
        time.sleep(0.2)
    process.kill()
    sys.exit("server did not become ready in 120 s")


def worker_hop_ms(image: bytes, repeats: int = 50) -> tuple[float, float]:
    """Median ms to decode ``image`` in this process and through a one-worker DecodePool."""
    import asyncio

    from ethnic_group_recognizer.config import Config
    from ethnic_group_recognizer.images import load_image
    from ethnic_group_recognizer.serve.decode_worker import DecodePool

    def direct() -> float:
        started = time.perf_counter()
        load_image(image).tobytes()
        return (time.perf_counter() - started) * 1000

    async def pooled() -> list[float]:
        pool = DecodePool(1, 10.0, Config(), 320)
        await pool.start()
        try:
            times = []
            for _ in range(repeats):
                started = time.perf_counter()
                await pool.decode(image)
                times.append((time.perf_counter() - started) * 1000)
            return times
        finally:
            await pool.close()

    return float(np.median([direct() for _ in range(repeats)])), float(np.median(asyncio.run(pooled())))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a running server on 127.0.0.1 (default: start one)")
    parser.add_argument("--pid", type=int, help="that server's process id, for its memory")
    parser.add_argument("--attacks", default=",".join(ATTACKS), help="comma-separated: " + ", ".join(ATTACKS))
    parser.add_argument("--serve-args", default="", help="extra 'egr serve' options when starting one")
    args = parser.parse_args()
    names = [name.strip() for name in args.attacks.split(",") if name.strip()]
    if unknown := [name for name in names if name not in ATTACKS]:
        sys.exit(f"unknown attacks: {', '.join(unknown)}")
    process = None
    if args.url:
        if urlsplit(args.url).hostname not in ("127.0.0.1", "localhost"):
            sys.exit("abuse.py only attacks a server on 127.0.0.1")
        base, pid = args.url.rstrip("/"), args.pid
    else:
        base, process = start_server(args.serve_args.split())
        pid = process.pid
    normal = encode(photo(40, (640, 480)), "JPEG", quality=85)
    in_process, pooled = worker_hop_ms(normal)
    print(
        f"# decoding the normal JPEG: {in_process:.1f} ms in process, {pooled:.1f} ms through a decoding "
        f"worker (median of 50): the worker hop adds {pooled - in_process:.1f} ms"
    )
    try:
        for _ in range(5):  # warm-up
            httpx.post(base + PREDICT, files={"image": ("p.jpg", normal)}, timeout=60)
        print(f"# server {base}; normal request: a {len(normal) // 1000} kB 640x480 JPEG every 100 ms")
        print(
            "| attack | what the attack got | attack took | normal requests meanwhile "
            "| server RSS before → peak → after | decoders' RSS after |"
        )
        print("| --- | --- | --- | --- | --- | --- |")
        for name in names:
            prepare, attack, probe_path = ATTACKS[name]
            payload = prepare(base)
            before, _ = memory_mb(pid)
            with Probe(base, normal, probe_path, pid) as probe:
                outcome, seconds = attack(base, payload)
            del payload
            time.sleep(1.0)
            after, workers = memory_mb(pid)
            peak = max(probe.peak_mb, after)
            print(
                f"| {name} | {outcome} | {seconds:.1f} s | {probe.summary()} "
                f"| {before:.0f} → {peak:.0f} → {after:.0f} MB | {workers:.0f} MB |",
                flush=True,
            )
    finally:
        if process is not None:
            process.terminate()
            process.wait(timeout=30)


if __name__ == "__main__":
    main()
