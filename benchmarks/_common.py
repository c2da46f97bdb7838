"""Helpers shared by the benchmark scripts: the reference dataset and simple timing statistics."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("EGR_SHARED_DATA", REPO.parent / "shared" / "data"))


def shared_dataset(root: Path = REPO / "data" / "shared") -> Path:
    """Import ../shared/data (as symlinks) into ``data/shared`` once; exit clearly if it is absent."""
    from ethnic_group_recognizer.dataset import import_images

    if not SHARED.is_dir():
        sys.exit(f"needs the reference data at {SHARED} (../shared/data)")
    import_images(
        [SHARED / "scraped", SHARED / "examples", SHARED / "other"], root, link=True, show_progress=False
    )
    return root


def percentiles(samples_ms: list[float]) -> dict[str, float]:
    values = np.array(samples_ms)
    return {f"p{q}": float(np.percentile(values, q)) for q in (50, 95, 99)} | {"mean": float(values.mean())}


class Timer:
    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start
