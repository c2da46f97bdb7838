"""The in-browser site in headless Chromium: download size, cold first photo, p50 per photo.

    .venv/bin/python benchmarks/browser.py [--photos 20] [--weights auto|fp16|fp32] [--no-fp16-check]

Builds the site (``egr site build --in-browser``) into a temporary folder, serves it from a plain
static server on 127.0.0.1 under /project-name/ (every other host blocked), and measures in
Debian's Chromium (one thread: no cross-origin isolation, as on GitHub Pages):

- the download: model and WebAssembly runtime, raw and gzip -9 (what a compressing host sends);
- cold: a fresh browser profile opens the page, downloads and compiles everything, classifies
  its first photo;
- warm: p50/p95 per photo over ``--photos`` 640x480 JPEGs (choose file -> result shown), and the
  worker's own time (decode excluded), then a second visit that loads from the browser's cache;
- beside it, Python ``Recognizer.predict`` p50 on the same files in the same run, on all cores
  and on one thread.

With ../shared/data present it also checks, in Python, that the shipped fp16 weights give the
same label as fp32 on every reference photo (``--no-fp16-check`` skips it).
"""

from __future__ import annotations

import argparse
import functools
import gzip
import json
import tempfile
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
from _common import SHARED, percentiles
from PIL import Image

from ethnic_group_recognizer import Recognizer
from ethnic_group_recognizer.config import Config
from ethnic_group_recognizer.site import build_in_browser_site, compare_models

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
SUB_PATH = "project-name"


def photos(count: int, folder: Path) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        y, x = np.mgrid[0:480, 0:640]
        base = np.stack([x * 255 / 640, y * 255 / 480, (x + y) % 64 * 4], -1)
        array = np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)
        path = folder / f"photo{i}.jpg"
        Image.fromarray(array).save(path, quality=85)
        paths.append(path)
    return paths


def serve(www: Path) -> tuple[ThreadingHTTPServer, str]:
    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            """No log lines in the benchmark output."""

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(www)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/{SUB_PATH}/"


def offline(context) -> None:
    context.route(
        "**/*",
        lambda route: (
            route.continue_() if route.request.url.startswith("http://127.0.0.1:") else route.abort()
        ),
    )


def wait_ready(page, timeout_ms: int = 300_000) -> None:
    page.wait_for_function(
        "() => ['ready', 'error', 'unsupported'].includes(document.documentElement.dataset.egrState)",
        timeout=timeout_ms,
    )
    state = page.evaluate("document.documentElement.dataset.egrState")
    if state != "ready":
        raise SystemExit(f"the page did not get ready ({state}): {page.text_content('#error')}")


def classify(page, photo: Path) -> tuple[float, float]:
    """(seconds from choosing the file to the result shown, the worker's own milliseconds)."""
    start = time.perf_counter()
    page.set_input_files("#file", str(photo))
    page.wait_for_function(
        "(name) => document.getElementById('result').dataset.photo === name",
        arg=photo.name,
        timeout=300_000,
    )
    seconds = time.perf_counter() - start
    return seconds, float(page.get_attribute("#result", "data-milliseconds") or "nan")


def python_p50(paths: list[Path], threads: int) -> float:
    recognizer = Recognizer.load(config=Config(threads=threads))
    for path in paths[:3]:
        recognizer.predict(path)
    samples = []
    for path in paths:
        start = time.perf_counter()
        recognizer.predict(path)
        samples.append((time.perf_counter() - start) * 1000)
    return percentiles(samples)["p50"]


def fp16_on_reference_photos(site_root: Path) -> str:
    from ethnic_group_recognizer.images import ImageError, is_image_path

    if not SHARED.is_dir():
        return f"fp16 check on reference photos skipped: no {SHARED}"
    files = sorted(p for p in SHARED.rglob("*") if p.is_file() and is_image_path(p))
    reference = Recognizer.load()
    images = []
    for path in files:
        try:
            images.append(reference.decode(path))  # as the product decodes (draft mode to its views' need)
        except ImageError:
            continue
    shipped = Recognizer.load(site_root / "model")
    check = compare_models(reference, shipped, images)
    return (
        f"shipped weights vs fp32 on {check['photos']} reference photos (../shared/data): "
        f"{check['labels_kept']} same label or abstention, largest probability change "
        f"{check['max_probability_difference']:.4f}"
    )


