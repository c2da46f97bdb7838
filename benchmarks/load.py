"""Bounded load test of ``egr serve`` on 127.0.0.1: N concurrent clients for T seconds, with and without batching.

    .venv/bin/python benchmarks/load.py [--concurrency 8] [--seconds 20] [--modes batched,unbatched]

Starts the real server (``egr serve``, the shipped model) in a subprocess for each mode, warms it
up, then N closed-loop clients POST the same 640x480 JPEG (multipart) for T seconds. Prints
requests/s, p50/p95/p99 latency, errors (must be 0) and the server's resident memory (peak
sampled RSS and the kernel's high-water mark). Client and server share this machine's cores.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
from _common import percentiles
from PIL import Image, ImageDraw


def test_photo() -> bytes:
    """A generated 640x480 JPEG of about 60 KB (stripes, a disc, noise): no third-party pixels."""
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(60, 200, (480, 640, 3), dtype=np.uint8))
    draw = ImageDraw.Draw(image)
    for x in range(0, 640, 40):
        draw.rectangle([x, 0, x + 18, 480], fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
    draw.ellipse([200, 120, 440, 360], fill=(180, 30, 40))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the server and its decoding workers have used: a load-independent
    cost per request (the workers are the server's child processes)."""
    children = Path(f"/proc/{pid}/task/{pid}/children")
    total = 0.0
    for process in [pid, *(int(p) for p in (children.read_text().split() if children.exists() else []))]:
        try:
            fields = Path(f"/proc/{process}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # a worker replaced meanwhile
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def memory_kb(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields


def start_server(port: int, extra: list[str]) -> subprocess.Popen:
    command = [sys.executable, "-m", "ethnic_group_recognizer.cli", "serve", "--port", str(port), *extra]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"server exited with {process.returncode}: {' '.join(command)}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return process
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    process.kill()
    sys.exit("server did not become ready in 120 s")


async def run_load(base: str, photo: bytes, concurrency: int, seconds: float, pid: int) -> dict:
    latencies: list[float] = []
    errors: dict[str, int] = {}
    peak_rss = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, timeout=30, limits=limits) as client:

        async def one() -> None:
            started = time.perf_counter()
            try:
                response = await client.post(
                    "/api/v1/predict", files={"image": ("p.jpg", photo, "image/jpeg")}
                )
                if response.status_code != 200:
                    errors[str(response.status_code)] = errors.get(str(response.status_code), 0) + 1
                    return
            except httpx.HTTPError as error:
                errors[type(error).__name__] = errors.get(type(error).__name__, 0) + 1
                return
            latencies.append((time.perf_counter() - started) * 1000)

        for _ in range(3):  # warm-up, not counted
            await asyncio.gather(*(one() for _ in range(concurrency)))
        latencies.clear()
        errors.clear()
        deadline = time.perf_counter() + seconds

        async def worker() -> None:
            while time.perf_counter() < deadline:
                await one()

        async def sample_memory() -> None:
            nonlocal peak_rss
            while time.perf_counter() < deadline:
                peak_rss = max(peak_rss, memory_kb(pid).get("VmRSS", 0))
                await asyncio.sleep(0.5)

        started = time.perf_counter()
        server_cpu, client_cpu = cpu_seconds(pid), time.process_time()
        await asyncio.gather(sample_memory(), *(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
        server_cpu, client_cpu = cpu_seconds(pid) - server_cpu, time.process_time() - client_cpu
    stats = percentiles(latencies) if latencies else {"p50": 0, "p95": 0, "p99": 0, "mean": 0}
    return {
        "requests": len(latencies),
        "rps": len(latencies) / elapsed,
        **stats,
        "errors": sum(errors.values()),
        "error_kinds": errors,
        "peak_rss_mb": peak_rss / 1024,
        "hwm_mb": memory_kb(pid).get("VmHWM", 0) / 1024,
        "server_cpu_ms": server_cpu * 1000 / max(1, len(latencies)),
        "client_cpu_ms": client_cpu * 1000 / max(1, len(latencies)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--modes", default="batched,unbatched", help="comma-separated: batched, unbatched")
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--batch-wait-ms", type=float, default=5.0)
    parser.add_argument("--batch-concurrency", type=int, default=2)
    parser.add_argument("--onnx-threads", type=int, default=1)
    args = parser.parse_args()
    if not 1 <= args.concurrency <= 64 or not 1 <= args.seconds <= 300:
        sys.exit("keep it bounded: concurrency 1-64, seconds 1-300")
    photo = test_photo()
    load = os.getloadavg()[0]
    cores = len(os.sched_getaffinity(0))
    print(f"# {cores} cores, load average {load:.1f} before the run; {len(photo):,} byte JPEG, 640x480")
    print(f"# concurrency {args.concurrency}, {args.seconds:.0f} s per mode")
    print(
        f"{'mode':<10} {'requests':>8} {'req/s':>7} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} {'errors':>6} {'RSS MB':>7} {'HWM MB':>7} {'srv CPU ms/req':>14} {'cli CPU ms/req':>14}"
    )
    for mode in args.modes.split(","):
        extra = ["--max-batch-size", str(args.max_batch_size), "--batch-wait-ms", str(args.batch_wait_ms)]
        extra += [
            "--batch-concurrency",
            str(args.batch_concurrency),
            "--onnx-threads",
            str(args.onnx_threads),
        ]
        if mode not in ("batched", "unbatched"):
            sys.exit(f"unknown mode {mode!r}")
        extra.append("--batching" if mode == "batched" else "--no-batching")
        # Every client may hold an upload at once: this measures throughput, not admission control.
        extra += ["--max-uploads", str(max(8, args.concurrency))]
        port = free_port()
        server = start_server(port, extra)
        try:
            result = asyncio.run(
                run_load(f"http://127.0.0.1:{port}", photo, args.concurrency, args.seconds, server.pid)
            )
        finally:
            server.terminate()
            server.wait(timeout=30)
        print(
            f"{mode:<10} {result['requests']:>8} {result['rps']:>7.1f} {result['p50']:>7.0f} {result['p95']:>7.0f} "
            f"{result['p99']:>7.0f} {result['errors']:>6} {result['peak_rss_mb']:>7.0f} {result['hwm_mb']:>7.0f}"
            f" {result['server_cpu_ms']:>14.1f} {result['client_cpu_ms']:>14.1f}"
            + (f"  {result['error_kinds']}" if result["errors"] else "")
        )
    print(f"# load average after: {os.getloadavg()[0]:.1f}")
    print(
        f"# CPU ms/req is load-independent: {cores} idle cores serve at most {cores} * 1000 / (srv + cli) req/s"
    )


if __name__ == "__main__":
    main()
