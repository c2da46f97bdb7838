"""Ethnic Group Recognizer: recognise which of 12 groups' visual culture a photo shows, or abstain.

The model learns traditional dress, adornment, crafts and festivals. It must never be used to
infer any individual's ethnicity (see MODEL_CARD.md).
"""

from ethnic_group_recognizer.config import ABSTAIN_LABEL, LABELS, Config
from ethnic_group_recognizer.images import ImageError, load_image
from ethnic_group_recognizer.model import Prediction, Recognizer

__version__ = "0.1.0"
__all__ = [
    "ABSTAIN_LABEL",
    "LABELS",
    "Config",
    "ImageError",
    "Prediction",
    "Recognizer",
    "__version__",
    "load_image",
]
