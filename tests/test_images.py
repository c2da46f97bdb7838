"""Every awkward image format decodes to upright 8-bit RGB, and every bad file gets a clear error."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ethnic_group_recognizer.config import Config
from ethnic_group_recognizer.images import ImageError, image_info, load_image, sniff_format


def save(image: Image.Image, path: Path, **kwargs) -> Path:
    image.save(path, **kwargs)
    return path


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (120, 60), "red")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise when displayed
    path = save(image, tmp_path / "rotated.jpg", exif=exif)
    assert load_image(path).size == (60, 120)


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    path = save(Image.new("CMYK", (64, 64), (0, 255, 255, 0)), tmp_path / "cmyk.jpg")
    image = load_image(path)
    assert image.mode == "RGB"
    red, green, blue = image.getpixel((32, 32))
    assert red > 200 and green < 60 and blue < 60


def test_palette_png_with_transparency_is_composited_on_white(tmp_path):
    image = Image.new("P", (64, 64), 0)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image.paste(1, (0, 0, 32, 64))
    image.info["transparency"] = 0
    path = save(image, tmp_path / "palette.png", transparency=0)
    loaded = load_image(path)
    assert loaded.mode == "RGB"
    assert loaded.getpixel((10, 10)) == (255, 0, 0)
    assert loaded.getpixel((50, 10)) == (255, 255, 255)


def test_rgba_png_alpha_becomes_white(tmp_path):
    image = Image.new("RGBA", (64, 64), (0, 0, 255, 0))
    path = save(image, tmp_path / "alpha.png")
    assert load_image(path).getpixel((5, 5)) == (255, 255, 255)


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path):
    array = np.full((64, 64), 40000, dtype=np.uint16)
    array[:, 32:] = 10000
    path = save(Image.fromarray(array), tmp_path / "deep.png")
    loaded = np.asarray(load_image(path))
    assert loaded.dtype == np.uint8
    assert loaded[0, 0, 0] > loaded[0, 40, 0] > 0  # relative brightness kept, not saturated to 255


def test_animated_gif_uses_first_frame(tmp_path):
    frames = [Image.new("RGB", (64, 64), colour) for colour in ("red", "blue")]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100)
    red, green, blue = load_image(path).getpixel((5, 5))
    assert red > 200 and blue < 60


def test_webp_and_bytes_input(tmp_path):
    path = save(Image.new("RGB", (64, 64), "green"), tmp_path / "photo.webp")
    assert load_image(path).size == (64, 64)
    assert load_image(path.read_bytes()).size == (64, 64)


def test_truncated_jpeg_is_a_clear_error(tmp_path):
    buffer = io.BytesIO()
    Image.effect_noise((256, 256), 50).convert("RGB").save(buffer, format="JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(ImageError, match="truncated"):
        load_image(path)


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"", "empty"), (b"hello, I am text", "not an image"), (b"\x89PNG\r\n\x1a\n" + b"\0" * 20, "image")],
)
def test_bad_bytes_are_clear_errors(tmp_path, content, message):
    path = tmp_path / "bad.jpg"
    path.write_bytes(content)
    with pytest.raises(ImageError, match=message):
        load_image(path)


def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    path = save(Image.new("1", (5000, 5000)), tmp_path / "bomb.png")  # tiny file, 25 M pixels
    assert path.stat().st_size < 100_000
    with pytest.raises(ImageError, match="decompression bomb"):
        load_image(path, Config(max_pixels=10_000_000))


def test_too_small_missing_and_folder(tmp_path):
    with pytest.raises(ImageError, match="too small"):
        load_image(save(Image.new("RGB", (8, 8)), tmp_path / "tiny.png"))
    with pytest.raises(ImageError, match="no such file"):
        load_image(tmp_path / "missing.jpg")
    with pytest.raises(ImageError, match="folder"):
        load_image(tmp_path)


def test_sniff_format_reads_content_not_names():
    assert sniff_format(b"\xff\xd8\xff\xe0rest") == "JPEG"
    assert sniff_format(b"RIFF\0\0\0\0WEBPVP8 ") == "WEBP"
    assert sniff_format(b"<html><body>") is None


def test_image_info_never_raises(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    info = image_info(bad)
    assert info["error"] and info["width"] is None
    good = image_info(save(Image.new("RGB", (50, 40)), tmp_path / "good.png"))
    assert (good["width"], good["height"], good["format"], good["error"]) == (50, 40, "PNG", None)
