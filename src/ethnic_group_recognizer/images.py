"""Safe image loading: the one gate every decode goes through, with one error type.

Every stage reads pixels through :func:`load_image`, so EXIF orientation, CMYK, palette and
alpha images, 16-bit images, animated GIFs, truncated files and decompression bombs are
handled the same way everywhere.

Every input is untrusted, so hostile files are refused before any pixel is decoded, and nothing
the decoder raises escapes as anything but :class:`ImageError`:

- the pixel and memory budget is checked from the header (``Config.max_pixels``, counting the
  bytes a pixel of the image's mode takes);
- the file's structure is walked first, headers only (:mod:`.image_structure`): a JPEG with more
  than ``Config.max_jpeg_scans`` scans or absurd markers, a PNG with absurdly many chunks, a GIF
  with absurdly many blocks, a TIFF with absurdly many strips are refused;
- zlib bombs in PNG text or ICC chunks, malformed structures, out of memory: every decoder
  exception becomes an ImageError with a clear message;
- a malformed EXIF block never refuses a photo whose pixels are fine: its orientation is skipped;
- the content names the format (:func:`sniff_format`) and only that Pillow plugin opens it (no
  EPS, PSD, ICO, ... plugins; no guessing).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import ExifTags, Image, ImageFile, PngImagePlugin, UnidentifiedImageError

from ethnic_group_recognizer.config import Config
from ethnic_group_recognizer.image_structure import (
    StructureError,
    check_gif_blocks,
    check_png_chunks,
    check_tiff_directory,
    count_jpeg_scans,
)

# Truncated files must fail loudly, never be silently padded with grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False
# We apply our own, configurable pixel limit; Pillow's global one would only warn.
Image.MAX_IMAGE_PIXELS = None
# Each PNG zTXt/iTXt/iCCP chunk is inflated to at most MAX_TEXT_CHUNK (1 MiB, Pillow's default,
# kept for ICC profiles); all text of one file may hold 64 MiB by default, per image in memory.
PngImagePlugin.MAX_TEXT_MEMORY = 4 * 1024 * 1024
# Pillow warns about corrupt EXIF and the like; the gate decides what is refused. Filtered once
# here: warnings.catch_warnings per call is not thread-safe and the server decodes in threads.
warnings.filterwarnings("ignore", module=r"PIL\.")

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
_DRAFT_FORMATS = frozenset({"JPEG", "MPO"})

#: Bytes one decoded pixel of a Pillow mode takes; modes not listed (RGBA, CMYK, I, F, ...) take 4.
BYTES_PER_PIXEL: dict[str, int] = {
    "1": 1,
    "L": 1,
    "P": 1,
    "LA": 2,
    "La": 2,
    "PA": 2,
    "I;16": 2,
    "I;16L": 2,
    "I;16B": 2,
    "I;16N": 2,
    "RGB": 3,
    "YCbCr": 3,
    "LAB": 3,
    "HSV": 3,
}
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})

_TRANSPOSE_FOR_ORIENTATION: dict[int, Image.Transpose] = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


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


def _decoder_error(error: Exception) -> ImageError:
    """Turn whatever Pillow (or zlib, struct, numpy) raised into one clear ImageError."""
    if isinstance(error, ImageError):
        return error
    if isinstance(error, MemoryError):
        return ImageError("image too large to decode: out of memory")
    if isinstance(error, UnidentifiedImageError):
        return ImageError("not an image (unrecognised file format)")
    if isinstance(error, Image.DecompressionBombError):
        return ImageError(f"decompression bomb refused: {error}")
    message = str(error) or type(error).__name__
    lowered = message.lower()
    if "truncated" in lowered:
        return ImageError("truncated image: the file ends before the picture does")
    if "decompressed data too large" in lowered:
        return ImageError(
            "PNG refused: a compressed text or ICC chunk inflates beyond "
            f"{PngImagePlugin.MAX_TEXT_CHUNK:,} bytes (possible decompression bomb)"
        )
    if "too much memory used in text chunks" in lowered:
        return ImageError(
            f"PNG refused: its text chunks hold more than {PngImagePlugin.MAX_TEXT_MEMORY:,} bytes "
            "(possible decompression bomb)"
        )
    return ImageError(f"corrupt image: {message}")


def _check_structure(
    kind: str, fp: BinaryIO, data: bytes | bytearray | None, size: int, config: Config
) -> None:
    """Walk the file's structure (headers only) and refuse a hostile one before Pillow parses it."""
    try:
        if kind == "JPEG" and data is not None:
            count_jpeg_scans(data, config.max_jpeg_scans)
        elif kind == "PNG":
            check_png_chunks(fp, size)
        elif kind == "GIF":
            check_gif_blocks(fp)
        elif kind == "TIFF":
            check_tiff_directory(fp)
    except StructureError as error:
        raise ImageError(str(error)) from None
    fp.seek(0)


