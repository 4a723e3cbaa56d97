"""One training sample (`PoseSample`) and the geometry the augmentations share: box clipping, keypoint
visibility at the border, flips, perspective matrices and point/box warps, all in mmpose's float32
arithmetic."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import cv2
import numpy as np

Rng = np.random.Generator


# ----------------------------------------------------------------------------------------- sample
@dataclass
class PoseSample:
    """One image and its person instances, in the pixel frame of `image`.

    image (H,W,3) BGR uint8; bboxes (n,4) xyxy float32; keypoints (n,K,2) float32; keypoints_visible (n,K)
    float32 in {0,1}; areas (n,) float32 (COCO segmentation area, scaled with the image); ann_ids (n,) int64.
    `invalid_segs` are the COCO segmentations of persons without usable labels (crowd, no keypoints, empty
    box) of the *original* image (size `orig_hw`); `warp_mat` (2x3) maps original-image pixels to `image`
    once the stage-2 affine ran; `flipped` records the horizontal flip; both place `heatmap_mask`.
    """

    image: np.ndarray
    bboxes: np.ndarray
    keypoints: np.ndarray
    keypoints_visible: np.ndarray
    areas: np.ndarray
    ann_ids: np.ndarray
    flip_indices: tuple[int, ...]
    img_id: int = -1
    img_path: str = ""
    invalid_segs: list = field(default_factory=list)
    orig_hw: tuple[int, int] | None = None  # (h, w) of the image `invalid_segs` refer to
    warp_mat: np.ndarray | None = None
    flipped: bool = False
    heatmap_mask: np.ndarray | None = None

    @property
    def num_instances(self) -> int:
        return int(self.bboxes.shape[0])

    @property
    def num_keypoints(self) -> int:
        return int(self.keypoints.shape[1])

    def replace(self, **changes: Any) -> PoseSample:
        return dataclasses.replace(self, **changes)

    def select(self, keep: np.ndarray) -> PoseSample:
        """The instances where `keep` (bool (n,)) is true."""
        return self.replace(bboxes=self.bboxes[keep], keypoints=self.keypoints[keep],
                            keypoints_visible=self.keypoints_visible[keep], areas=self.areas[keep],
                            ann_ids=self.ann_ids[keep])

    def copy(self) -> PoseSample:
        """Deep copy of the arrays, so transforms may write in place (mmpose deep-copies data infos)."""
        return self.replace(image=self.image.copy(), bboxes=self.bboxes.copy(),
                            keypoints=self.keypoints.copy(),
                            keypoints_visible=self.keypoints_visible.copy(), areas=self.areas.copy(),
                            ann_ids=self.ann_ids.copy(), invalid_segs=list(self.invalid_segs))


class SampleSource(Protocol):
    """Where the mix transforms draw their extra images from (a dataset before augmentation)."""

    def __len__(self) -> int: ...

    def load(self, index: int, rng: Rng) -> PoseSample: ...


def concat_samples(image: np.ndarray, parts: Sequence[PoseSample], template: PoseSample) -> PoseSample:
    """`template` with `image` and the instances of all `parts` concatenated."""
    cat = np.concatenate
    return template.replace(
        image=image,
        bboxes=cat([p.bboxes for p in parts]).astype(np.float32, copy=False),
        keypoints=cat([p.keypoints for p in parts]).astype(np.float32, copy=False),
        keypoints_visible=cat([p.keypoints_visible for p in parts]).astype(np.float32, copy=False),
        areas=cat([p.areas for p in parts]).astype(np.float32, copy=False),
        ann_ids=cat([p.ann_ids for p in parts]).astype(np.int64, copy=False))


# ----------------------------------------------------------------------------------------- geometry helpers
def clip_boxes(boxes: np.ndarray, w: float, h: float) -> np.ndarray:
    """Clip xyxy boxes to [0, w] x [0, h] (mmpose `bbox_clip_border`: the bound is w, not w - 1)."""
    boxes[..., 0::2] = np.clip(boxes[..., 0::2], 0, w)
    boxes[..., 1::2] = np.clip(boxes[..., 1::2], 0, h)
    return boxes


def hide_outside(kpts: np.ndarray, vis: np.ndarray, w: float, h: float) -> np.ndarray:
    """Visibility 0 for keypoints outside [0, w] x [0, h]; coordinates are kept (`keypoint_clip_border`)."""
    out = (kpts[..., 0] > w) | (kpts[..., 0] < 0) | (kpts[..., 1] > h) | (kpts[..., 1] < 0)
    vis[out] = 0.0
    return vis


def flip_boxes(boxes: np.ndarray, width: int) -> np.ndarray:
    """xyxy boxes mirrored in an image `width` wide, mmpose's way: x' = width - 1 - x."""
    out = boxes.copy()
    out[:, 0] = width - 1 - boxes[:, 2]
    out[:, 2] = width - 1 - boxes[:, 0]
    return out


def flip_keypoints(kpts: np.ndarray, vis: np.ndarray, width: int,
                   flip_indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Keypoints mirrored (x' = width - 1 - x) and re-ordered to their flip partners (left <-> right)."""
    idx = np.asarray(flip_indices, dtype=np.int64)
    kpts = kpts[:, idx].copy()
    vis = vis[:, idx].copy()
    kpts[..., 0] = width - 1 - kpts[..., 0]
    return kpts, vis


