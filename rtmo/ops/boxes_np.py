"""NumPy twin of `rtmo.ops.boxes.box_iou`, for code that runs without torch (the tracker, bench scripts).

A module of its own rather than a numpy function in boxes.py: an exported-model install has numpy but no
torch, and importing this file must never need torch (boxes.py imports torch at the top, as the network and
the traced post-processing want).

It differs from the torch twin only at degenerate boxes: inverted corners give an area of 0 here, and a
pair whose union is 0 has IoU 0 (the torch twin floors the union at 1e-6 instead).
"""

from __future__ import annotations

import numpy as np


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(n,4) x (m,4) xyxy boxes -> (n,m) IoU, in float64."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=-1)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0, None), axis=-1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0, None), axis=-1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)
