"""Hostile files are refused by the one decoding gate, quickly and clearly, and never sink a batch.

Every fixture is built here, byte by byte where it has to be: PNG chunks with correct CRCs whose
zlib streams are bombs, EXIF blocks with bad types, counts and offsets, a progressive JPEG with
thousands of empty scans, a 16-bit PNG whose header promises 64 M pixels.
"""

from __future__ import annotations

import functools
import io
import json
import os
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import pattern_image
from PIL import Image

from ethnic_group_recognizer.config import Config
from ethnic_group_recognizer.images import ImageError, image_info, load_image

# images.py filters Pillow's warnings about corrupt EXIF at import; pytest resets filters per test.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:PIL.TiffImagePlugin")

EGR = str(Path(sys.executable).parent / "egr")
#: Generous: a refusal costs milliseconds; decoding the scan bomb costs 10-20 s of CPU.
QUICKLY_S = 5.0


def refused(source: object, match: str, config: Config | None = None) -> str:
    """Assert ``source`` is refused with an ImageError matching ``match``, within QUICKLY_S."""
    start = time.perf_counter()
    with pytest.raises(ImageError, match=match) as caught:
        load_image(source, config)
    assert time.perf_counter() - start < QUICKLY_S
    return str(caught.value)


# --- PNG zlib bombs ---------------------------------------------------------------------------


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_with(before_idat: bytes = b"", after_idat: bytes = b"") -> bytes:
    """A valid 64x64 PNG with extra chunks spliced in before the image data or after it."""
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), "blue").save(buffer, "PNG")
    data = buffer.getvalue()
    idat, iend = data.index(b"IDAT") - 4, data.index(b"IEND") - 4
    return data[:idat] + before_idat + data[idat:iend] + after_idat + data[iend:]


ZLIB_BOMB = zlib.compress(b"\0" * (16 << 20), 9)  # 16 KiB that inflate to 16 MiB

PNG_BOMBS = {
    "zTXt": png_with(png_chunk(b"zTXt", b"Comment\0\0" + ZLIB_BOMB)),
    "iTXt": png_with(png_chunk(b"iTXt", b"Comment\0\x01\x00en\0\0" + ZLIB_BOMB)),
    "iCCP": png_with(png_chunk(b"iCCP", b"icc\0\0" + ZLIB_BOMB)),
    "zTXt after the pixels": png_with(after_idat=png_chunk(b"zTXt", b"Comment\0\0" + ZLIB_BOMB)),
}


@pytest.mark.parametrize("name", list(PNG_BOMBS))
def test_png_zlib_bombs_are_refused_clearly(name):
    data = PNG_BOMBS[name]
    assert len(data) < 40_000
    message = refused(data, "PNG refused: a compressed text or ICC chunk inflates beyond")
    assert "decompression bomb" in message


def test_png_text_memory_is_bounded():
    """Many chunks each under the per-chunk limit: refused once their text passes 4 MiB."""
    chunk = png_chunk(b"zTXt", b"Comment\0\0" + zlib.compress(b"a" * 1_000_000, 9))
    refused(png_with(chunk * 6), "text chunks hold more than 4,194,304 bytes")
    assert load_image(png_with(chunk * 2)).size == (64, 64)  # 2 MB of text is fine


def test_png_with_broken_zlib_text_still_decodes():
    assert load_image(png_with(png_chunk(b"zTXt", b"Comment\0\0not zlib"))).size == (64, 64)


# --- Memory budget ---------------------------------------------------------------------------


@functools.cache
def sixteen_bit_png(width: int, height: int) -> bytes:
    """A valid all-black 16-bit grey PNG, compressed row by row (never held decoded in memory)."""
    compressor = zlib.compressobj(9)
    row = b"\0" * (1 + 2 * width)  # filter byte + 2 bytes a pixel
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 16, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")
    )


def test_the_16_bit_png_of_the_issue_is_refused_from_its_header():
    data = sixteen_bit_png(7990, 7990)
    assert len(data) < 200 * 1024  # the issue's file: 121 KiB
    message = refused(data, "image too large: 7990x7990")
    assert "50,000,000" in message and "decompression bomb" in message
    assert Config().max_pixels == 50_000_000


