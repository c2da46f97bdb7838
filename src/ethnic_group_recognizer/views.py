"""The views of a photo the model looks at: the whole photo, its mirror and overlapping crops.

A view is a box of the photo (fractions of its width and height) resized to the model's input
square, optionally mirrored. The model averages the views' unit features before its head
(docs/RECIPES.md: the full photo, its mirror and five crops of 60 % of each side lifted held-out
top-1 from 0.750 to 0.794), so small cues such as beads, embroidery and headdress are also seen
at a larger scale. Training, prediction (CLI, API, Ray) and the in-browser page
(``web/local/pillow.js``) render views with exactly these rules; a leaf module: numpy and Pillow.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image

#: A box as fractions of the photo: left, top, right, bottom.
Box = tuple[float, float, float, float]
FULL: Box = (0.0, 0.0, 1.0, 1.0)


@dataclass(frozen=True)
class View:
    """One view: ``box`` of the photo, resized to the input square, then mirrored if ``mirror``."""

    box: Box = FULL
    mirror: bool = False

    def __post_init__(self) -> None:
        left, top, right, bottom = self.box
        if not (0.0 <= left < right <= 1.0 and 0.0 <= top < bottom <= 1.0):
            raise ValueError(f"a view's box must lie inside the photo (0..1), got {self.box}")

    @property
    def name(self) -> str:
        """A short stable name (embedding-cache files, logs): ``full``, ``full-m``, ``0.4-0-1-0.6``."""
        base = "full" if self.box == FULL else "-".join(f"{v:g}" for v in self.box)
        return f"{base}-m" if self.mirror else base

    @property
    def plain(self) -> View:
        """The same box, not mirrored (mirroring is a flip of the rendered array)."""
        return View(self.box, False)

    def to_json(self) -> dict:
        return {"box": list(self.box), "mirror": self.mirror}


ViewSet = Literal["full", "mirror", "crops"]
_CROP60 = (
    (0.0, 0.0, 0.6, 0.6),
    (0.4, 0.0, 1.0, 0.6),
    (0.0, 0.4, 0.6, 1.0),
    (0.4, 0.4, 1.0, 1.0),
    (0.2, 0.2, 0.8, 0.8),
)
#: The named view sets ``egr train --views`` offers. ``crops`` (the shipped model's): the photo,
#: its mirror, the four corners and the centre at 60 % of each side (7 views). ``mirror``: the
#: photo and its mirror (2 views, the recipe before multi-crop, 3.5x cheaper). ``full``: 1 view.
VIEW_SETS: dict[str, tuple[View, ...]] = {
    "full": (View(),),
    "mirror": (View(), View(mirror=True)),
    "crops": (View(), View(mirror=True), *(View(box) for box in _CROP60)),
}


def view_set(name: str) -> tuple[View, ...]:
    """The views of a named set; ValueError naming the choices for anything else."""
    try:
        return VIEW_SETS[name]
    except KeyError:
        raise ValueError(f"unknown view set {name!r}; choose one of {sorted(VIEW_SETS)}") from None


def decode_side(views: Sequence[View], size: int) -> int:
    """The short side a decoded photo needs so that its smallest view is still downscaled to ``size``.

    Passed to ``images.load_image(target_side=...)``: a large JPEG is then decoded in draft mode
    at 1/2 to 1/8 scale (several times faster and smaller), never below twice this side.
    """
    smallest = min(min(v.box[2] - v.box[0], v.box[3] - v.box[1]) for v in views)
    return math.ceil(size / smallest)


def pixel_box(box: Box, width: int, height: int) -> tuple[int, int, int, int]:
    """A fractional box in whole pixels (Python's round, half to even; pillow.js does the same)."""
    left, top, right, bottom = box
    return round(left * width), round(top * height), round(right * width), round(bottom * height)


def scaled(array: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> (3, H, W) float32 ``(pixel - 127) / 128``, as the Lite models were trained."""
    return ((array.astype(np.float32) - 127.0) / 128.0).transpose(2, 0, 1)


def render_views(image: Image.Image, views: Sequence[View], size: int) -> np.ndarray:
    """(V, 3, size, size) float32 pixels of ``views`` of an RGB ``image``, in the views' order.

    Each distinct box is cropped (whole pixels) and resized once, bilinear, to the square
    ("squish": no centre crop, so headdress and hem stay in); a mirrored view is the flipped
    array of its box's view, so a photo and its mirror cost one resize.
    """
    image = image if image.mode == "RGB" else image.convert("RGB")
    width, height = image.size
    rendered: dict[Box, np.ndarray] = {}
    out = np.empty((len(views), 3, size, size), np.float32)
    for i, view in enumerate(views):
        if view.box not in rendered:
            source = image if view.box == FULL else image.crop(pixel_box(view.box, width, height))
            rendered[view.box] = scaled(np.asarray(source.resize((size, size), Image.Resampling.BILINEAR)))
        pixels = rendered[view.box]
        out[i] = pixels[:, :, ::-1] if view.mirror else pixels
    return out


def parse_views(data: object) -> tuple[View, ...]:
    """Views from their JSON form (``[{"box": [l, t, r, b], "mirror": bool}, ...]``), checked."""
    if not isinstance(data, list) or not 1 <= len(data) <= 32:
        raise ValueError("views must be a list of 1 to 32 views")
    views = []
    for item in data:
        if not isinstance(item, dict) or set(item) - {"box", "mirror"}:
            raise ValueError("each view must be an object with 'box' and 'mirror'")
        box, mirror = item.get("box"), item.get("mirror", False)
        if (
            not isinstance(box, list)
            or len(box) != 4
            or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in box)
        ):
            raise ValueError("a view's box must be 4 numbers: left, top, right, bottom")
        if not isinstance(mirror, bool):
            raise ValueError("a view's mirror must be true or false")
        views.append(View(tuple(float(v) for v in box), mirror))  # type: ignore[arg-type]
    return tuple(views)
