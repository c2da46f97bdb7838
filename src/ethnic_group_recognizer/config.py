"""The one small configuration object shared by every stage, plus the fixed label set."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

#: The 12 groups, spelled exactly as the class folders of the reference data.
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
#: Folder name (at any depth) of images that show none of the 12; trains the abstain class.
ABSTAIN_LABEL = "other"
#: Text shown where a client needs a string rather than ``null`` for an abstention.
ABSTAIN_TEXT = "None of the 12 groups"

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

    backbone: str = "lite0"
    #: Input side and pooling of frozen features; None: the backbone's own (backbone.BACKBONES).
    feature_size: int | None = None
    feature_pooling: str | None = None
    cache_dir: Path = field(default_factory=default_cache_dir)
    seed: int = 0
    val_fraction: float = 0.2
    batch_size: int = 32
    #: Images with more pixels than this are refused as decompression bombs.
    max_pixels: int = 64_000_000
    #: Images smaller than this on their short side are unusable.
    min_side: int = 32
    #: Worker threads for onnxruntime; 0 lets it use every core.
    threads: int = 0