def test_budget_counts_bytes_per_pixel():
    """Under one pixel budget RGB fits, RGBA (4 bytes a pixel) does not: the budget is in bytes."""
    config = Config(max_pixels=100 * 90, min_side=8)
    for mode in ("L", "I;16", "RGB"):
        buffer = io.BytesIO()
        Image.new(mode, (100, 90)).save(buffer, "PNG")
        assert load_image(buffer.getvalue(), config).size == (100, 90)
    buffer = io.BytesIO()
    Image.new("RGBA", (100, 90)).save(buffer, "PNG")
    message = refused(buffer.getvalue(), "mode RGBA take 36,000 bytes decoded", config)
    assert "over the limit of 27,000" in message


def test_out_of_memory_becomes_an_image_error():
    """Under an address-space limit the decode runs out of memory: a clear ImageError, no crash."""
    script = """
import io, re, resource
from PIL import Image
from ethnic_group_recognizer.images import ImageError, load_image
buffer = io.BytesIO()
Image.new("RGB", (7000, 7000), (90, 120, 150)).save(buffer, "JPEG", quality=50)
size = int(re.search(r"VmSize:\\s+(\\d+)", open("/proc/self/status").read()).group(1)) * 1024
resource.setrlimit(resource.RLIMIT_AS, (size + (120 << 20), resource.RLIM_INFINITY))
try:
    load_image(buffer.getvalue())
    print("decoded")
except ImageError as error:
    print("refused:", error)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "refused: image too large to decode: out of memory", result.stderr


# --- JPEG scan bombs and marker structure -----------------------------------------------------


def progressive_jpeg(image: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", progressive=True, **options)
    return buffer.getvalue()


def scan_bomb(extra_scans: int = 3000, side: int = 2048) -> bytes:
    """A progressive JPEG whose last (empty, 16-byte) AC scan is repeated thousands of times."""
    data = progressive_jpeg(Image.new("L", (side, side), 128), quality=90)
    last_scan = data[data.rindex(b"\xff\xda") : -2]  # SOS header + entropy data, before EOI
    return data[:-2] + last_scan * extra_scans + b"\xff\xd9"


def test_progressive_scan_bomb_is_refused_before_decoding(tmp_path):
    data = scan_bomb()
    assert len(data) < 100_000
    message = refused(data, r"JPEG refused: more than 100 scans")
    assert "normal progressive JPEG has about 10" in message
    path = tmp_path / "bomb.jpg"
    path.write_bytes(data)
    refused(path, "more than 100 scans")
    refused(progressive_jpeg(pattern_image("checker", 1)), "more than 3 scans", Config(max_jpeg_scans=3))


def test_good_progressive_jpegs_still_decode(tmp_path):
    photo = pattern_image("circles", 4, size=300)
    for options in ({}, {"restart_marker_rows": 1}, {"subsampling": 0, "quality": 95}):
        data = progressive_jpeg(photo, **options)
        loaded = np.asarray(load_image(data), dtype=np.float64)
        assert loaded.shape == (300, 300, 3)
        assert np.abs(loaded - np.asarray(photo, dtype=np.float64)).mean() < 12
    # bytes after EOI (camera trailers) and fill bytes before a marker are legal
    data = progressive_jpeg(photo)
    path = tmp_path / "trailer.jpg"
    path.write_bytes(data + b"\xff\xd8 trailing thumbnail or junk")
    assert load_image(path).size == (300, 300)
    assert load_image(data[:2] + b"\xff\xff\xff" + data[2:]).size == (300, 300)


def jpeg_segment(marker: int, body: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(body) + 2) + body


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d[:2] + b"\xff\xfe\x00\x01" + d[2:], "segment length 1"),
        (lambda d: d[:2] + jpeg_segment(0xFE, b"note") * 5000 + d[2:], "more than 4,096 marker segments"),
        (lambda d: d[:2] + b"\xff\xd8" + d[2:], "a second start-of-image marker"),
        (lambda d: d[:2] + jpeg_segment(0xDA, b"\x01\x01\x00\x00\x3f\x00") + d[2:], "scan before the frame"),
        (
            lambda d: d[:2] + jpeg_segment(0xC0, b"\x08") + jpeg_segment(0xDA, b"\x09") + d[2:],
            "bad scan header",
        ),
    ],
    ids=["length", "segments", "two-SOI", "scan-first", "scan-header"],
)
def test_absurd_jpeg_marker_structure_is_refused(make, message):
    buffer = io.BytesIO()
    pattern_image("stripes", 2).save(buffer, "JPEG")
    refused(make(buffer.getvalue()), message)


def test_odd_paths_and_oversized_jpeg_files_are_clear_errors(tmp_path):
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    refused(fifo, "not a regular file")
    refused(str(tmp_path / "nul\0.jpg"), "no such file")
    refused(tmp_path / ("long" * 100 + ".jpg"), "cannot read file")
    path = tmp_path / "big.jpg"
    pattern_image("circles", 3, size=200).save(path, quality=95)
    assert path.stat().st_size > 3000
    refused(path, "the file is over 3,000 bytes", Config(max_pixels=1000, min_side=8))
    assert image_info(fifo)["error"] == f"not a regular file: {fifo}"


# --- Parsing-time bombs in PNG, GIF and TIFF structure ---------------------------------------
# Each took Pillow seconds to minutes of CPU on the old gate (measured: 800,000 empty PNG chunks
# 7.7 s; a GIF comment of 1,000,000 one-byte sub-blocks 41 s; a TIFF of 2,000,000 strips 295 s).


def test_png_with_absurdly_many_chunks_is_refused():
    chunk = png_chunk(b"abCd", b"")  # an ancillary chunk Pillow reads and skips, one at a time
    data = png_with(chunk * 200_000)
    assert len(data) < 2_500_000
    refused(data, r"PNG refused: more than 6,\d{3} chunks")
    assert load_image(png_with(chunk * 3000)).size == (64, 64)


def gif_with_comment(sub_blocks: bytes) -> bytes:
    buffer = io.BytesIO()
    Image.new("P", (64, 64)).save(buffer, "GIF")
    data = buffer.getvalue()
    picture = data.index(b",")  # the image descriptor
    return data[:picture] + b"\x21\xfe" + sub_blocks + b"\x00" + data[picture:]


def test_gif_with_absurdly_many_blocks_is_refused():
    refused(gif_with_comment(b"\x01x" * 1_000_000), "GIF refused: more than 4,096 blocks")
    buffer = io.BytesIO()
    Image.new("P", (64, 64)).save(buffer, "GIF")
    data = buffer.getvalue()
    picture = data.index(b",")
    refused(data[:picture] + b"?" * 1_000_000 + data[picture:], "GIF refused")  # stray bytes
    assert load_image(gif_with_comment(b"\x05hello" * 100)).size == (64, 64)


def tiff_with_strips(strips: int, width: int = 64) -> bytes:
    """A valid 8-bit grey TIFF of one row a strip, every strip pointing at the same pixel row."""

    def entry(tag: int, kind: int, count: int, value: bytes) -> bytes:
        return struct.pack("<HHI", tag, kind, count) + value.ljust(4, b"\0")

    arrays = 8 + 2 + 8 * 12 + 4
    pixels = arrays + 8 * strips
    directory = b"".join(
        [
            struct.pack("<H", 8),
            entry(256, 4, 1, struct.pack("<I", width)),
            entry(257, 4, 1, struct.pack("<I", strips)),
            entry(258, 3, 1, struct.pack("<H", 8)),
            entry(259, 3, 1, struct.pack("<H", 1)),
            entry(262, 3, 1, struct.pack("<H", 1)),
            entry(273, 4, strips, struct.pack("<I", arrays)),
            entry(278, 4, 1, struct.pack("<I", 1)),
            entry(279, 4, strips, struct.pack("<I", arrays + 4 * strips)),
            struct.pack("<I", 0),
        ]
    )
    offsets = struct.pack(f"<{strips}I", *[pixels] * strips)
    counts = struct.pack(f"<{strips}I", *[width] * strips)
    return b"II*\0" + struct.pack("<I", 8) + directory + offsets + counts + b"\x80" * width


def test_tiff_with_absurdly_many_strips_is_refused():
    refused(tiff_with_strips(1_000_000), "TIFF refused: 1,000,000 strips or tiles")
    image = load_image(tiff_with_strips(100))
    assert image.size == (64, 100) and image.getpixel((3, 50)) == (128, 128, 128)


def test_content_names_the_format_and_only_that_plugin_opens_it(tmp_path):
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64)).save(buffer, "PPM")  # a format Pillow reads but the product does not
    refused(buffer.getvalue(), "not an image")
    refused(b"BMW owners club newsletter" * 10, "truncated")  # "BM": read as a BMP, which it is not


# --- Malformed EXIF --------------------------------------------------------------------------


def jpeg_with_exif(entries: list[tuple[int, int, int, bytes]], tail: bytes = b"") -> bytes:
    """A 64x48 red JPEG whose EXIF IFD0 holds ``entries`` (tag, type, count, 4-byte value)."""
    body = struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        body += struct.pack("<HHI", tag, kind, count) + value
    tiff = b"II*\0" + struct.pack("<I", 8) + body + struct.pack("<I", 0) + tail
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), "red").save(buffer, "JPEG", exif=b"Exif\0\0" + tiff)
    return buffer.getvalue()


ROTATE = (0x0112, 3, 1, b"\x06\x00\x00\x00")  # orientation 6: display rotated 90 degrees
#: Found by fuzzing Pillow 12.3: each made ImageOps.exif_transpose raise (struct.error, TypeError,
#: AttributeError, "negative seek value") while re-serialising the EXIF of a photo that is fine.
MALFORMED_EXIF = {
    "undefined-colour-space": [ROTATE, (0xA005, 7, 1, b"\xa6\xe0@\xf9")],
    "signed-byte-offsets": [ROTATE, (0x8769, 6, 2, b"\x8b\xa6\x04>"), (0x8825, 12, 2, b"\xa7#\xe7\x8f")],
    "signed-resolution": [ROTATE, (0x011A, 6, 1, b"\xec\xc1\xe5\xb1"), (0x8825, 10, 0, b"fY\xb3-")],
    "byte-resolution": [ROTATE, (0x011A, 1, 4, b"\x86\xefw*"), (0x0131, 10, 100, b"G\x7fz\xb8")],
    "float-make": [(0x010F, 11, 1, b"\xf0\x18\x992"), ROTATE, (0xA005, 6, 0xFFFFFFFF, b"\x81\xb0\xf6\xb0")],
}


@pytest.mark.parametrize("name", list(MALFORMED_EXIF))
def test_malformed_exif_keeps_the_photo_and_its_orientation(name):
    assert load_image(jpeg_with_exif(MALFORMED_EXIF[name])).size == (48, 64)


def test_unreadable_exif_orientation_is_skipped_not_refused():
    far = jpeg_with_exif([(0x0112, 3, 1000, struct.pack("<I", 0xFFFF0000))])
    assert load_image(far).size == (64, 48)
    bad_ifd = io.BytesIO()
    Image.new("RGB", (64, 48)).save(bad_ifd, "JPEG", exif=b"Exif\0\0II*\0" + struct.pack("<I", 0xFFFFFFF0))
    assert load_image(bad_ifd.getvalue()).size == (64, 48)


# --- Draft mode ------------------------------------------------------------------------------


def phone_photo(orientation: int | None = None) -> bytes:
    """A 4032x3024 JPEG like a phone's, optionally with an EXIF orientation."""
    image = pattern_image("stripes", 5, size=504).resize((4032, 3024))
    buffer = io.BytesIO()
    exif = Image.Exif()
    if orientation:
        exif[0x0112] = orientation
    image.save(buffer, "JPEG", quality=85, exif=exif)
    return buffer.getvalue()


