"""NumPy twin of `rtmo.ops.oks.pairwise_pose_oks`, for code that runs without torch (the tracker).

A module of its own for the reason given in `rtmo.ops.boxes_np`: importing it must never need torch.

Same similarity, exp(-d^2 / (2 area (2 sigma)^2)) averaged over keypoints, with two differences that
matching people across frames wants: a keypoint counts when it is valid in both sets (not only in the
target), and the reference is the first set (`a`, whose box areas set the scale, floored at 1 px^2).
"""

from __future__ import annotations

import numpy as np


def oks_matrix(kpts_a: np.ndarray, valid_a: np.ndarray, areas_a: np.ndarray, kpts_b: np.ndarray,
               valid_b: np.ndarray, sigmas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """COCO object keypoint similarity between people `a` (n,K,2) and people `b` (m,K,2), over the
    keypoints valid in both ((n,K) and (m,K) booleans). Returns (n,m) OKS and an (n,m) mask of pairs with
    at least one shared valid keypoint (OKS is undefined elsewhere and set to 0)."""
    var = (2.0 * np.asarray(sigmas, np.float64)) ** 2  # COCO's per-keypoint variance
    d2 = np.sum((kpts_a[:, None] - kpts_b[None]) ** 2, axis=-1)  # (n,m,K)
    e = d2 / (2.0 * var * np.maximum(areas_a, 1.0)[:, None, None])
    both = valid_a[:, None, :] & valid_b[None, :, :]
    count = both.sum(-1)
    oks = np.where(count > 0, (np.exp(-e) * both).sum(-1) / np.maximum(count, 1), 0.0)
    return oks, count > 0
