"""Cheap walks over an image file's structure, so hostile files are refused before decoding.

Each format has a way to make a small file cost seconds to minutes of CPU in the decoder or in
Pillow's Python parsing, none of which Pillow bounds:

- JPEG: libjpeg decodes every scan of a progressive JPEG into the coefficient buffer, so thousands
  of (empty) scans cost tens of seconds; its own scan limit is not reachable through Pillow.
  Counting the SOS segments first costs one regex pass over the bytes.
- PNG: Pillow handles every chunk in Python; 800,000 empty chunks in 9.6 MB cost ~8 s.
- GIF: a comment of one-byte sub-blocks is joined quadratically: 2 MB cost ~40 s.
- TIFF: Pillow builds one tile per strip at open; two million strips cost minutes and 600 MB.

Each walk reads headers only (seeking over chunk bodies), stops at a limit far above what real
files use, and raises :class:`StructureError` with a message saying what was refused.
"""

from __future__ import annotations

import os
import re
import struct
from typing import BinaryIO

#: More segments than any camera or encoder writes (APPn, DQT, DHT, SOF, SOS, ...); refuse beyond.
MAX_JPEG_SEGMENTS = 4096
#: PNG chunks allowed: this many plus one per KiB of file (libpng writes 8 KiB IDAT chunks).
PNG_BASE_CHUNKS = 4096
#: GIF extension blocks, sub-blocks and stray bytes allowed before the first picture.
MAX_GIF_BLOCKS = 4096
#: TIFF IFD entries, and strips or tiles (a 50 MP image at one row a strip has under 65,536).
MAX_TIFF_TAGS = 4096
MAX_TIFF_STRIPS = 65_536
_TIFF_STRIP_TAGS = frozenset({273, 279, 324, 325})  # StripOffsets/ByteCounts, TileOffsets/ByteCounts

_SOI, _EOI, _SOS, _TEM = 0xD8, 0xD9, 0xDA, 0x01
_RESTARTS = range(0xD0, 0xD8)
# SOF0..SOF15 except DHT (C4), JPG (C8) and DAC (CC), which share the range.
_FRAME_HEADERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# A marker: 0xFF then a byte that is neither 0x00 (stuffing) nor 0xFF (fill: the match is the last
# 0xFF of a run). One literal 0xFF, not "\xff+": the regex engine then skips to it 20x faster.
_MARKER = re.compile(rb"\xff([^\x00\xff])")
# The end of entropy-coded data: a marker other than a stuffed 0xFF00 or a restart marker.
_END_OF_SCAN = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")


class StructureError(ValueError):
    """A file whose structure is hostile or absurd; the message says which."""


def count_jpeg_scans(data: bytes | bytearray, max_scans: int) -> int:
    """Return the number of scans (SOS segments) up to the first EOI, refusing above ``max_scans``.

    Raises :class:`StructureError` for more than ``max_scans`` scans, more than
    :data:`MAX_JPEG_SEGMENTS` segments, a missing SOI, a second SOI, a segment length under 2,
    a malformed scan header or a scan before the frame header. A file that simply ends early is
    not refused here: the decoder reports it as truncated, with the same message as every format.
    Bytes after the first EOI (MPO pictures, trailers) are not read, as the decoder does not.
    """
    size = len(data)
    if size < 2 or data[0] != 0xFF or data[1] != _SOI:
        raise StructureError("not a JPEG: no start-of-image marker")
    position, scans, segments, seen_frame = 2, 0, 0, False
    while True:
        match = _MARKER.search(data, position)
        if match is None:
            return scans  # ends without EOI: truncated, for the decoder to report
        marker, position = match.group(1)[0], match.end()
        segments += 1
        if segments > MAX_JPEG_SEGMENTS:
            raise StructureError(f"malformed JPEG: more than {MAX_JPEG_SEGMENTS:,} marker segments")
        if marker == _EOI:
            return scans
        if marker == _SOI:
            raise StructureError("malformed JPEG: a second start-of-image marker")
        if marker in _RESTARTS or marker == _TEM:
            continue  # standalone markers carry no length
        if position + 2 > size:
            return scans
        length = data[position] << 8 | data[position + 1]
        if length < 2:
            raise StructureError(f"malformed JPEG: segment length {length} (at byte {position:,})")
        end = position + length
        if end > size:
            return scans
        if marker in _FRAME_HEADERS:
            seen_frame = True
        elif marker == _SOS:
            components = data[position + 2] if length > 2 else 0
            if not 1 <= components <= 4 or length != 6 + 2 * components:
                raise StructureError(f"malformed JPEG: bad scan header (at byte {position:,})")
            if not seen_frame:
                raise StructureError("malformed JPEG: a scan before the frame header")
            scans += 1
            if scans > max_scans:
                raise StructureError(
                    f"JPEG refused: more than {max_scans:,} scans (a normal progressive JPEG has about 10; "
                    "this looks like a decoding-time bomb)"
                )
            scan_end = _END_OF_SCAN.search(data, end)
            if scan_end is None:
                return scans
            end = scan_end.start()
        position = end


