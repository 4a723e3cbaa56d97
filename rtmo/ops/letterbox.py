"""The centred letterbox of mmpose's BottomupResize and its inverse."""

from __future__ import annotations

import cv2
import numpy as np

PAD_VALUE = 114


def get_warp_matrix(center: np.ndarray, scale: np.ndarray, output_size: tuple[int, int],
                    rot: float = 0.0) -> np.ndarray:
    """2x3 affine mapping the square region (center, scale[0]), rotated by `rot` degrees, onto output_size,
    built from three float32 point pairs as mmpose does, so that cv2.warpAffine reproduces it bit-exactly."""
    rad = np.deg2rad(rot)
    sn, cs = np.sin(rad), np.cos(rad)
    dst_w, dst_h = output_size
    src = np.zeros((3, 2), dtype=np.float32)
    dst = np.zeros((3, 2), dtype=np.float32)
    src[0] = center
    src[1] = center + np.array([[cs, -sn], [sn, cs]]) @ np.array([scale[0] * -0.5, 0.0])
    dst[0] = [dst_w * 0.5, dst_h * 0.5]
    dst[1] = np.array([dst_w * 0.5, dst_h * 0.5]) + np.array([dst_w * -0.5, 0.0])
    for pts in (src, dst):  # third point: (p0 - p1) rotated by 90 degrees around p1
        d = pts[0] - pts[1]
        pts[2] = pts[1] + np.r_[-d[1], d[0]]
    return cv2.getAffineTransform(src, dst)


def letterbox_params(img_w: int, img_h: int, input_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Centre and scale (float32) of the region that fits the image into input_size (w, h)."""
    in_w, in_h = input_size
    ratio = img_w / img_h
    rsz_w, rsz_h = min(in_w, in_h * ratio), min(in_h, in_w / ratio)
    center = np.array([img_w / 2, img_h / 2], dtype=np.float32)
    scale = np.array([img_w * in_w / rsz_w, img_h * in_h / rsz_h], dtype=np.float32)
    return center, scale


def letterbox(img: np.ndarray, input_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fit a BGR uint8 HxWx3 image into input_size (w, h), centred, padded with 114.

    Returns the canvas, the centre and the scale needed by `to_image_coords`.
    """
    h, w = img.shape[:2]
    center, scale = letterbox_params(w, h, input_size)
    mat = get_warp_matrix(center, scale, input_size)
    canvas = cv2.warpAffine(img, mat, tuple(input_size), flags=cv2.INTER_LINEAR,
                            borderValue=(PAD_VALUE,) * 3)
    return canvas, center, scale


def to_image_coords(points: np.ndarray, center: np.ndarray, scale: np.ndarray,
                    input_size: tuple[int, int]) -> np.ndarray:
    """Map (..., 2) network-input pixels back to image pixels (computed in float64 like mmpose)."""
    size = np.asarray(input_size, dtype=np.int64)
    out = points / size * scale + center - 0.5 * scale
    return out.astype(np.float32)