def perspective_matrix(center: np.ndarray, translate: np.ndarray, scale: float, rot: float,
                       shear: np.ndarray) -> np.ndarray:
    """mmpose `get_pers_warp_matrix`: T(center + translate) @ Shear @ R(rot) @ S(scale) @ T(-center), each
    factor float32 (degrees in, as mmpose)."""
    f32 = np.float32
    t = np.array([[1, 0, translate[0] + center[0]], [0, 1, translate[1] + center[1]], [0, 0, 1]], dtype=f32)
    shx, shy = math.radians(shear[0]), math.radians(shear[1])
    sh = np.array([[1, np.tan(shx), 0], [np.tan(shy), 1, 0], [0, 0, 1]], dtype=f32)
    a = math.radians(rot)
    r = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]], dtype=f32)
    s = np.array([[scale, 0, 0], [0, scale, 0], [0, 0, 1]], dtype=f32)
    back = np.array([[1, 0, -center[0]], [0, 1, -center[1]], [0, 0, 1]], dtype=f32)
    return t @ sh @ r @ s @ back


def transform_points(points: np.ndarray, mat: np.ndarray) -> np.ndarray:
    """(..., 2) float32 points through a 2x3 affine or 3x3 perspective matrix with `cv2.transform`
    (as mmpose: the same float32 arithmetic), homogeneous divide for 3x3."""
    shape = points.shape
    if points.size == 0:
        return points.astype(np.float32).reshape(shape)
    pts = np.ascontiguousarray(points.reshape(-1, 1, 2), dtype=np.float32)
    out = cv2.transform(pts, mat)
    if out.shape[-1] == 3:
        out = out[..., :2] / out[..., 2:3]
    return out.reshape(shape).astype(np.float32, copy=False)


def transform_boxes(boxes: np.ndarray, mat: np.ndarray) -> np.ndarray:
    """xyxy boxes -> their 4 corners through `mat` -> min/max xyxy (`bbox_keep_corner=False`)."""
    if boxes.shape[0] == 0:
        return boxes.astype(np.float32).reshape(0, 4)
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    corners = np.stack([np.stack([x1, y1], -1), np.stack([x1, y2], -1), np.stack([x2, y2], -1),
                        np.stack([x2, y1], -1)], axis=1)
    c = transform_points(corners, mat)
    return np.concatenate([c.min(axis=1), c.max(axis=1)], axis=1).astype(np.float32)


def check_rng(rng: Any) -> Rng:
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"transforms need a numpy.random.Generator, got {type(rng).__name__}")
    return rng
