"""Safe image loading: one function, one error type, every awkward format handled.

Every stage reads pixels through :func:`load_image`, so EXIF orientation, CMYK, palette and
alpha images, 16-bit images, animated GIFs, truncated files and decompression bombs are
handled the same way everywhere.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from ethnic_group_recognizer.config import Config

# Truncated files must fail loudly, never be silently padded with grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False
# We apply our own, configurable pixel limit; Pillow's global one would only warn.
Image.MAX_IMAGE_PIXELS = None

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"})

# Magic bytes of the formats we accept, so content decides, never a file name or a header.
_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)


class ImageError(ValueError):
    """An image that cannot be used, with a message a person can act on."""


def sniff_format(head: bytes) -> str | None:
    """Return the image format named by the first bytes of a file, or None if it is no image."""
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    for magic, name in _MAGIC:
        if head.startswith(magic):
            return name
    return None


def sha256_file(path: str | Path) -> str:
    """Content hash used as an image's identity in manifests and caches."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def is_image_path(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def _open(source: str | Path | bytes) -> Image.Image:
    if isinstance(source, bytes | bytearray):
        if not source:
            raise ImageError("empty file")
        return Image.open(io.BytesIO(source))
    path = Path(source)
    if not path.exists():
        raise ImageError(f"no such file: {path}")
    if path.is_dir():
        raise ImageError(f"is a folder, not an image: {path}")
    if path.stat().st_size == 0:
        raise ImageError("empty file")
    return Image.open(path)


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB; transparent areas become white, as a viewer shows them."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        top = array.max() if array.max() > 255 else 255.0
        image = Image.fromarray(np.clip(array / top * 255.0, 0, 255).astype(np.uint8), "L")
    elif image.mode == "F":
        array = np.asarray(image, dtype=np.float64)
        span = float(np.ptp(array)) or 1.0
        image = Image.fromarray(((array - array.min()) / span * 255).astype(np.uint8), "L")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "RGB" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def load_image(source: str | Path | bytes | Image.Image, config: Config | None = None) -> Image.Image:
    """Decode ``source`` (a path, raw bytes or a Pillow image) into an upright 8-bit RGB image.

    Raises :class:`ImageError` for anything unusable: missing, empty, not an image, truncated,
    too small, or a decompression bomb (more than ``config.max_pixels`` pixels).
    """
    config = config or Config()
    if isinstance(source, Image.Image):
        image = source
    else:
        try:
            image = _open(source)
        except UnidentifiedImageError:
            raise ImageError("not an image (unrecognised file format)") from None
        except ImageError:
            raise
        except OSError as error:
            raise ImageError(f"cannot open image: {error}") from None
    width, height = image.size
    if width * height > config.max_pixels:
        raise ImageError(
            f"image too large: {width}x{height} pixels is over the limit of {config.max_pixels:,} "
            "(possible decompression bomb)"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if getattr(image, "is_animated", False):
                image.seek(0)
            image.load()
            image = ImageOps.exif_transpose(image) or image
            rgb = _to_rgb(image)
    except ImageError:
        raise
    except Image.DecompressionBombError as error:
        raise ImageError(f"decompression bomb refused: {error}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        message = str(error) or type(error).__name__
        if "truncated" in message.lower():
            raise ImageError("truncated image: the file ends before the picture does") from None
        raise ImageError(f"corrupt image: {message}") from None
    if min(rgb.size) < config.min_side:
        raise ImageError(f"image too small: {rgb.size[0]}x{rgb.size[1]} (need {config.min_side} px a side)")
    return rgb


def image_info(path: str | Path, config: Config | None = None) -> dict:
    """Manifest facts about one file: size, format and whether it decodes (never raises)."""
    info: dict = {"width": None, "height": None, "format": None, "error": None}
    try:
        with Image.open(path) as image:
            info["format"] = image.format
            info["width"], info["height"] = image.size
        load_image(path, config)
    except ImageError as error:
        info["error"] = str(error)
    except UnidentifiedImageError:
        info["error"] = "not an image (unrecognised file format)"
    except OSError as error:
        info["error"] = f"cannot open image: {error}"
    return info
