"""Prediction latency (one photo) by number of views, and folder throughput, on this machine's cores.

    .venv/bin/python benchmarks/latency.py [--images 200] [--rounds 5]

The shipped model (format 2) takes ``pixels`` (photos, V, 3, S, S) and averages the V views'
features inside its graph; any V runs, so one model gives the cost of each view set of
``views.VIEW_SETS``: ``crops`` (7 views, the shipped model's), ``mirror`` (2, the recipe before)
and ``full`` (1). Prints, for each, the p50/p95 of one photo (decoded image in, views rendered,
prediction out) and of the model alone (pre-made views, one ``session.run``), each also as a ratio
to the 1-view figure measured in the same run: the machine may be shared, so the view sets are
measured in interleaved rounds (a shuffled order each round) and the load average is printed.
Then the torch backbone on one view, and images/s for a folder of 640x480 JPEG files (decode
included) through ``predict.predict_paths``, the product's pipelined engine.
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from _common import percentiles
from PIL import Image

from ethnic_group_recognizer import Recognizer
from ethnic_group_recognizer.predict import predict_paths
from ethnic_group_recognizer.views import VIEW_SETS, decode_side


def synthetic_photos(count: int, folder: Path) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        array = rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)
        path = folder / f"{i}.jpg"
        Image.fromarray(array).save(path, quality=85)
        paths.append(path)
    return paths


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.1f} {five:.1f} {fifteen:.1f}"


def samples_ms(fn: Callable[[], object], repeats: int) -> list[float]:
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    return samples


def latency(fn, image, repeats: int) -> dict[str, float]:
    for _ in range(5):
        fn(image)
    return percentiles(samples_ms(lambda: fn(image), repeats))


def with_views(directory: Path, view_set: str) -> Recognizer:
    """The model, rendering and running ``view_set``'s views instead of its own (same graph, same cost a view).

    Only for timing: the model was trained on its own views, so these predictions are not its answers.
    """
    recognizer = Recognizer.load(directory)
    recognizer.views = VIEW_SETS[view_set]
    recognizer.decode_side = decode_side(recognizer.views, recognizer.image_size)
    return recognizer


def by_views(directory: Path, image: Image.Image, repeats: int, rounds: int) -> None:
    """One photo and the model alone, for 7, 2 and 1 views, interleaved; ratios to 1 view."""
    recognizers = {name: with_views(directory, name) for name in ("crops", "mirror", "full")}
    feeds = {name: r.pixels(image)[None] for name, r in recognizers.items()}
    measures: dict[str, Callable[[], object]] = {}
    for name, r in recognizers.items():
        measures[f"one photo, {name}"] = lambda r=r: r.predict_images([image])
        measures[f"model alone, {name}"] = lambda r=r, name=name: r.run(feeds[name])
    for fn in measures.values():  # warm-up: arenas, prepacked weights
        for _ in range(3):
            fn()
    per_round = max(5, repeats // rounds)
    samples: dict[str, list[float]] = {name: [] for name in measures}
    rounds_p50: dict[str, list[float]] = {name: [] for name in measures}
    rounds_cpu: dict[str, list[float]] = {name: [] for name in measures}
    order = list(measures)
    rng = random.Random(0)
    print(f"start: {load_average()}")
    for _ in range(rounds):
        rng.shuffle(order)
        for name in order:
            cpu = time.process_time()
            taken = samples_ms(measures[name], per_round)
            rounds_cpu[name].append((time.process_time() - cpu) * 1000 / per_round)
            samples[name] += taken
            rounds_p50[name].append(float(np.median(taken)))
    print(f"end: {load_average()}")
    print(
        f"{rounds} interleaved rounds of {per_round} calls each; ratios: to the 1-view (and 2-view) figure "
        "of the same round, median over rounds; CPU: this process's CPU ms a call (both threads), which "
        "other work on the machine changes less than wall time"
    )
    for kind in ("one photo", "model alone"):
        for name in ("crops", "mirror", "full"):
            key = f"{kind}, {name}"
            stats = percentiles(samples[key])
            ratio = np.median(
                [a / b for a, b in zip(rounds_p50[key], rounds_p50[f"{kind}, full"], strict=True)]
            )
            to_mirror = np.median(
                [a / b for a, b in zip(rounds_p50[key], rounds_p50[f"{kind}, mirror"], strict=True)]
            )
            cpu = np.median(rounds_cpu[key])
            cpu_ratio = np.median(
                [a / b for a, b in zip(rounds_cpu[key], rounds_cpu[f"{kind}, mirror"], strict=True)]
            )
            views = len(recognizers[name].views)
            print(
                f"onnxruntime, {kind}, {views} view{'s' if views > 1 else ''} ({name}): "
                f"p50 {stats['p50']:.1f} ms, p95 {stats['p95']:.1f} ms; "
                f"x{ratio:.2f} of 1 view, x{to_mirror:.2f} of 2 views; "
                f"CPU {cpu:.0f} ms, x{cpu_ratio:.2f} of 2 views"
            )


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
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=200, help="calls per figure, and photos in the folder")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--no-torch", action="store_true")
    args = parser.parse_args()
    recognizer = Recognizer.load(args.model)
    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (480, 640, 3), dtype=np.uint8))
    print(
        f"model: {recognizer.directory} ({len(recognizer.views)} views a photo, {os.cpu_count()} cores); "
        "photo: 640x480"
    )
    by_views(recognizer.directory, image, args.images, args.rounds)
    stats = None if args.no_torch else torch_latency(recognizer, image, max(20, args.images // 4))
    if stats:
        print(
            f"torch backbone only, one image, one view: p50 {stats['p50']:.1f} ms, p95 {stats['p95']:.1f} ms "
            f"({load_average()})"
        )
    with tempfile.TemporaryDirectory() as tmp:
        paths = synthetic_photos(args.images, Path(tmp))
        start = time.perf_counter()
        results = list(predict_paths(recognizer, paths, show_progress=False))
        seconds = time.perf_counter() - start
    assert len(results) == args.images
    print(
        f"folder of {args.images} 640x480 JPEGs (decode included, {len(recognizer.views)} views): "
        f"{args.images / seconds:.1f} images/s ({load_average()})"
    )


if __name__ == "__main__":
    main()