def main() -> None:
    from playwright.sync_api import sync_playwright

    parser = argparse.ArgumentParser()
    parser.add_argument("--photos", type=int, default=20)
    parser.add_argument("--weights", default="auto")
    parser.add_argument("--no-fp16-check", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        www = tmp_path / "www"
        start = time.perf_counter()
        site = build_in_browser_site(www / SUB_PATH, weights=args.weights)
        build_s = time.perf_counter() - start
        root = www / SUB_PATH
        model = root / site.manifest["model"]["file"]["path"]
        wasm = root / site.manifest["runtime"]["wasm"]["path"]
        code = sum(p.stat().st_size for p in [*root.glob("local/*.js"), *root.glob("ort/*.mjs")])
        print(f"build: {build_s:.1f} s; {site.notes[0]}")
        for name, path in (("model", model), ("runtime .wasm", wasm)):
            raw = path.stat().st_size
            packed = len(gzip.compress(path.read_bytes(), 9))
            print(f"download {name:14s} {raw / 1e6:6.1f} MB raw, {packed / 1e6:6.1f} MB gzip -9")
        print(f"download JS (page, worker, runtime module) {code / 1e3:.0f} kB raw")
        paths = photos(args.photos, tmp_path)
        server, base = serve(www)
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
                context = browser.new_context()
                offline(context)
                page = context.new_page()
                start = time.perf_counter()
                page.goto(base + "recognize.html")
                wait_ready(page)
                ready_s = time.perf_counter() - start
                first_s, first_ms = classify(page, paths[0])
                print(
                    f"cold (fresh profile): page open -> model ready {ready_s:.2f} s, first photo "
                    f"{first_s:.2f} s (worker {first_ms:.0f} ms); total {ready_s + first_s:.2f} s"
                )
                shown, worker, gaps, same = [], [], [], 0
                reference = Recognizer.load()
                for path in paths[1:]:
                    seconds, ms = classify(page, path)
                    shown.append(seconds * 1000)
                    worker.append(ms)
                    expected = reference.predict(path)
                    scores = json.loads(page.get_attribute("#result", "data-scores"))
                    wanted = {**expected.scores, "other": expected.abstain_probability}
                    gaps.append(max(abs(scores[label] - p) for label, p in wanted.items()))
                    same += page.get_attribute("#result", "data-label") == (expected.label or "")
                stats = percentiles(shown)
                print(
                    f"warm, per photo (choose -> shown, {len(shown)} photos 640x480, "
                    f"{len(reference.views)} views): "
                    f"p50 {stats['p50']:.0f} ms, p95 {stats['p95']:.0f} ms; worker alone p50 "
                    f"{percentiles(worker)['p50']:.0f} ms"
                )
                print(
                    f"against Python (fp32) on those photos: {same}/{len(gaps)} same label or abstention, "
                    f"largest probability gap {max(gaps):.4f}"
                )
                page.close()
                page = context.new_page()
                start = time.perf_counter()
                page.goto(base + "recognize.html")
                wait_ready(page)
                print(
                    f"second visit (browser cache): page open -> ready {time.perf_counter() - start:.2f} s "
                    f"({page.text_content('#download-text')})"
                )
                browser.close()
        finally:
            server.shutdown()
            server.server_close()
        print(
            f"Python Recognizer.predict p50 on the same files: {python_p50(paths, 0):.0f} ms (all cores), "
            f"{python_p50(paths, 1):.0f} ms (one thread)"
        )
        if not args.no_fp16_check and site.manifest["model"]["weights"] == "fp16":
            print(fp16_on_reference_photos(root))
        print(
            json.dumps(
                {
                    "weights": site.manifest["model"]["weights"],
                    "check": site.manifest["model"]["weights_check"],
                }
            )
        )


if __name__ == "__main__":
    main()
