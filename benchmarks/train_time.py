"""Training time and peak memory on ../shared/data: probe with a cold and a warm embedding cache
for each view set, and optionally fine-tuning.

    .venv/bin/python benchmarks/train_time.py [--views crops mirror] [--finetune-epochs 2]

Each run is a real ``egr train --views V`` process; peak memory is its maximum resident set size,
CPU is its user + system seconds (less sensitive than wall time to other work on a shared
machine). "Cold" is an empty cache folder (``EGR_CACHE_DIR``, which ``Config.cache_dir`` reads):
the ONNX export of the backbone plus embedding every view of every photo. "Warm" re-trains with
that cache: the probe, its out-of-fold folds, the calibration and the augmented copies of the
small classes (never cached) only. Each view set gets its own cold cache. ``--warm-from DIR``
skips the cold runs and times warm runs on an existing cache (e.g. the user cache,
``~/.cache/ethnic-group-recognizer``), for a busy machine where a cold 7-view run takes too long.
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

from ethnic_group_recognizer.views import VIEW_SETS

EGR = str(Path(sys.executable).parent / "egr")


def timed_run(args: list[str], env: dict[str, str]) -> tuple[float, float, float]:
    """Wall seconds, CPU seconds (user + system) and peak RSS (MB) of one child process."""
    start = time.perf_counter()
    process = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    if status != 0:
        error = process.stderr.read().decode(errors="replace")[-2000:] if process.stderr else ""
        sys.exit(f"{' '.join(args)} failed with status {status}\n{error}")
    return seconds, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--views", nargs="+", choices=sorted(VIEW_SETS), default=["crops", "mirror"])
    parser.add_argument(
        "--finetune-epochs", type=int, default=0, help="0 skips fine-tuning (it takes minutes)"
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="an empty folder to fill for the first view set (e.g. the user cache, to keep its "
        "embeddings); default: a temp dir for each",
    )
    parser.add_argument(
        "--warm-from", type=Path, default=None, help="no cold runs: warm runs on this existing cache folder"
    )
    args = parser.parse_args()
    dataset = shared_dataset()
    if args.cache_dir and args.cache_dir.exists() and any(args.cache_dir.iterdir()):
        sys.exit(f"{args.cache_dir} is not empty: the first run must start with a cold cache")
    print(f"# {len(os.sched_getaffinity(0))} cores, load average {os.getloadavg()[0]:.1f} at the start")
    with tempfile.TemporaryDirectory() as tmp:
        runs = []
        for number, views in enumerate(args.views):
            cache = args.cache_dir if args.cache_dir and number == 0 else Path(tmp) / f"cache-{views}"
            env = {**os.environ, "EGR_CACHE_DIR": str(args.warm_from or cache)}
            command = ["--mode", "probe", "--views", views]
            label = f"probe --views {views} ({len(VIEW_SETS[views])} views)"
            if not args.warm_from:
                runs.append((f"{label}, cold cache", command, env))
            runs.append((f"{label}, warm cache", command, env))
        if args.finetune_epochs:
            env = {**os.environ, "EGR_CACHE_DIR": str(Path(tmp) / "cache-finetune")}
            runs.append(
                (
                    f"finetune, {args.finetune_epochs} epochs + 1 head epoch",
                    ["--mode", "finetune", "--epochs", str(args.finetune_epochs)],
                    env,
                )
            )
        for name, extra, env in runs:
            seconds, cpu, peak = timed_run(
                [EGR, "train", str(dataset), "--out", str(Path(tmp) / "model"), *extra], env
            )
            print(
                f"{name}: {seconds:.0f} s wall, {cpu:.0f} s CPU, peak memory {peak:.0f} MB "
                f"(load average {os.getloadavg()[0]:.1f})",
                flush=True,
            )


if __name__ == "__main__":
    main()