def test_draft_decodes_large_jpegs_no_smaller_than_twice_the_target():
    data = phone_photo()
    assert load_image(data).size == (4032, 3024)  # no target: full size, as before
    assert load_image(data, target_side=320).size == (1008, 756)  # 1/4: 756 >= 640
    assert load_image(data, target_side=160).size == (504, 378)  # 1/8
    assert load_image(data, target_side=700).size == (2016, 1512)  # 1/2: 1512 >= 1400
    assert load_image(data, target_side=1000).size == (4032, 3024)  # 1/2 would be under 2000
    full = load_image(data).resize((504, 378), Image.Resampling.BOX)
    drafted = load_image(data, target_side=160)
    difference = np.abs(np.asarray(full, np.float64) - np.asarray(drafted, np.float64)).mean()
    assert difference < 10


def test_draft_keeps_the_exif_orientation():
    assert load_image(phone_photo(orientation=6), target_side=320).size == (756, 1008)
    assert load_image(phone_photo(orientation=3), target_side=320).size == (1008, 756)


def test_draft_leaves_other_formats_and_small_jpegs_at_full_size():
    buffer = io.BytesIO()
    Image.new("RGB", (1200, 900)).save(buffer, "PNG")
    assert load_image(buffer.getvalue(), target_side=100).size == (1200, 900)
    buffer = io.BytesIO()
    Image.new("RGB", (500, 400)).save(buffer, "JPEG")
    assert load_image(buffer.getvalue(), target_side=320).size == (500, 400)
    with pytest.raises(ValueError, match="target_side"):
        load_image(buffer.getvalue(), target_side=0)


