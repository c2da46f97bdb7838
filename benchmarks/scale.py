"""Throughput of the local engine vs Ray Data (local Ray, same cores) on generated photos.

    .venv/bin/python benchmarks/scale.py [--sizes 1000 10000] [--cpus 2] [--workdir /tmp/egr-scale]

Prints, for each size: wall seconds and images/s of ``predict_paths`` (the plain batched local
engine) and of ``batch.jobs.predict_to_parquet`` (Ray actor pool, Parquet written); the fixed and
per-image cost of each engine fitted over the sizes (so the Ray overhead per image); and the stage
costs that bound a node's throughput: decode per image as the product decodes (``Recognizer.decode``:
JPEG draft mode to the short side the model's views need; at the benchmark's size and at a 12 MP
archive scan), model per image (all of the model's views, 7 for the shipped model, rendering
included; 1 and 2 threads), and the driver's cost per result row. ``--batch-size`` is photos a
model call (default: ``Config.batch_size``, 1, the fastest measured on 2 cores).
Images are generated (smooth colour fields plus grain, 640x480 JPEG q85, about the size of a web
photo) and kept in --workdir, so a second run skips generating them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from PIL import Image

from ethnic_group_recognizer.config import Config
from ethnic_group_recognizer.images import load_image
from ethnic_group_recognizer.model import Recognizer
from ethnic_group_recognizer.predict import predict_paths


def photo_like(seed: int, width: int = 640, height: int = 480) -> Image.Image:
    """Smooth colour regions with grain: compresses and decodes like a photo, unlike pure noise."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8))
    smooth = np.asarray(coarse.resize((width, height), Image.Resampling.BICUBIC), dtype=np.int16)
    grain = rng.integers(-12, 12, (height, width, 3), dtype=np.int16)
    return Image.fromarray(np.clip(smooth + grain, 0, 255).astype(np.uint8))


def _write(args: tuple[Path, int]) -> None:
    path, seed = args
    if not path.exists():
        photo_like(seed).save(path, quality=85)