def check_png_chunks(fp: BinaryIO, size: int) -> None:
    """Refuse a PNG with more than ``PNG_BASE_CHUNKS`` + one chunk per KiB of ``size``."""
    allowed = PNG_BASE_CHUNKS + size // 1024
    fp.seek(8)
    for count in range(1, allowed + 2):
        header = fp.read(8)
        if len(header) < 8:
            return  # truncated: the decoder reports it
        length, kind = struct.unpack(">I4s", header)
        if kind == b"IEND":
            return
        if count > allowed:
            raise StructureError(f"PNG refused: more than {allowed:,} chunks (a decoding-time bomb)")
        fp.seek(length + 4, os.SEEK_CUR)  # chunk data and CRC


def check_gif_blocks(fp: BinaryIO) -> None:
    """Refuse a GIF with more than ``MAX_GIF_BLOCKS`` blocks or stray bytes before its first picture."""
    fp.seek(0)
    header = fp.read(13)
    if len(header) < 13:
        return
    if header[10] & 0x80:  # global colour table
        fp.seek(3 << ((header[10] & 7) + 1), os.SEEK_CUR)
    blocks = 0
    while True:
        blocks += 1
        if blocks > MAX_GIF_BLOCKS:
            raise StructureError(
                f"GIF refused: more than {MAX_GIF_BLOCKS:,} blocks before the first picture "
                "(a decoding-time bomb)"
            )
        introducer = fp.read(1)
        if introducer in (b"", b",", b";"):
            return  # the first picture, the end, or truncated: the decoder takes over
        if introducer != b"!":
            continue  # a stray byte, which Pillow skips one at a time
        fp.read(1)  # extension label
        while (length := fp.read(1)) not in (b"", b"\0"):
            blocks += 1
            if blocks > MAX_GIF_BLOCKS:
                break  # refused at the top of the loop
            fp.seek(length[0], os.SEEK_CUR)


def check_tiff_directory(fp: BinaryIO) -> None:
    """Refuse a TIFF whose first directory has absurdly many entries, strips or tiles."""
    fp.seek(0)
    header = fp.read(8)
    if len(header) < 8:
        return
    order = "<" if header[:2] == b"II" else ">"
    fp.seek(struct.unpack(order + "I", header[4:])[0])
    raw = fp.read(2)
    if len(raw) < 2:
        return
    (entries,) = struct.unpack(order + "H", raw)
    if entries > MAX_TIFF_TAGS:
        raise StructureError(f"TIFF refused: {entries:,} directory entries (more than {MAX_TIFF_TAGS:,})")
    table = fp.read(12 * entries)
    for index in range(len(table) // 12):
        tag, _kind, count = struct.unpack_from(order + "HHI", table, 12 * index)
        if tag in _TIFF_STRIP_TAGS and count > MAX_TIFF_STRIPS:
            raise StructureError(
                f"TIFF refused: {count:,} strips or tiles (more than {MAX_TIFF_STRIPS:,}; a decoding-time bomb)"
            )