# --- image_info and the real CLI -------------------------------------------------------------


def write_hostile_files(folder: Path) -> dict[str, str]:
    """Hostile files by name, with the words their refusal must contain."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "scan-bomb.jpg").write_bytes(scan_bomb())
    (folder / "ztxt-bomb.png").write_bytes(PNG_BOMBS["zTXt"])
    (folder / "iccp-bomb.png").write_bytes(PNG_BOMBS["iCCP"])
    (folder / "deep-bomb.png").write_bytes(sixteen_bit_png(7990, 7990))
    return {
        "scan-bomb.jpg": "more than 100 scans",
        "ztxt-bomb.png": "inflates beyond",
        "iccp-bomb.png": "inflates beyond",
        "deep-bomb.png": "image too large",
    }


def test_image_info_never_raises_on_hostile_files(tmp_path):
    for name, words in write_hostile_files(tmp_path).items():
        info = image_info(tmp_path / name)
        assert words in info["error"], (name, info)


def egr(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([EGR, *args], capture_output=True, text=True, timeout=300)


def test_predict_batch_survives_hostile_files(tmp_path):
    folder = tmp_path / "photos"
    expected = write_hostile_files(folder)
    for i, kind in enumerate(("stripes", "circles", "checker")):
        pattern_image(kind, i).save(folder / f"good-{i}.jpg")
    (folder / "odd-exif.jpg").write_bytes(jpeg_with_exif(MALFORMED_EXIF["byte-resolution"]))
    result = egr("predict", str(folder), "--jsonl")
    assert result.returncode == 0, result.stderr
    rows = {Path(row["path"]).name: row for row in map(json.loads, result.stdout.splitlines())}
    assert len(rows) == len(expected) + 4
    for name, words in expected.items():
        assert words in rows[name]["error"] and "label" not in rows[name]
    for name in ("good-0.jpg", "good-1.jpg", "good-2.jpg", "odd-exif.jpg"):
        assert len(rows[name]["scores"]) == 12, rows[name]


def test_data_import_keeps_the_good_files_and_records_the_bad(tmp_path):
    source = tmp_path / "source" / "Kazakhs"
    expected = write_hostile_files(source)
    for i in range(3):
        pattern_image("stripes", i).save(source / f"good-{i}.jpg")
    result = egr("data", "import", str(tmp_path / "source"), "--out", str(tmp_path / "ds"))
    assert result.returncode == 0, result.stderr
    lines = (tmp_path / "ds" / "manifest.jsonl").read_text().splitlines()
    records = {Path(record["path"]).name: record for record in map(json.loads, lines)}
    assert len(records) == len(expected) + 3
    for i in range(3):
        assert records[f"good-{i}.jpg"]["status"] == "ok" and records[f"good-{i}.jpg"]["error"] is None
    for name, words in expected.items():
        assert records[name]["status"] == "error" and words in records[name]["error"], records[name]
