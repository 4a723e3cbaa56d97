"""Uploaded bytes -> BGR uint8 image, with the same rules as `rtmo.infer.image.read_image` for files.

`read_image` takes a path; uploads arrive as bytes. This is its byte-level twin (same decoder flags, same
truncation check, same normalisation), kept here until image.py offers a bytes decoder of its own.
"""

from __future__ import annotations

import cv2
import numpy as np

from ..infer.image import ImageError, _is_truncated, to_bgr_uint8

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


def decode_image(data: bytes, name: str = "upload") -> np.ndarray:
    """Decode a JPEG, PNG or WebP file held in memory; `ImageError` naming `name` and the problem."""
    if not data:
        raise ImageError(f"{name}: empty body (no image data)")
    if sniff_format(data) is None:
        raise ImageError(f"{name}: not a JPEG, PNG or WebP image")
    buf = np.frombuffer(data, dtype=np.uint8)
    if _is_truncated(buf):
        raise ImageError(f"{name}: truncated image file (the end-of-image marker is missing)")
    img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ImageError(f"{name}: not a readable image (corrupt, truncated or unsupported format)")
    return to_bgr_uint8(img, name)