def generate(folder: Path, count: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{i:06d}.jpg" for i in range(count)]
    with Pool(min(4, os.cpu_count() or 1)) as pool:
        pool.map(_write, [(p, i) for i, p in enumerate(paths)], chunksize=64)
    return paths


def stage_costs(paths: list[Path], workdir: Path) -> dict[str, float]:
    """Milliseconds per image of each stage, one at a time, to see which one bounds a node."""
    sample = paths[:128]
    decoder = Recognizer.load()
    start = time.perf_counter()
    images = [decoder.decode(p) for p in sample]
    decode_ms = (time.perf_counter() - start) / len(sample) * 1000
    big = workdir / "scan-12mp.jpg"
    if not big.exists():
        photo_like(10**6, 4000, 3000).save(big, quality=90)
    start = time.perf_counter()
    for _ in range(5):
        decoder.decode(big)
    decode_big_ms = (time.perf_counter() - start) / 5 * 1000
    start = time.perf_counter()
    for _ in range(5):
        load_image(big)
    decode_big_full_ms = (time.perf_counter() - start) / 5 * 1000
    costs = {
        "decode_640x480_ms": decode_ms,
        "decode_12mp_ms": decode_big_ms,
        "decode_12mp_full_size_ms": decode_big_full_ms,
        "views": len(decoder.views),
    }
    for threads in (1, 2):
        recognizer = Recognizer.load(config=Config(threads=threads))
        recognizer.probabilities(images[:32])  # warm-up
        start = time.perf_counter()
        recognizer.probabilities(images)
        costs[f"model_{threads}thread_ms"] = (time.perf_counter() - start) / len(images) * 1000
    costs["jpeg_kb"] = sum(p.stat().st_size for p in sample) / len(sample) / 1024
    return costs


def driver_row_cost(workdir: Path, rows: int = 20_000, block: int = 32) -> dict[str, float]:
    """Microseconds the driver spends per result row, no model involved: prediction rows (Parquet
    part + JSONL line) and embedding rows (Parquet part, two 1280-float vectors), arriving in
    blocks of ``block`` rows as Ray Data hands them over."""
    from ethnic_group_recognizer.batch.parquet import (
        EMBED_ROWS_PER_PART,
        PREDICT_ROWS_PER_PART,
        PartWriter,
        embed_schema,
        predict_schema,
        to_table,
        write_stream,
    )

    folder = workdir / "driver-rows"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    scores = json.dumps({f"label {i}": 0.083333 for i in range(12)})
    row = {
        "path": "/archive/x/000001.jpg",
        "label": "Bai people",
        "confidence": 0.9,
        "scores": scores,
        "prediction_set": ["Bai people", "Hani people"],
        "coverage": 0.9,
        "low_data": False,
        "error": None,
    }
    table = to_table([row] * block, predict_schema())
    start = time.perf_counter()
    with open(folder / "_results.jsonl", "w", encoding="utf-8") as sink:
        writer = PartWriter(folder, predict_schema(), PREDICT_ROWS_PER_PART)
        write_stream((table for _ in range(rows // block)), writer, "", 0, False, sink)
    predict_us = (time.perf_counter() - start) / (rows // block * block) * 1e6
    vector = np.random.default_rng(0).random(1280, dtype=np.float32)
    embedding = {"path": row["path"], "sha256": "0" * 64, "embedding": vector, "embedding_mirror": vector}
    table = to_table([{**embedding, "error": None}] * block, embed_schema("lite0"))
    start = time.perf_counter()
    writer = PartWriter(folder, embed_schema("lite0"), EMBED_ROWS_PER_PART)
    write_stream((table for _ in range(rows // block)), writer, "", 0, False)
    embed_us = (time.perf_counter() - start) / (rows // block * block) * 1e6
    return {"predict_row_us": predict_us, "embed_row_us": embed_us}


def run_local(paths: list[Path], batch_size: int) -> float:
    recognizer = Recognizer.load()  # threads=0: onnxruntime uses every core
    start = time.perf_counter()
    for _ in predict_paths(recognizer, paths, batch_size=batch_size, show_progress=False):
        pass
    return time.perf_counter() - start


def run_ray(paths: list[Path], batch_size: int, out: Path) -> float:
    from ethnic_group_recognizer.batch.jobs import predict_to_parquet

    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    summary = predict_to_parquet(paths, out, batch_size=batch_size, show_progress=False)
    assert summary.processed == len(paths) and summary.errors == 0, summary
    return time.perf_counter() - start


class _NoModel:
    """A Ray Data actor that answers every input without reading or classifying it: what is left of
    a run is Ray Data's own cost (blocks, actor calls, result transfer) plus the driver writing rows."""

    def __call__(self, batch):
        from ethnic_group_recognizer.batch.parquet import predict_schema, to_table

        paths = batch.column("path").to_pylist()
        rows = [
            {
                "path": p,
                "label": None,
                "confidence": 0.5,
                "scores": "{}",
                "prediction_set": [],
                "coverage": 0.9,
                "low_data": False,
                "error": None,
            }
            for p in paths
        ]
        return to_table(rows, predict_schema())


def ray_overhead(batch_size: int, out: Path, sizes: tuple[int, int] = (2000, 20000)) -> tuple[float, float]:
    """Fixed seconds and milliseconds per image that the Ray pipeline adds, with no decode and no
    model (the inputs are names only): fitted over two sizes, as each run starts its own actor pool."""
    from ethnic_group_recognizer.batch.parquet import (
        PREDICT_ROWS_PER_PART,
        PartWriter,
        predict_schema,
        write_stream,
    )
    from ethnic_group_recognizer.batch.ray import ray_tables

    seconds = []
    for size in sizes:
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        entries = [f"/archive/box-{i // 1000}/{i:07d}.jpg" for i in range(size)]
        start = time.perf_counter()
        writer = PartWriter(out, predict_schema(), PREDICT_ROWS_PER_PART)
        write_stream(ray_tables(entries, _NoModel, (), batch_size, None, 1.0), writer, "", 0, False)
        seconds.append(time.perf_counter() - start)
    return fit(list(sizes), seconds)


def fit(sizes: list[int], seconds: list[float]) -> tuple[float, float]:
    """Fixed seconds and per-image milliseconds of ``seconds = fixed + per_image * size``."""
    if len(sizes) < 2:
        return 0.0, seconds[0] / sizes[0] * 1000
    slope, intercept = np.polyfit(sizes, seconds, 1)
    return float(intercept), float(slope * 1000)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--cpus", type=int, default=2, help="CPUs given to the local Ray")
    parser.add_argument("--batch-size", type=int, default=Config().batch_size, help="photos a model call")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/egr-scale"))
    args = parser.parse_args()
    try:
        import ray
    except ImportError:
        sys.exit("needs the ray extra: pip install '.[ray]' in a clone of the repository")

    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} (noisy when > cores)")
    paths = generate(args.workdir / "photos", max(args.sizes))
    costs = stage_costs(paths, args.workdir)
    print("stage costs: " + ", ".join(f"{k} {v:.1f}" for k, v in costs.items()))
    driver = driver_row_cost(args.workdir)
    print(
        f"driver: {driver['predict_row_us']:.1f} us per prediction row (Parquet + JSONL) = "
        f"{1e6 / driver['predict_row_us']:,.0f} rows/s; {driver['embed_row_us']:.1f} us per embedding row "
        f"= {1e6 / driver['embed_row_us']:,.0f} rows/s (ceilings, one driver)"
    )

    start = time.perf_counter()
    ray.init(num_cpus=args.cpus, include_dashboard=False, logging_level="WARNING")
    ray_start = time.perf_counter() - start
    print(f"ray.init (local, {args.cpus} CPUs): {ray_start:.1f} s, paid once per command")
    results: dict[str, list[float]] = {"local": [], "ray": []}
    for size in args.sizes:
        subset = paths[:size]
        results["local"].append(run_local(subset, args.batch_size))
        results["ray"].append(run_ray(subset, args.batch_size, args.workdir / "ray-out"))
        line = ", ".join(
            f"{name} {sec[-1]:.1f} s = {size / sec[-1]:.1f} img/s" for name, sec in results.items()
        )
        print(f"{size} images: {line}", flush=True)
    pipeline_fixed, pipeline_ms = ray_overhead(args.batch_size, args.workdir / "noop-out")
    print(
        f"ray pipeline alone (no decode, no model, rows written): {pipeline_fixed:.1f} s per run "
        f"(actor pool start) + {pipeline_ms:.3f} ms/image",
        flush=True,
    )
    ray.shutdown()

    local_fixed, local_ms = fit(args.sizes, results["local"])
    ray_fixed, ray_ms = fit(args.sizes, results["ray"])
    print(f"local engine: {local_fixed:.1f} s fixed + {local_ms:.2f} ms/image")
    print(f"ray (local):  {ray_fixed:.1f} s fixed (+ ray.init) + {ray_ms:.2f} ms/image")
    print(f"ray minus local per image: {ray_ms - local_ms:+.2f} ms (both engines' whole work, same cores)")
    per_core = 1000 / (costs["decode_640x480_ms"] + costs["model_1thread_ms"])
    print(f"one core, decode + model (1 thread): {per_core:.1f} img/s -> a node of C cores ~ C x that")
    summary = {
        "sizes": args.sizes,
        "seconds": results,
        "stage_costs": costs,
        "driver_us_per_row": driver,
        "ray_init_s": ray_start,
        "ray_pipeline": {"fixed_s": pipeline_fixed, "ms_per_image": pipeline_ms},
        "fit": {"local": [local_fixed, local_ms], "ray": [ray_fixed, ray_ms]},
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
