"""Occlusion-sensitivity heatmaps: which regions of a photo a prediction depends on.

Blur out one patch of the photo at a time and watch the probability of the explained label
fall: a big drop means the model relied on that region. It needs only forward passes, so it
works with the onnxruntime model as shipped (no gradients, no torch). The grid x grid occluded
copies are sent through the model in a few batched calls; the cost is about (grid^2 + 1) single
forward passes (see ``benchmarks/explain_cost.py`` and docs/SERVING.md).
"""

from __future__ import annotations

import base64
import io
import time
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

from ethnic_group_recognizer.model import Recognizer

#: Default grid: 7 x 7 patches of the model input (about 46 px of 320), each blurred out with a 2-patch-wide window.
DEFAULT_GRID = 7
#: The overlay's longest side; enough to see the regions, small enough for a JSON response.
OVERLAY_MAX_SIDE = 384


@dataclass
class Explanation:
    """A heatmap (grid x grid probability drops), its overlay on the photo and what it explains."""

    label: str
    heatmap: np.ndarray
    overlay: Image.Image
    base_probability: float
    milliseconds: float

    def to_dict(self) -> dict:
        return {
            "label": self.label,
            "method": "occlusion",
            "grid": int(self.heatmap.shape[0]),
            "base_probability": round(self.base_probability, 6),
            "heatmap": [[round(float(v), 4) for v in row] for row in self.heatmap],
            "heatmap_png": png_data_url(self.overlay),
            "milliseconds": round(self.milliseconds, 1),
        }


def occlusion_heatmap(
    recognizer: Recognizer,
    image: Image.Image,
    grid: int = DEFAULT_GRID,
    label: str | None = None,
    batch_size: int = 25,
) -> tuple[np.ndarray, Image.Image]:
    """(heatmap, overlay): per-patch drop in the label's probability, and the map drawn on the photo.

    ``label`` defaults to the model's top-scoring label (also when the model would abstain).
    Heatmap values are probability points (positive: the region supports the label).
    """
    heatmap, overlay, _, _ = _occlude(recognizer, image, grid, label, batch_size)
    return heatmap, overlay


def explain(
    recognizer: Recognizer,
    image: Image.Image,
    grid: int = DEFAULT_GRID,
    label: str | None = None,
    batch_size: int = 25,
) -> Explanation:
    """:func:`occlusion_heatmap` plus the explained label, its unoccluded probability and the time taken.

    ``batch_size`` occluded copies go through the model per call; the server uses a small one,
    because onnxruntime keeps the memory of the largest batch it ever ran.
    """
    started = time.perf_counter()
    heatmap, overlay, name, base = _occlude(recognizer, image, grid, label, batch_size)
    return Explanation(name, heatmap, overlay, base, (time.perf_counter() - started) * 1000)


def _occlude(
    recognizer: Recognizer, image: Image.Image, grid: int, label: str | None, batch_size: int
) -> tuple[np.ndarray, Image.Image, str, float]:
    if not isinstance(grid, int) or not 2 <= grid <= 16:
        raise ValueError(f"grid must be an integer from 2 to 16, got {grid!r}")
    if label is not None and label not in recognizer.labels:
        raise ValueError(f"unknown label {label!r}; expected one of {', '.join(recognizer.labels)}")
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    image = image.convert("RGB")
    pixels = recognizer.preprocess(image)
    # The full-photo view alone (V = 1): occluding one region of each of the model's crops
    # would cost 7x the calls for a map of the same regions.
    base_probs = recognizer.run(pixels[None, None])[0][0]
    k = len(recognizer.labels)
    index = recognizer.labels.index(label) if label else int(np.argmax(base_probs[:k]))
    size = pixels.shape[1]
    cell = size / grid
    # The occluder is a heavy blur of the same region, not a grey box: the model (a probe on
    # frozen features) drops sharply on any grey patch, which would make every region look
    # important. A window two cells wide centred on each cell gives a smoother map than hard
    # tiles and still hides a part (a headdress, a sleeve) completely.
    blurred = recognizer.preprocess(
        image.resize((size, size), Image.Resampling.BILINEAR).filter(ImageFilter.GaussianBlur(cell / 2))
    )
    boxes = []
    for row in range(grid):
        for col in range(grid):
            cy, cx = (row + 0.5) * cell, (col + 0.5) * cell
            boxes.append(
                (
                    max(0, round(cy - cell)),
                    min(size, round(cy + cell)),
                    max(0, round(cx - cell)),
                    min(size, round(cx + cell)),
                )
            )
    occluded_probs = []
    for start in range(0, len(boxes), batch_size):
        chunk = boxes[start : start + batch_size]
        batch = np.repeat(pixels[None], len(chunk), axis=0)
        for i, (y0, y1, x0, x1) in enumerate(chunk):
            batch[i, :, y0:y1, x0:x1] = blurred[:, y0:y1, x0:x1]
        occluded_probs.append(recognizer.run(batch[:, None])[0][:, index])
    base = float(base_probs[index])
    heatmap = (base - np.concatenate(occluded_probs)).reshape(grid, grid).astype(np.float32)
    return heatmap, render_overlay(image, heatmap), recognizer.labels[index], base


def render_overlay(image: Image.Image, heatmap: np.ndarray, max_side: int = OVERLAY_MAX_SIDE) -> Image.Image:
    """Draw the positive part of ``heatmap`` over the photo: yellow (some) to red (most) reliance."""
    photo = image.convert("RGB")
    scale = min(1.0, max_side / max(photo.size))
    if scale < 1.0:
        photo = photo.resize(
            (max(1, round(photo.width * scale)), max(1, round(photo.height * scale))),
            Image.Resampling.BILINEAR,
        )
    # Scale from the least to the most relied-on region (negative drops count as none), so the
    # map shows where the model looks relative to the rest of the photo.
    positive = np.clip(heatmap.astype(np.float32), 0.0, None)
    low, top = float(positive.min()), float(positive.max())
    normalised = (positive - low) / (top - low) if top - low > 1e-6 else np.zeros_like(positive)
    heat = np.asarray(
        Image.fromarray(normalised).resize(photo.size, Image.Resampling.BICUBIC), dtype=np.float32
    )
    heat = np.clip(heat, 0.0, 1.0)[..., None]
    yellow, red = np.array([255, 215, 0], np.float32), np.array([215, 25, 32], np.float32)
    colour = yellow * (1 - heat) + red * heat
    alpha = 0.65 * heat
    base = np.asarray(photo, dtype=np.float32) * 0.85  # dim slightly so the colours read on bright photos
    blended = base * (1 - alpha) + colour * alpha
    return Image.fromarray(np.clip(blended, 0, 255).astype(np.uint8))


def png_data_url(image: Image.Image) -> str:
    """A ``data:image/png;base64,...`` URL a browser can show directly in an ``<img>``."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
