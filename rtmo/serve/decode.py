"""Uploads: the formats the server accepts and a size check from the header, before the one decoder
(`rtmo.infer.image.decode_image`, the same as for files: EXIF orientation, truncation, trailing data)."""

from __future__ import annotations

import numpy as np

from ..infer.image import ImageError
from ..infer.image import decode_image as decode_bytes

# What the server accepts: magic bytes -> format name. Anything else is refused before decoding.
_FORMATS = {"jpeg": (b"\xff\xd8\xff",), "png": (b"\x89PNG\r\n\x1a\n",)}
ACCEPTED_TYPES = ("image/jpeg", "image/png", "image/webp")


def sniff_format(data: bytes) -> str | None:
    """'jpeg', 'png', 'webp' or None, from the first bytes."""
    if data[:12].startswith(b"RIFF") and data[8:12] == b"WEBP":
        return "webp"
    for name, magics in _FORMATS.items():
        if data.startswith(magics):
            return name
    return None


def header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) read from a JPEG / PNG / WebP header without decoding, or None if not found."""
    fmt = sniff_format(data)
    if fmt == "png" and len(data) >= 24 and data[12:16] == b"IHDR":
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if fmt == "webp" and len(data) >= 30:
        chunk = data[12:16]
        if chunk == b"VP8 ":
            w, h = int.from_bytes(data[26:28], "little"), int.from_bytes(data[28:30], "little")
            return w & 0x3FFF, h & 0x3FFF  # the top two bits are a scaling hint
        if chunk == b"VP8L":
            bits = int.from_bytes(data[21:25], "little")
            return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
        if chunk == b"VP8X":
            return int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
    if fmt == "jpeg":
        i = 2
        while i + 9 <= len(data):
            if data[i] != 0xFF:
                return None
            marker = data[i + 1]
            if marker == 0xFF:  # fill byte
                i += 1
                continue
            if 0xD0 <= marker <= 0xD9 or marker == 0x01:  # markers without a length
                i += 2
                continue
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # start of frame
                return int.from_bytes(data[i + 7:i + 9], "big"), int.from_bytes(data[i + 5:i + 7], "big")
            i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
    return None


def decode_image(data: bytes, name: str = "upload", max_pixels: int | None = None) -> np.ndarray:
    """Decode a JPEG, PNG or WebP file held in memory; `ImageError` naming `name` and the problem.

    `max_pixels` refuses, from the header and before decoding, an image whose pixels would not fit the
    server's memory: a 20 MB upload can be a PNG of a billion pixels (a "decompression bomb")."""
    if not data:
        raise ImageError(f"{name}: empty body (no image data)")
    if sniff_format(data) is None:
        raise ImageError(f"{name}: not a JPEG, PNG or WebP image")
    size = header_size(data)
    if max_pixels is not None and size is not None and size[0] * size[1] > max_pixels:
        raise ImageError(f"{name}: {size[0]}x{size[1]} is {size[0] * size[1] / 1e6:.0f} megapixels; the "
                         f"limit is {max_pixels / 1e6:.0f} (rtmo serve --max-megapixels)")
    return decode_bytes(data, name)
