"""Turn whatever the user passes into a BGR uint8 HxWx3 array, or fail with a clear message."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import cv2
import numpy as np


class ImageError(ValueError):
    """An input image that cannot be used; the message names the file and the problem."""


def to_bgr_uint8(img: np.ndarray, name: str = "image") -> np.ndarray:
    """Normalise an OpenCV-style array: grayscale -> BGR, BGRA -> BGR, 16-bit/float -> uint8."""
    if not isinstance(img, np.ndarray):
        raise ImageError(f"{name}: expected a numpy array, got {type(img).__name__}")
    if img.ndim == 2:
        img = img[:, :, None]
    if img.ndim != 3 or img.shape[2] not in (1, 3, 4):
        raise ImageError(f"{name}: expected an HxW, HxWx3 or HxWx4 image, got shape {img.shape}")
    if img.shape[0] < 1 or img.shape[1] < 1:
        raise ImageError(f"{name}: empty image (shape {img.shape})")
    if img.dtype == np.uint16:
        img = (img.astype(np.float32) / 257.0).round().astype(np.uint8)
    elif img.dtype in (np.float32, np.float64):
        if not np.isfinite(img).all():
            raise ImageError(f"{name}: image contains NaN or infinite values")
        scale = 255.0 if img.max() <= 1.0 else 1.0
        img = np.clip(img * scale, 0, 255).round().astype(np.uint8)
    elif img.dtype == bool:
        img = img.astype(np.uint8) * 255
    elif img.dtype != np.uint8:
        raise ImageError(f"{name}: unsupported pixel type {img.dtype}")
    if img.shape[2] == 1:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    elif img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
    return np.ascontiguousarray(img)


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Decode an image file to BGR uint8, upright (see `decode_image`)."""
    p = Path(path)
    if not p.exists():
        raise ImageError(f"{p}: no such file")
    if p.is_dir():
        raise ImageError(f"{p}: is a directory, not an image")
    try:
        data = np.fromfile(str(p), dtype=np.uint8)  # fromfile + imdecode also handles non-ASCII paths
    except OSError as e:
        raise ImageError(f"{p}: cannot be read ({e.strerror or e})") from None
    return decode_image(data, str(p))


def decode_image(data: bytes | np.ndarray, name: str = "image") -> np.ndarray:
    """Decode encoded image bytes (JPEG, PNG, WebP, BMP, TIFF, ...) to BGR uint8.

    Decoded exactly as mmpose's `LoadImage` does (OpenCV `IMREAD_COLOR`): the EXIF orientation of a phone
    photo is applied, grey becomes BGR, alpha is dropped, 16-bit is scaled to 8-bit. Data after the end of
    the image (the video a "motion photo" appends to its JPEG) is ignored; a file cut short is refused,
    where OpenCV would return a half-grey picture with only a warning on stderr.
    """
    buf = np.frombuffer(data, dtype=np.uint8) if isinstance(data, (bytes, bytearray, memoryview)) else data
    if buf.size == 0:
        raise ImageError(f"{name}: file is empty")
    if _complete(buf.tobytes()) is False:
        raise ImageError(f"{name}: truncated image file (the data ends before the end-of-image marker)")
    img = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if img is None:
        raise ImageError(f"{name}: not a readable image (corrupt, truncated or unsupported format)")
    return to_bgr_uint8(img, name)


def load_image(image: Any) -> tuple[np.ndarray, str | None]:
    """(BGR uint8 array, path or None) from a path, an OpenCV BGR array or a PIL image."""
    if isinstance(image, (str, os.PathLike)):
        return read_image(image), str(image)
    if isinstance(image, np.ndarray):
        return to_bgr_uint8(image), None
    if hasattr(image, "convert") and hasattr(image, "size"):  # PIL.Image without importing PIL
        image = _upright_pil(image)
        rgb = np.asarray(image.convert("RGB"))
        return np.ascontiguousarray(rgb[:, :, ::-1]), getattr(image, "filename", None) or None
    raise ImageError(f"unsupported image type {type(image).__name__}; "
                     "pass a file path, a BGR numpy array or a PIL image")


def _upright_pil(image: Any) -> Any:
    """A PIL image as a file path would decode it: PIL keeps the EXIF orientation as a tag, OpenCV applies
    it. `exif_transpose` removes the tag when it applies it, so an image already made upright stays so."""
    try:
        orientation = image.getexif().get(0x0112, 1)
    except Exception:  # no EXIF support for this image type
        return image
    if orientation in (None, 1):
        return image
    from PIL import ImageOps  # PIL is there: the image is one

    return ImageOps.exif_transpose(image)


# Inside a JPEG's entropy-coded data 0xFF is always followed by 0x00 (stuffing) or a restart marker, so
# the first other 0xFF xx after a start-of-scan is the next real marker.
_JPEG_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")


def _complete(b: bytes) -> bool | None:
    """Whether a JPEG or PNG holds its end-of-image marker; None for other formats or an unparsable
    structure (the decoder judges those)."""
    if b.startswith(b"\xff\xd8"):
        return _jpeg_complete(b)
    if b.startswith(b"\x89PNG\r\n\x1a\n"):
        return _png_complete(b)
    return None


def _jpeg_complete(b: bytes) -> bool | None:
    i, n = 2, len(b)
    while i + 1 < n:
        if b[i] != 0xFF:
            return None  # not where a marker should be: leave it to the decoder
        marker = b[i + 1]
        if marker == 0xD9:  # end of image
            return True
        if marker == 0xFF or marker == 0x01 or 0xD0 <= marker <= 0xD7:  # fill byte / markers without length
            i += 1 if marker == 0xFF else 2
            continue
        if i + 4 > n:
            return False
        i += 2 + int.from_bytes(b[i + 2:i + 4], "big")  # segments (APPn with EXIF thumbnails too) skipped
        if marker == 0xDA:  # start of scan: entropy-coded data up to the next marker
            m = _JPEG_MARKER.search(b, i)
            if m is None:
                return False
            i = m.start()
    return False


def _png_complete(b: bytes) -> bool:
    i, n = 8, len(b)
    while i + 8 <= n:
        length = int.from_bytes(b[i:i + 4], "big")
        kind = b[i + 4:i + 8]
        i += 12 + length  # length, type, data, CRC
        if kind == b"IEND":
            return i <= n
    return False