def _pillow_open(fp: BinaryIO, kind: str) -> ImageFile.ImageFile:
    try:
        return Image.open(fp, formats=[kind])  # only the plugin of the format the content names
    except Exception as error:  # a decoder raises anything for a hostile header
        raise _decoder_error(error) from None


def _open_file(path: Path) -> BinaryIO:
    """Open a regular file for reading, or say clearly why it cannot be."""
    try:
        if not path.exists():
            raise ImageError(f"no such file: {path}")
        if path.is_dir():
            raise ImageError(f"is a folder, not an image: {path}")
        if not path.is_file():
            raise ImageError(f"not a regular file: {path}")
        return open(path, "rb")  # noqa: SIM115 - the caller closes it
    except ImageError:
        raise
    except (OSError, ValueError) as error:  # permissions, a name too long, a NUL in the name
        raise ImageError(f"cannot read file {path}: {getattr(error, 'strerror', None) or error}") from None


def _read_jpeg(handle: BinaryIO, head: bytes, config: Config) -> bytes:
    """The whole JPEG file, read once, refused when larger than any photo within the budget."""
    limit = config.max_pixels * BYTES_PER_PIXEL["RGB"]
    data = head + handle.read(limit + 1 - len(head))
    if len(data) > limit:
        raise ImageError(
            f"JPEG refused: the file is over {limit:,} bytes, more than a photo within the pixel budget takes"
        )
    return data


@contextlib.contextmanager
def _opened(source: str | Path | bytes | bytearray, config: Config) -> Iterator[ImageFile.ImageFile]:
    """Open ``source`` lazily (header only), its structure checked first; decode inside the block.

    The format is the one the content names (:func:`sniff_format`), and only that Pillow plugin
    may open it. A JPEG file is read once and the same bytes are checked and decoded, so it cannot
    change between the check and the decode.
    """
    if isinstance(source, bytes | bytearray):
        if not source:
            raise ImageError("empty file")
        kind = _sniff_or_refuse(source[:16])
        fp = io.BytesIO(source)
        _check_structure(kind, fp, source, len(source), config)
        with _pillow_open(fp, kind) as image:
            yield image
        return
    with _open_file(Path(source)) as handle:
        try:
            size = os.fstat(handle.fileno()).st_size
            head = handle.read(16)
            if not head:
                raise ImageError("empty file")
            kind = _sniff_or_refuse(head)
            data = _read_jpeg(handle, head, config) if kind == "JPEG" else None
            fp: BinaryIO = handle if data is None else io.BytesIO(data)
            _check_structure(kind, fp, data, size, config)
        except OSError as error:
            raise ImageError(f"cannot read file {source}: {error.strerror or error}") from None
        with _pillow_open(fp, kind) as image:
            yield image


def _sniff_or_refuse(head: bytes) -> str:
    kind = sniff_format(head)
    if kind is None:
        raise ImageError("not an image (unrecognised file format)")
    return kind


