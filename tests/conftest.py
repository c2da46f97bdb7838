"""Shared fixtures: generated images and datasets (no third-party data), and the shared-data gate."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("EGR_SHARED_DATA", REPO.parent / "shared" / "data"))
#: Debian's Chromium (``make browser`` installs it); Playwright's own download fails offline.
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def pytest_configure(config):
    # Keep caches (exported backbone, embeddings) per test session unless the developer chose one.
    os.environ.setdefault("EGR_CACHE_DIR", str(REPO / ".pytest_cache" / "egr-cache"))


def require_shared_data() -> Path:
    """Skip (saying why) when ../shared/data is absent, as on a fresh user clone."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"needs the reference data at {SHARED_DATA} (../shared/data), absent on this machine")
    return SHARED_DATA


@pytest.fixture
def shared_data() -> Path:
    return require_shared_data()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """Headless Debian Chromium driven by Playwright, one per test module; skips (saying why) without it."""
    if not CHROMIUM.is_file():
        pytest.skip(
            f"needs Debian's Chromium at {CHROMIUM}: run 'make browser' (apt-get install -y chromium)"
        )
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (make install)")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def pattern_image(kind: str, seed: int, size: int = 160) -> Image.Image:
    """A synthetic photo whose class is obvious to any backbone: colour and pattern differ."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (size, size), (240, 240, 240))
    draw = ImageDraw.Draw(image)
    jitter = lambda c: tuple(int(np.clip(v + rng.integers(-25, 25), 0, 255)) for v in c)  # noqa: E731
    if kind == "stripes":
        period, offset = int(rng.integers(10, 30)), int(rng.integers(0, 10))
        for x in range(offset, size, period):
            draw.rectangle([x, 0, x + period // 2, size], fill=jitter((200, 30, 30)))
        draw.rectangle(
            [0, 0, int(rng.integers(20, 90)), int(rng.integers(20, 90))], fill=jitter((240, 200, 200))
        )
    elif kind == "checker":
        cell = int(rng.integers(12, 40))
        for x in range(0, size, cell):
            for y in range(0, size, cell):
                if (x + y) // cell % 2:
                    draw.rectangle([x, y, x + cell - 1, y + cell - 1], fill=jitter((30, 60, 200)))
    elif kind == "circles":
        for _ in range(12):
            cx, cy, r = rng.integers(0, size, 2).tolist() + [int(rng.integers(8, 24))]
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=jitter((30, 170, 60)))
    else:  # plain noise: the "none of these" kind of picture
        array = rng.integers(100, 160, (size, size, 3), dtype=np.uint8)
        image = Image.fromarray(array)
    return image


CLASSES = {"Bai people": "stripes", "Hani people": "checker", "Kazakhs": "circles", "other": "noise"}


def make_dataset(root: Path, per_class: int = 8) -> Path:
    """A small dataset folder of generated images, 3 labels plus ``other``."""
    for index, (label, kind) in enumerate(CLASSES.items()):
        folder = root / label
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pattern_image(kind, seed=index * 1000 + i).save(folder / f"{kind}_{i}.jpg", quality=90)
    return root


@pytest.fixture
def small_dataset(tmp_path: Path) -> Path:
    return make_dataset(tmp_path / "dataset")


@pytest.fixture(scope="session")
def trained_model(tmp_path_factory) -> Path:
    """A probe model trained once per session on the generated dataset (real backbone, real ONNX)."""
    from ethnic_group_recognizer.config import Config
    from ethnic_group_recognizer.train import TrainOptions, train

    root = tmp_path_factory.mktemp("trained")
    dataset = make_dataset(root / "dataset", per_class=10)
    train(dataset, root / "model", TrainOptions(name="test-model"), Config())
    return root / "model"
