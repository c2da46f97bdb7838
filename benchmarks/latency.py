"""Prediction latency (one image) and folder throughput: onnxruntime fp32 vs int8 vs torch, 2 cores.

    .venv/bin/python benchmarks/latency.py [--images 200]

Prints p50/p95 per-image latency (decoded image in, prediction out, TTA included when the model
uses it) and images/s for a folder of JPEG files (decode included), for the shipped model.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import percentiles
from PIL import Image

from ethnic_group_recognizer import Recognizer
from ethnic_group_recognizer.predict import predict_paths


def synthetic_photos(count: int, folder: Path) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        array = rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)
        path = folder / f"{i}.jpg"
        Image.fromarray(array).save(path, quality=85)
        paths.append(path)
    return paths


def latency(fn, image, repeats: int) -> dict[str, float]:
    for _ in range(5):
        fn(image)
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(image)
        samples.append((time.perf_counter() - start) * 1000)
    return percentiles(samples)


def torch_latency(recognizer: Recognizer, image, repeats: int) -> dict[str, float] | None:
    try:
        import torch

        from ethnic_group_recognizer.backbone import feature_network, load_torch_backbone
    except ImportError:
        return None
    network = feature_network(load_torch_backbone("lite0")).eval()

    def run(im):
        with torch.no_grad():
            pixels = torch.from_numpy(recognizer.preprocess(im)[None])
            return network(pixels)

    return latency(run, image, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--model", type=Path, default=None)
    args = parser.parse_args()
    recognizer = Recognizer.load(args.model)
    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (480, 640, 3), dtype=np.uint8))
    print(f"model: {recognizer.directory} (TTA {'on' if recognizer.tta else 'off'})")
    stats = latency(lambda im: recognizer.predict_images([im]), image, args.images)
    print(f"onnxruntime, one image: p50 {stats['p50']:.1f} ms, p95 {stats['p95']:.1f} ms")
    stats = latency(lambda im: recognizer.run(recognizer.preprocess(im)[None]), image, args.images)
    print(f"onnxruntime, one image, one view (no TTA): p50 {stats['p50']:.1f} ms, p95 {stats['p95']:.1f} ms")
    stats = torch_latency(recognizer, image, max(20, args.images // 4))
    if stats:
        print(
            f"torch backbone only, one image, one view: p50 {stats['p50']:.1f} ms, p95 {stats['p95']:.1f} ms"
        )
    with tempfile.TemporaryDirectory() as tmp:
        paths = synthetic_photos(args.images, Path(tmp))
        start = time.perf_counter()
        results = list(predict_paths(recognizer, paths, show_progress=False))
        seconds = time.perf_counter() - start
    assert len(results) == args.images
    print(f"folder of {args.images} 640x480 JPEGs (decode included): {args.images / seconds:.1f} images/s")


if __name__ == "__main__":
    main()