def _check_budget(image: Image.Image, config: Config) -> None:
    """Refuse, from the header alone, an image whose decoded pixels would not fit the budget."""
    width, height = image.size
    if width * height > config.max_pixels:
        raise ImageError(
            f"image too large: {width}x{height} pixels is over the limit of {config.max_pixels:,} "
            "(possible decompression bomb)"
        )
    needed = width * height * BYTES_PER_PIXEL.get(image.mode, 4)
    budget = config.max_pixels * BYTES_PER_PIXEL["RGB"]
    if needed > budget:
        raise ImageError(
            f"image too large: {width}x{height} pixels of mode {image.mode} take {needed:,} bytes "
            f"decoded, over the limit of {budget:,} (possible decompression bomb)"
        )
    if min(width, height) < config.min_side:
        raise ImageError(f"image too small: {width}x{height} (need {config.min_side} px a side)")


def _upright(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation; a malformed EXIF block is skipped, since the pixels are fine.

    (Unlike ``ImageOps.exif_transpose``, the EXIF is never re-serialised, which is where malformed
    blocks raise, and an image without rotation is not copied.)
    """
    try:
        orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:  # malformed EXIF: anything from struct.error to ZeroDivisionError
        return image
    method = _TRANSPOSE_FOR_ORIENTATION.get(orientation) if isinstance(orientation, int) else None
    return image if method is None else image.transpose(method)


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB; transparent areas become white, as a viewer shows them."""
    if image.mode in _SIXTEEN_BIT_MODES:
        scaled = np.asarray(image).astype(np.float32)  # float32, not float64: half the memory
        scaled *= 255.0 / max(float(scaled.max()), 255.0)
        image = Image.fromarray(np.clip(scaled, 0, 255, out=scaled).astype(np.uint8))
    elif image.mode == "F":
        array = np.asarray(image).astype(np.float32)
        array -= array.min()
        array *= 255.0 / (float(array.max()) or 1.0)
        image = Image.fromarray(array.astype(np.uint8))
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "RGB" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _decode(image: Image.Image, config: Config, target_side: int | None) -> Image.Image:
    """Budget check from the header, then decode (JPEG draft when allowed), orient and convert."""
    _check_budget(image, config)
    try:
        if image.tell() != 0:
            image.seek(0)  # animated GIF/WebP: the first frame
        if target_side is not None and image.format in _DRAFT_FORMATS:
            # DCT scaling by 1/2, 1/4 or 1/8, never below twice the side the caller needs.
            image.draft(None, (2 * target_side, 2 * target_side))
        image.load()
        return _to_rgb(_upright(image))
    except Exception as error:  # MemoryError included: it becomes "too large to decode"
        raise _decoder_error(error) from None


def load_image(
    source: str | Path | bytes | Image.Image, config: Config | None = None, target_side: int | None = None
) -> Image.Image:
    """Decode ``source`` (a path, raw bytes or a Pillow image) into an upright 8-bit RGB image.

    ``target_side``: the caller only needs the short side to be at least this many pixels (the
    model's input size). A large JPEG is then decoded with DCT scaling (draft mode) to a short
    side of no less than ``2 * target_side``, which is several times faster and smaller; other
    formats and smaller JPEGs decode at full size. None (the default) always decodes at full size.

    Raises :class:`ImageError` for anything unusable: missing, empty, not an image, truncated,
    too small, over the pixel budget (``config.max_pixels``), a JPEG with more than
    ``config.max_jpeg_scans`` scans, or anything else the decoder refuses.
    """
    config = config or Config()
    if target_side is not None and target_side < 1:
        raise ValueError(f"target_side must be a positive number of pixels, not {target_side}")
    if isinstance(source, Image.Image):
        return _decode(source, config, target_side)
    with _opened(source, config) as image:
        return _decode(image, config, target_side)


def image_info(path: str | Path, config: Config | None = None) -> dict:
    """Manifest facts about one file: size, format and whether it decodes (never raises)."""
    config = config or Config()
    info: dict = {"width": None, "height": None, "format": None, "error": None}
    try:
        with _opened(path, config) as image:
            info["format"] = image.format
            info["width"], info["height"] = image.size
            _decode(image, config, None)
    except ImageError as error:
        info["error"] = str(error)
    except Exception as error:  # the gate maps everything already; this keeps the promise
        info["error"] = f"cannot read image: {str(error) or type(error).__name__}"
    return info
