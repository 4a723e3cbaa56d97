"""Turn whatever the user passes into a BGR uint8 HxWx3 array, or fail with a clear message."""

from __future__ import annotations

import os
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
    """Decode an image file to BGR uint8 (8-bit or 16-bit, gray, colour or with alpha)."""
    p = Path(path)
    if not p.exists():
        raise ImageError(f"{p}: no such file")
    if p.is_dir():
        raise ImageError(f"{p}: is a directory, not an image")
    data = np.fromfile(str(p), dtype=np.uint8)  # fromfile + imdecode also handles non-ASCII paths
    if data.size == 0:
        raise ImageError(f"{p}: file is empty")
    if _is_truncated(data):
        # OpenCV decodes a cut-off JPEG/PNG into a half-grey picture with only a warning on stderr.
        raise ImageError(f"{p}: truncated image file (the end-of-image marker is missing)")
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ImageError(f"{p}: not a readable image (corrupt, truncated or unsupported format)")
    return to_bgr_uint8(img, str(p))


def load_image(image: Any) -> tuple[np.ndarray, str | None]:
    """(BGR uint8 array, path or None) from a path, an OpenCV BGR array or a PIL image."""
    if isinstance(image, (str, os.PathLike)):
        return read_image(image), str(image)
    if isinstance(image, np.ndarray):
        return to_bgr_uint8(image), None
    if hasattr(image, "convert") and hasattr(image, "size"):  # PIL.Image without importing PIL
        rgb = np.asarray(image.convert("RGB"))
        return np.ascontiguousarray(rgb[:, :, ::-1]), getattr(image, "filename", None) or None
    raise ImageError(f"unsupported image type {type(image).__name__}; "
                     "pass a file path, a BGR numpy array or a PIL image")


def _is_truncated(data: np.ndarray) -> bool:
    head = data[:8].tobytes()
    if head.startswith(b"\xff\xd8"):  # JPEG: must end with EOI (possibly followed by padding)
        return b"\xff\xd9" not in data[-4096:].tobytes()
    if head.startswith(b"\x89PNG"):
        return b"IEND" not in data[-64:].tobytes()
    return False
