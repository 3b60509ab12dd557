"""Hostile and damaged photo files, built byte by byte (for the containment and fuzz tests)."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

from PIL import Image


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_claiming(path: Path, width: int, height: int) -> Path:
    """A PNG of a few dozen bytes whose header claims width × height pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\0" * 16))
                     + _chunk(b"IEND", b""))
    return path


def huge_jpeg(path: Path, width: int, height: int) -> Path:
    """A real JPEG panorama of width × height pixels (a gradient, so it is not all one colour)."""
    ramp = Image.linear_gradient("L").resize((width, height))
    Image.merge("RGB", (ramp, ramp.transpose(Image.Transpose.FLIP_LEFT_RIGHT), ramp)).save(path, "JPEG", quality=70)
    return path


def tiff_ifd_past_end(path: Path) -> Path:
    """A TIFF whose first IFD offset points past the end of the file."""
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(buf, "TIFF")
    data = bytearray(buf.getvalue())
    struct.pack_into("<I", data, 4, len(data) + 10_000)
    path.write_bytes(bytes(data))
    return path


def tiff_strips_past_end(path: Path) -> Path:
    """A TIFF whose image data offsets (StripOffsets) point past the end of the file."""
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (30, 200, 30)).save(buf, "TIFF")
    data = bytearray(buf.getvalue())
    ifd = struct.unpack_from("<I", data, 4)[0]
    for i in range(struct.unpack_from("<H", data, ifd)[0]):
        entry = ifd + 2 + 12 * i
        tag, kind, count = struct.unpack_from("<HHI", data, entry)
        if tag == 273 and count == 1:  # StripOffsets, stored in the entry itself
            fmt = "<H" if kind == 3 else "<I"
            struct.pack_into(fmt, data, entry + 8, min(len(data) + 50_000, 65535 if kind == 3 else 2**31))
    path.write_bytes(bytes(data))
    return path
