"""Cost of an occlusion heatmap (``?explain=true``) against a plain prediction, on this machine's cores.

    .venv/bin/python benchmarks/explain_cost.py [--repeats 5]

Times ``explain`` (grid x grid blurred copies + 1, batched through onnxruntime) for a 640x480
photo at grids 5, 7 (the server's default) and 9, and one plain prediction (all of the model's
views in one run: 7 for the shipped model), and prints median wall time and CPU time per call.
``explain`` occludes the full-photo view alone (one view a forward pass), so a 7 x 7 map costs
50 single-view passes whatever the model's view count; the ratio column gives each figure as a
multiple of the plain prediction measured in the same run (the machine may be shared).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
from PIL import Image

from ethnic_group_recognizer.config import Config
from ethnic_group_recognizer.explain import explain
from ethnic_group_recognizer.model import Recognizer


def timed(function, repeats: int) -> tuple[float, float]:
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        function()
        walls.append((time.perf_counter() - wall) * 1000)
        cpus.append((time.process_time() - cpu) * 1000)
    return statistics.median(walls), statistics.median(cpus)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    recognizer = Recognizer.load(None, Config(threads=cores))
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8))
    recognizer.predict(photo)  # warm-up
    print(f"# {cores} cores, load average {os.getloadavg()[0]:.1f}; 640x480 photo; median of {args.repeats}")
    print(f"{'what':<24} {'view passes':>11} {'wall ms':>8} {'CPU ms':>8} {'x prediction':>12}")
    views = len(recognizer.views)
    base, cpu = timed(lambda: recognizer.predict(photo), args.repeats)
    print(f"{f'prediction ({views} views)':<24} {views:>11} {base:>8.0f} {cpu:>8.0f} {1.0:>12.2f}")
    for grid in (5, 7, 9):
        wall, cpu = timed(lambda grid=grid: explain(recognizer, photo, grid=grid), args.repeats)
        print(
            f"{f'explain grid {grid}':<24} {grid * grid + 1:>11} {wall:>8.0f} {cpu:>8.0f} {wall / base:>12.2f}"
        )
    print(f"# end: load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
