"""Training time and peak memory on ../shared/data: probe with a cold and a warm embedding cache,
and optionally fine-tuning.

    .venv/bin/python benchmarks/train_time.py [--finetune-epochs 2]

Each run is a real ``egr train`` process; peak memory is its maximum resident set size.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import shared_dataset

EGR = str(Path(sys.executable).parent / "egr")


def timed_run(args: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of one child process."""
    start = time.perf_counter()
    process = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    if status != 0:
        sys.exit(f"{' '.join(args)} failed with status {status}")
    return seconds, usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--finetune-epochs", type=int, default=0, help="0 skips fine-tuning (it takes minutes)"
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="an empty folder to fill (e.g. the user cache, to keep the embeddings); default: a temp dir",
    )
    args = parser.parse_args()
    dataset = shared_dataset()
    if args.cache_dir and args.cache_dir.exists() and any(args.cache_dir.iterdir()):
        sys.exit(f"{args.cache_dir} is not empty: the first run must start with a cold cache")
    with tempfile.TemporaryDirectory() as tmp:
        cache = args.cache_dir or Path(tmp) / "cache"
        env = {**os.environ, "EGR_CACHE_DIR": str(cache)}
        runs = [
            ("probe, cold cache (ONNX export + embedding every image)", ["--mode", "probe"]),
            ("probe, warm cache (re-training)", ["--mode", "probe"]),
        ]
        if args.finetune_epochs:
            runs.append(
                (
                    f"finetune, {args.finetune_epochs} epochs + 2 head epochs",
                    ["--mode", "finetune", "--epochs", str(args.finetune_epochs)],
                )
            )
        for name, extra in runs:
            seconds, peak = timed_run(
                [EGR, "train", str(dataset), "--out", str(Path(tmp) / "model"), *extra], env
            )
            print(f"{name}: {seconds:.0f} s, peak memory {peak:.0f} MB", flush=True)


if __name__ == "__main__":
    main()
