"""The one small configuration object shared by every stage, plus the fixed label set."""

from __future__ import annotations

import math
import numbers
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

#: The shipped model's 12 groups, spelled exactly as the class folders of the reference data
#: (the default search terms of ``egr collect``; no surface about a model reads them).
LABELS: tuple[str, ...] = (
    "Akha people",
    "Bai people",
    "Chakma people",
    "Hani people",
    "Kazakhs",
    "Lisu people",
    "Mon people",
    "Naga people",
    "Qiang people",
    "Tatar people",
    "Tripuri people",
    "Uzbeks",
)
#: Folder name (at any depth) of images that show none of the classes; trains the abstain class.
ABSTAIN_LABEL = "other"
#: Automatic streams stop here: each holds one photo's activations (about 20 MB a view).
MAX_STREAMS = 4
#: Neutral text for an abstention where no model's own words are at hand; every surface that
#: knows the model shows its card's ``none_of_these`` instead (card.py).
ABSTAIN_TEXT = "None of these"

#: The backbones and feature poolings this version supports (backbone.BACKBONES holds their specs).
BackboneName = Literal["lite0", "lite2"]
Pooling = Literal["mean", "gem"]

PACKAGE_DIR = Path(__file__).resolve().parent
DEFAULT_MODEL_DIR = PACKAGE_DIR / "default_model"


def default_cache_dir() -> Path:
    """Where exported backbones and embeddings are cached (``$EGR_CACHE_DIR`` or the XDG cache)."""
    if env := os.environ.get("EGR_CACHE_DIR"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "ethnic-group-recognizer"


@dataclass(frozen=True)
class Config:
    """Settings every stage reads; defaults are the ones the shipped model was made with."""

    backbone: BackboneName = "lite0"
    #: Input side and pooling of frozen features; None: the backbone's own (backbone.BACKBONES).
    feature_size: int | None = None
    feature_pooling: Pooling | None = None
    cache_dir: Path = field(default_factory=default_cache_dir)
    seed: int = 0
    val_fraction: float = 0.2
    #: Photos a model call: 1 is the fastest measured on 2 cores (docs/THROUGHPUT.md); larger
    #: batches only add memory.
    batch_size: int = 1
    #: Decoding budget, checked from the header before any pixel is decoded: an image is refused
    #: (as a possible decompression bomb) when it has more pixels than this, or when its decoded
    #: size (pixels x bytes per pixel of its mode: 1 grey or palette, 2 16-bit grey, 3 RGB,
    #: 4 RGBA, CMYK or 32-bit) is more than this many 8-bit RGB pixels (3 bytes each) take.
    #: 50 MP holds the photos of phones and most cameras.
    max_pixels: int = 50_000_000
    #: A JPEG with more scans (SOS segments) than this is refused before decoding: a normal
    #: progressive JPEG has about 10; thousands of empty ones cost tens of seconds of CPU.
    max_jpeg_scans: int = 100
    #: Images smaller than this on their short side are unusable.
    min_side: int = 32
    #: Worker threads for onnxruntime; 0 lets it use every core.
    threads: int = 0
    #: Photos in flight at once in batch work (``egr predict``, ``egr evaluate``, training and
    #: cleaning embeddings), each decoded and run on its own thread with a session of
    #: ``threads / streams`` onnxruntime threads. On 2 cores two one-thread streams beat one
    #: two-thread stream by about 1.3x (docs/THROUGHPUT.md). 0: automatic (one a core, at most
    #: MAX_STREAMS, when ``threads`` is 0; otherwise 1, the given threads in one stream).
    streams: int = 0

    def __post_init__(self) -> None:
        """Refuse impossible settings here, once, with a clear message (the CLI relies on it)."""
        check_choice("backbone", self.backbone, BackboneName)
        if self.feature_pooling is not None:
            check_choice("feature_pooling", self.feature_pooling, Pooling)
        if self.feature_size is not None:
            check_integer("feature_size", self.feature_size, 32, 4096)
        check_integer("seed", self.seed, 0, 2**32 - 1)
        check_number("val_fraction", self.val_fraction, 0.0, 1.0, high_open=True)
        check_integer("batch_size", self.batch_size, 1, 4096)
        check_integer("max_pixels", self.max_pixels, 1, 2**40)
        check_integer("max_jpeg_scans", self.max_jpeg_scans, 1, 10**6)
        check_integer("min_side", self.min_side, 1, 2**16)
        check_integer("threads", self.threads, 0, 1024)
        check_integer("streams", self.streams, 0, 64)  # each holds a photo's activations
        if not isinstance(self.cache_dir, Path):
            object.__setattr__(self, "cache_dir", Path(self.cache_dir))

    def engine_streams(self) -> int:
        """Photos batch work keeps in flight (see ``streams``)."""
        if self.streams:
            return self.streams
        return min(MAX_STREAMS, os.cpu_count() or 1) if self.threads == 0 else 1

    def session_threads(self) -> int:
        """onnxruntime threads of a session made with this config (``threads``, 0: every core)."""
        return self.threads or (os.cpu_count() or 1)

    def stream_threads(self) -> int:
        """onnxruntime threads of the session batch work shares between its streams."""
        return max(1, self.session_threads() // self.engine_streams())


# -- validation helpers, shared with train.TrainOptions ------------------------------------
def check_choice(name: str, value: object, allowed: object) -> None:
    """``value`` must be one of the strings of the ``Literal`` type ``allowed``."""
    choices = get_args(allowed)
    if value not in choices:
        raise ValueError(f"{name} must be {' or '.join(map(repr, choices))}, got {value!r}")


def check_integer(name: str, value: object, low: int, high: int) -> None:
    """``value`` must be an integer (not a bool) in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{name} must be between {low} and {high}, got {value}")


def check_number(
    name: str, value: object, low: float, high: float, *, low_open: bool = False, high_open: bool = False
) -> None:
    """``value`` must be a finite real number in the interval, ends open where asked."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    too_low = value <= low if low_open else value < low
    too_high = value >= high if high_open else value > high
    if too_low or too_high:
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise ValueError(f"{name} must be in {interval}, got {value}")
