"""Training augmentation of RTMO (reference §10.1-10.3), as mmpose implements it, in OpenCV/numpy.

Stage 1 (most epochs):  Mosaic -> perspective BottomupRandomAffine -> YOLOX MixUp -> HSV -> flip -> filter.
Stage 2 (last epochs):  affine BottomupRandomAffine (letterbox, or random for m/l COCO/body7) -> HSV -> flip
                        -> heatmap mask -> filter.
Batch level:            `draw_batch_size` + `resize_batch` (BatchSyncRandomResize).

Every transform is a small picklable object whose `__call__(sample, rng)` takes a `numpy.random.Generator`,
so a pipeline run is reproducible from its seed and DataLoader workers need no global random state. The
mix transforms also take a `source` (anything with `__len__` and `load(index, rng) -> PoseSample`) from
which they draw their extra images. Details that look accidental (the perspective window centred on
(S/2, S/2) of the 2S x 2S mosaic, `keep_empty=False` keeping images without instances, crowd RLEs not in
the heatmap mask, `x' = w - 1 - x` flips) are mmpose's and are kept on purpose: they shaped the released
models.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import cv2
import numpy as np

from ..ops.letterbox import get_warp_matrix

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


def _flip_boxes(boxes: np.ndarray, width: int) -> np.ndarray:
    out = boxes.copy()
    out[:, 0] = width - 1 - boxes[:, 2]
    out[:, 2] = width - 1 - boxes[:, 0]
    return out


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


def _check_rng(rng: Any) -> Rng:
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"transforms need a numpy.random.Generator, got {type(rng).__name__}")
    return rng


# ----------------------------------------------------------------------------------------- Mosaic
@dataclass
class Mosaic:
    """YOLOX Mosaic (mmpose `Mosaic`): the sample top-left plus 3 random samples of `source` on a 2S x 2S
    canvas around a random centre; every image fit (aspect kept) into S x S first."""

    img_scale: tuple[int, int] = (640, 640)  # (w, h)
    center_range: tuple[float, float] = (0.5, 1.5)
    pad_val: int = 114
    prob: float = 1.0

    def __call__(self, sample: PoseSample, rng: Rng, source: SampleSource) -> PoseSample:
        rng = _check_rng(rng)
        if not rng.uniform(0, 1) < self.prob:
            return sample
        others = [source.load(int(rng.integers(0, len(source))), rng) for _ in range(3)]
        sw, sh = self.img_scale
        canvas = np.full((2 * sh, 2 * sw, 3), self.pad_val, dtype=sample.image.dtype)
        cx = int(rng.uniform(*self.center_range) * sw)
        cy = int(rng.uniform(*self.center_range) * sh)
        parts = []
        for loc, s in enumerate((sample, *others)):
            h, w = s.image.shape[:2]
            r = min(sh / h, sw / w)
            img = cv2.resize(s.image, (int(w * r), int(h * r)), interpolation=cv2.INTER_LINEAR)
            paste, crop = self._paste_crop(loc, cx, cy, img.shape[1], img.shape[0])
            canvas[paste[1]:paste[3], paste[0]:paste[2]] = img[crop[1]:crop[3], crop[0]:crop[2]]
            dx, dy = paste[0] - crop[0], paste[1] - crop[1]
            boxes = s.bboxes * r
            boxes[:, 0::2] += dx
            boxes[:, 1::2] += dy
            kpts = s.keypoints * r
            kpts[..., 0] += dx
            kpts[..., 1] += dy
            parts.append(s.replace(bboxes=boxes, keypoints=kpts, keypoints_visible=s.keypoints_visible.copy(),
                                   areas=s.areas * r ** 2))
        out = concat_samples(canvas, parts, sample)
        clip_boxes(out.bboxes, 2 * sw, 2 * sh)
        hide_outside(out.keypoints, out.keypoints_visible, 2 * sw, 2 * sh)
        return out

    def _paste_crop(self, loc: int, cx: int, cy: int, w: int,
                    h: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Canvas region and image crop of quadrant `loc` (0 TL, 1 TR, 2 BL, 3 BR), each anchored at the
        corner that touches the mosaic centre."""
        sw2, sh2 = 2 * self.img_scale[0], 2 * self.img_scale[1]
        if loc == 0:
            x1, y1, x2, y2 = max(cx - w, 0), max(cy - h, 0), cx, cy
            crop = (w - (x2 - x1), h - (y2 - y1), w, h)
        elif loc == 1:
            x1, y1, x2, y2 = cx, max(cy - h, 0), min(cx + w, sw2), cy
            crop = (0, h - (y2 - y1), min(w, x2 - x1), h)
        elif loc == 2:
            x1, y1, x2, y2 = max(cx - w, 0), cy, cx, min(sh2, cy + h)
            crop = (w - (x2 - x1), 0, w, min(y2 - y1, h))
        else:
            x1, y1, x2, y2 = cx, cy, min(cx + w, sw2), min(sh2, cy + h)
            crop = (0, 0, min(w, x2 - x1), min(y2 - y1, h))
        return (x1, y1, x2, y2), crop


# ----------------------------------------------------------------------------------------- random affine
def trunc_normal(rng: Rng, size: tuple[int, ...] = ()) -> np.ndarray:
    """Standard normal truncated to [-1, 1] (scipy `truncnorm(-1, 1)`), by rejection; float32 as mmpose."""
    n = int(np.prod(size)) if size else 1
    out = np.empty(0)
    while out.size < n:
        x = rng.standard_normal(2 * n + 4)
        out = np.concatenate([out, x[np.abs(x) <= 1]])
    out = out[:n].astype(np.float32)
    return out.reshape(size) if size else out[0]


@dataclass
class RandomAffine:
    """mmpose `BottomupRandomAffine` with `bbox_keep_corner=False`, `clip_border=True`.

    mode 'affine': a `scale_type='long'` square region around the image centre (+ offset) is warped onto
    `input_size` with `cv2.warpAffine` (all probabilities 0 = the test-time centred letterbox).
    mode 'perspective': `M = T(c + t) Sh R S T(-c)` with `c = input_size / 2` applied to the (mosaic) image
    as is, `cv2.warpPerspective`; **as implemented** the window is around (S/2, S/2) of the 2S mosaic.
    Draws: offset in [-1,1]^2 * shift_factor (times the image size in affine mode, the input size in
    perspective mode), scale factor in `scale_factor`, rotation (degrees) and shear (degrees, perspective
    only), each gated by its probability; `distribution` 'uniform' or 'trunc_norm'.
    """

    input_size: tuple[int, int] = (640, 640)  # (w, h)
    mode: str = "affine"
    shift_factor: float = 0.2
    shift_prob: float = 1.0
    scale_factor: tuple[float, float] = (0.75, 1.5)
    scale_prob: float = 1.0
    rotate_factor: float = 30.0
    rotate_prob: float = 1.0
    shear_factor: float = 2.0
    shear_prob: float = 1.0
    distribution: str = "trunc_norm"
    pad_val: int = 114

    def __post_init__(self) -> None:
        if self.mode not in ("affine", "perspective"):
            raise ValueError(f"RandomAffine.mode must be 'affine' or 'perspective', got {self.mode!r}")
        if self.distribution not in ("uniform", "trunc_norm"):
            raise ValueError(f"RandomAffine.distribution must be 'uniform' or 'trunc_norm', "
                             f"got {self.distribution!r}")

    def _random(self, rng: Rng, size: tuple[int, ...] = ()) -> np.ndarray:
        if self.distribution == "trunc_norm":
            return trunc_normal(rng, size)
        return rng.random(size) * 2.0 - 1.0

    def draw(self, rng: Rng) -> tuple[np.ndarray, np.ndarray, float, np.ndarray]:
        """(offset rate (2,), scale rate (1,), rotation deg, shear deg (2,)), in mmpose's draw order."""
        rng = _check_rng(rng)
        offset = (self._random(rng, (2,)) * self.shift_factor if rng.random() < self.shift_prob
                  else np.zeros(2, dtype=np.float32))
        if rng.random() < self.scale_prob:
            lo, hi = self.scale_factor
            scale = lo + (hi - lo) * (self._random(rng, (1,)) + 1) / 2
        else:
            scale = np.ones(1, dtype=np.float32)
        rotate = float(self._random(rng)) * self.rotate_factor if rng.random() < self.rotate_prob else 0.0
        if self.mode == "perspective" and rng.random() < self.shear_prob:
            shear = self._random(rng, (2,)) * self.shear_factor
        else:
            shear = np.zeros(2, dtype=np.float32)
        return offset, scale, rotate, shear

    def matrix(self, img_w: int, img_h: int, rng: Rng) -> np.ndarray:
        """The random 2x3 (affine) or 3x3 (perspective) matrix for an `img_w` x `img_h` input."""
        offset_rate, scale_rate, rotate, shear = self.draw(rng)
        w, h = self.input_size
        if self.mode == "affine":
            offset = offset_rate * [img_w, img_h]
            scale = _fix_aspect_long(scale_rate * [img_w, img_h], w / h)
            center = np.array([img_w / 2, img_h / 2], dtype=np.float32)
            return get_warp_matrix(center + offset, scale, (w, h), rotate)
        center = np.array([w / 2, h / 2], dtype=np.float32)
        return perspective_matrix(center, offset_rate * [w, h], scale_rate[0], rotate, shear)

    def __call__(self, sample: PoseSample, rng: Rng) -> PoseSample:
        img_h, img_w = sample.image.shape[:2]
        mat = self.matrix(img_w, img_h, rng)
        w, h = self.input_size
        border = (self.pad_val,) * 3
        if mat.shape[0] == 2:
            image = cv2.warpAffine(sample.image, mat, (int(w), int(h)), flags=cv2.INTER_LINEAR,
                                   borderValue=border)
            area_mat = np.concatenate([mat, np.array([[0.0, 0.0, 1.0]], dtype=mat.dtype)])
        else:
            image = cv2.warpPerspective(sample.image, mat, (int(w), int(h)), borderValue=border)
            area_mat = mat
        kpts = transform_points(sample.keypoints, mat)
        vis = hide_outside(kpts, sample.keypoints_visible.copy(), w, h)
        boxes = clip_boxes(transform_boxes(sample.bboxes, mat), w, h)
        # float32 product, as numpy < 2 computed mmpose's in-place `area *= det` (scalar kept the array type)
        areas = sample.areas * np.float32(np.linalg.det(area_mat))
        # The heatmap mask is warped from the original image: only the affine (stage-2) matrix is kept.
        warp = mat if mat.shape[0] == 2 else None
        return sample.replace(image=image, bboxes=boxes, keypoints=kpts, keypoints_visible=vis, areas=areas,
                              warp_mat=warp)


def _fix_aspect_long(scale: np.ndarray, aspect: float) -> np.ndarray:
    """Grow (w, h) to aspect ratio `aspect` = w/h along the long side (`scale_type='long'`)."""
    w, h = scale
    if w > h * aspect:
        return np.array([w, w / aspect], dtype=scale.dtype)
    return np.array([h * aspect, h], dtype=scale.dtype)


# ----------------------------------------------------------------------------------------- MixUp
@dataclass
class MixUp:
    """YOLOX MixUp (mmpose `YOLOXMixUp`): a random sample of `source`, fit into S x S top-left, rescaled by
    U(ratio_range), flipped with probability `flip_ratio`, randomly cropped to the image size and averaged
    50/50 with the image; its instances are appended. Skipped when the drawn sample has no instance."""

    img_scale: tuple[int, int] = (640, 640)  # (w, h)
    ratio_range: tuple[float, float] = (0.8, 1.6)
    flip_ratio: float = 0.5
    pad_val: int = 114
    prob: float = 1.0

    def __call__(self, sample: PoseSample, rng: Rng, source: SampleSource) -> PoseSample:
        rng = _check_rng(rng)
        if not rng.uniform(0, 1) < self.prob:
            return sample
        aux = source.load(int(rng.integers(0, len(source))), rng)
        if aux.num_instances == 0:
            return sample
        sw, sh = self.img_scale
        aux_img = aux.image
        canvas = np.full((sh, sw, 3), self.pad_val, dtype=aux_img.dtype)
        r = min(sh / aux_img.shape[0], sw / aux_img.shape[1])
        aux_img = cv2.resize(aux_img, (int(aux_img.shape[1] * r), int(aux_img.shape[0] * r)),
                             interpolation=cv2.INTER_LINEAR)
        canvas[:aux_img.shape[0], :aux_img.shape[1]] = aux_img
        jit = rng.uniform(*self.ratio_range)
        r *= jit
        canvas = cv2.resize(canvas, (int(canvas.shape[1] * jit), int(canvas.shape[0] * jit)),
                            interpolation=cv2.INTER_LINEAR)
        # mmpose flips when U(0,1) > flip_ratio: the same 50% for the default 0.5.
        flip = rng.uniform(0, 1) > self.flip_ratio
        if flip:
            canvas = canvas[:, ::-1]
        aux_h, aux_w = canvas.shape[:2]
        h, w = sample.image.shape[:2]
        padded = np.full((max(aux_h, h), max(aux_w, w), 3), self.pad_val, dtype=np.uint8)
        padded[:aux_h, :aux_w] = canvas
        dy = int(rng.integers(0, max(0, padded.shape[0] - h) + 1))
        dx = int(rng.integers(0, max(0, padded.shape[1] - w) + 1))
        crop = padded[dy:dy + h, dx:dx + w]
        image = (0.5 * sample.image + 0.5 * crop).astype(np.uint8)

        boxes = clip_boxes(aux.bboxes * r, aux_w, aux_h)
        kpts = aux.keypoints * r
        vis = hide_outside(kpts, aux.keypoints_visible.copy(), aux_w, aux_h)
        if flip:
            boxes = _flip_boxes(boxes, aux_w)
            kpts, vis = _flip_kpts(kpts, vis, aux_w, sample.flip_indices)
        boxes[:, 0::2] -= dx
        boxes[:, 1::2] -= dy
        kpts[..., 0] -= dx
        kpts[..., 1] -= dy
        extra = aux.replace(bboxes=boxes, keypoints=kpts, keypoints_visible=vis, areas=aux.areas * r ** 2)
        out = concat_samples(image, [sample, extra], sample)
        clip_boxes(out.bboxes, w, h)
        hide_outside(out.keypoints, out.keypoints_visible, w, h)
        return out


def _flip_kpts(kpts: np.ndarray, vis: np.ndarray, width: int,
               flip_indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    idx = np.asarray(flip_indices, dtype=np.int64)
    kpts = kpts[:, idx].copy()
    vis = vis[:, idx].copy()
    kpts[..., 0] = width - 1 - kpts[..., 0]
    return kpts, vis


# ----------------------------------------------------------------------------------------- photometric / flip
@dataclass
class HSVAug:
    """YOLOX HSV jitter: gains U(-1,1) * (hue, sat, val), each kept with a fair coin, truncated to int16;
    H wraps modulo 180 (OpenCV's 8-bit hue), S and V are clipped to [0, 255]."""

    hue_delta: int = 5
    saturation_delta: int = 30
    value_delta: int = 30

    def draw_gains(self, rng: Rng) -> np.ndarray:
        rng = _check_rng(rng)
        gains = rng.uniform(-1, 1, 3) * [self.hue_delta, self.saturation_delta, self.value_delta]
        gains *= rng.integers(0, 2, 3)
        return gains.astype(np.int16)

    @staticmethod
    def apply(image: np.ndarray, gains: np.ndarray) -> np.ndarray:
        """`image` (BGR uint8) with int16 (hue, saturation, value) `gains` added."""
        hsv = cv2.cvtColor(image, cv2.COLOR_BGR2HSV).astype(np.int16)
        hsv[..., 0] = (hsv[..., 0] + gains[0]) % 180
        hsv[..., 1] = np.clip(hsv[..., 1] + gains[1], 0, 255)
        hsv[..., 2] = np.clip(hsv[..., 2] + gains[2], 0, 255)
        return cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2BGR)

    def __call__(self, sample: PoseSample, rng: Rng) -> PoseSample:
        return sample.replace(image=self.apply(sample.image, self.draw_gains(rng)))


@dataclass
class RandomFlip:
    """Horizontal flip with probability `prob`: image, boxes (x' = W - 1 - x), keypoints permuted with
    `flip_indices`. The heatmap mask is flipped later from `sample.flipped`."""

    prob: float = 0.5

    def __call__(self, sample: PoseSample, rng: Rng) -> PoseSample:
        rng = _check_rng(rng)
        if not rng.random() < self.prob:
            return sample
        width = sample.image.shape[1]
        kpts, vis = _flip_kpts(sample.keypoints, sample.keypoints_visible, width, sample.flip_indices)
        return sample.replace(image=np.ascontiguousarray(sample.image[:, ::-1]),
                              bboxes=_flip_boxes(sample.bboxes, width), keypoints=kpts, keypoints_visible=vis,
                              flipped=not sample.flipped)


# ----------------------------------------------------------------------------------------- mask / filter
def segs_to_mask(segs: Sequence[Any], height: int, width: int) -> np.ndarray:
    """Union of COCO polygon segmentations as a (h, w) uint8 mask. **As implemented** in mmpose only
    polygon lists are rasterised; RLE dicts (crowd regions) are ignored."""
    from pycocotools import mask as cocomask

    rles = []
    for seg in segs:
        if isinstance(seg, (list, tuple)):
            polys = [p for p in seg if len(p) >= 6]  # pycocotools rejects degenerate polygons
            if not polys:
                continue
            rle = cocomask.frPyObjects(polys, height, width)
            rles.extend(rle if isinstance(rle, list) else [rle])
    if not rles:
        return np.zeros((height, width), dtype=np.uint8)
    with warnings.catch_warnings():  # pycocotools' Cython arrays predate numpy 2's `copy` keyword
        warnings.simplefilter("ignore", DeprecationWarning)
        return cocomask.decode(cocomask.merge(rles))


@dataclass
class HeatmapMask:
    """mmpose `BottomupGetHeatmapMask(get_invalid=True)`: the invalid persons' polygons of the original
    image, warped with the stage-2 affine (bilinear), flipped like the image, thresholded > 0.5."""

    def __call__(self, sample: PoseSample, rng: Rng | None = None) -> PoseSample:
        h, w = sample.image.shape[:2]
        if sample.warp_mat is None:
            raise ValueError("HeatmapMask needs the affine warp of the original image (RandomAffine in "
                             "'affine' mode must run first; a mosaic has no single source image)")
        if sample.orig_hw is None:
            raise ValueError("HeatmapMask needs `orig_hw`, the size of the image the segmentations refer to")
        mask = segs_to_mask(sample.invalid_segs, *sample.orig_hw).astype(np.float32)
        mask = cv2.warpAffine(mask, sample.warp_mat, (w, h), flags=cv2.INTER_LINEAR)
        if sample.flipped:
            mask = mask[:, ::-1]
        return sample.replace(heatmap_mask=np.ascontiguousarray(mask > 0.5))


@dataclass
class FilterAnnotations:
    """Keep instances with box width and height > `min_wh` and at least `min_kpt_vis` visible keypoints
    (`by_box=True, by_kpt=True`, no area filter). An image left without instances is kept as a background
    sample (mmpose `keep_empty=False`, **as implemented**)."""

    min_wh: tuple[float, float] = (1.0, 1.0)
    min_kpt_vis: int = 1

    def __call__(self, sample: PoseSample, rng: Rng | None = None) -> PoseSample:
        if sample.num_instances == 0:
            return sample
        b = sample.bboxes
        keep = ((b[:, 2] - b[:, 0] > self.min_wh[0]) & (b[:, 3] - b[:, 1] > self.min_wh[1])
                & (sample.keypoints_visible.sum(axis=1) >= self.min_kpt_vis))
        return sample.select(keep)


# ----------------------------------------------------------------------------------------- pipelines
_VARIANTS = ("t", "s", "m", "l")
_DATASETS = ("coco", "body7", "crowdpose", "body7-crowdpose")


def _check_preset(variant: str, dataset: str) -> None:
    if variant not in _VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; expected one of {', '.join(_VARIANTS)}")
    if dataset not in _DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {', '.join(_DATASETS)}")


@dataclass
class Stage1Config:
    """`train_pipeline_stage1` (§10.1): Mosaic, perspective affine, MixUp, HSV, flip, filter."""

    input_size: int = 640
    pad_val: int = 114
    mosaic_prob: float = 1.0
    mosaic_center_range: tuple[float, float] = (0.5, 1.5)
    affine_shift: float = 0.1
    affine_scale: tuple[float, float] = (0.75, 1.0)
    affine_rotate: float = 10.0  # degrees
    affine_shear: float = 2.0  # degrees
    affine_prob: float = 1.0  # shift, scale, rotate and shear probabilities
    mixup_prob: float = 1.0  # 0 for RTMO-t
    mixup_ratio: tuple[float, float] = (0.8, 1.6)
    mixup_flip: float = 0.5
    hsv_gains: tuple[int, int, int] = (5, 30, 30)
    flip_prob: float = 0.5

    @classmethod
    def preset(cls, variant: str = "s", dataset: str = "coco") -> Stage1Config:
        """Official values (§1.5): RTMO-t is 416 px without MixUp; the CrowdPose-only configs use a
        stronger affine and MixUp range."""
        _check_preset(variant, dataset)
        cfg = cls(input_size=416 if variant == "t" else 640, mixup_prob=0.0 if variant == "t" else 1.0)
        if dataset == "crowdpose":
            cfg = dataclasses.replace(cfg, affine_shift=0.2, affine_rotate=30.0, affine_scale=(0.5, 1.5),
                                      mixup_ratio=(0.6, 1.6))
        return cfg


@dataclass
class Stage2Config:
    """The last-epochs pipeline (§10.2): affine fit (letterbox, or the class-default random affine that the
    m/l COCO/body7 configs leave active), HSV, flip, heatmap mask, filter."""

    input_size: int = 640
    pad_val: int = 114
    random_affine: bool = False  # False: all probabilities 0 (pure centred letterbox)
    affine_shift: float = 0.2
    affine_scale: tuple[float, float] = (0.75, 1.5)
    affine_rotate: float = 30.0
    hsv_gains: tuple[int, int, int] = (5, 30, 30)
    flip_prob: float = 0.5
    heatmap_mask: bool = True

    @classmethod
    def preset(cls, variant: str = "s", dataset: str = "coco") -> Stage2Config:
        _check_preset(variant, dataset)
        return cls(input_size=416 if variant == "t" else 640,
                   random_affine=variant in ("m", "l") and dataset in ("coco", "body7"))

    @classmethod
    def letterbox_only(cls, input_size: int = 640, heatmap_mask: bool = True) -> Stage2Config:
        """Every probability 0: the deterministic pipeline of the training fixtures."""
        return cls(input_size=input_size, hsv_gains=(0, 0, 0), flip_prob=0.0, heatmap_mask=heatmap_mask)


@dataclass
class BatchResizeConfig:
    """BatchSyncRandomResize (§10.3): per batch a new square size, a multiple of `divisor` in `size_range`."""

    size_range: tuple[int, int] = (480, 800)
    divisor: int = 32

    @classmethod
    def preset(cls, variant: str = "s") -> BatchResizeConfig:
        _check_preset(variant, "coco")
        return cls(size_range=(320, 640) if variant == "t" else (480, 800))


class Stage1Pipeline:
    """Per-sample stage-1 augmentation; `__call__(sample, rng, source)`."""

    def __init__(self, cfg: Stage1Config) -> None:
        s = cfg.input_size
        self.cfg = cfg
        self.mosaic = Mosaic((s, s), cfg.mosaic_center_range, cfg.pad_val, cfg.mosaic_prob)
        p = cfg.affine_prob
        self.affine = RandomAffine((s, s), "perspective", cfg.affine_shift, p, cfg.affine_scale, p,
                                   cfg.affine_rotate, p, cfg.affine_shear, p, "uniform", cfg.pad_val)
        self.mixup = MixUp((s, s), cfg.mixup_ratio, cfg.mixup_flip, cfg.pad_val, cfg.mixup_prob)
        self.hsv = HSVAug(*cfg.hsv_gains)
        self.flip = RandomFlip(cfg.flip_prob)
        self.filter = FilterAnnotations()

    def __call__(self, sample: PoseSample, rng: Rng, source: SampleSource) -> PoseSample:
        # With mosaic_prob < 1 a skipped Mosaic leaves the raw image, which the perspective warp then crops
        # around (S/2, S/2) as mmpose does.
        sample = self.mosaic(sample, rng, source)
        sample = self.affine(sample, rng)
        if self.cfg.mixup_prob > 0:
            sample = self.mixup(sample, rng, source)
        if any(self.cfg.hsv_gains):  # (0, 0, 0) = off, without the lossy BGR->HSV->BGR round trip
            sample = self.hsv(sample, rng)
        sample = self.flip(sample, rng)
        return self.filter(sample)


class Stage2Pipeline:
    """Per-sample stage-2 augmentation; `__call__(sample, rng, source=None)`."""

    def __init__(self, cfg: Stage2Config) -> None:
        s = cfg.input_size
        self.cfg = cfg
        p = 1.0 if cfg.random_affine else 0.0
        self.affine = RandomAffine((s, s), "affine", cfg.affine_shift, p, cfg.affine_scale, p,
                                   cfg.affine_rotate, p, 0.0, 0.0, "trunc_norm", cfg.pad_val)
        self.hsv = HSVAug(*cfg.hsv_gains)
        self.flip = RandomFlip(cfg.flip_prob)
        self.mask = HeatmapMask() if cfg.heatmap_mask else None
        self.filter = FilterAnnotations()

    def __call__(self, sample: PoseSample, rng: Rng, source: SampleSource | None = None) -> PoseSample:
        sample = self.affine(sample, rng)
        if any(self.cfg.hsv_gains):
            sample = self.hsv(sample, rng)
        sample = self.flip(sample, rng)
        if self.mask is not None:
            sample = self.mask(sample)
        return self.filter(sample)


# ----------------------------------------------------------------------------------------- batch level
def draw_batch_size(rng: Rng, cfg: BatchResizeConfig) -> tuple[int, int]:
    """The next batch's (w, h): `divisor * k`, k uniform in [ceil(lo/divisor), hi // divisor] (15..25 for
    480-800, 10..20 for 320-640). In DDP draw on rank 0 and broadcast."""
    _check_rng(rng)
    lo, hi = cfg.size_range
    k = int(rng.integers(math.ceil(lo / cfg.divisor), hi // cfg.divisor + 1))
    return (k * cfg.divisor, k * cfg.divisor)


def resize_batch(images: Any, targets: list, size: tuple[int, int]) -> tuple[Any, list]:
    """Bilinear resize (align_corners=False) of a (B,3,H,W) tensor batch to `size` (w, h); boxes and
    keypoints scaled by (sx, sy), areas by sx*sy, heatmap masks bilinearly (becoming float). A no-op when
    the size already matches. `targets` are `Targets` (or dicts with the same field names)."""
    import torch.nn.functional as F

    h, w = images.shape[-2:]
    if (w, h) == tuple(size):
        return images, targets
    sx, sy = size[0] / w, size[1] / h
    images = F.interpolate(images.float(), size=(size[1], size[0]), mode="bilinear", align_corners=False)
    out = []
    for t in targets:
        d = dict(t) if isinstance(t, dict) else {f.name: getattr(t, f.name) for f in dataclasses.fields(t)}
        scale = d["bboxes"].new_tensor([sx, sy])
        d["bboxes"] = (d["bboxes"].reshape(-1, 2, 2) * scale).reshape(d["bboxes"].shape)
        d["keypoints"] = d["keypoints"] * scale
        d["areas"] = d["areas"] * (sx * sy)
        m = d.get("heatmap_mask")
        if m is not None:
            d["heatmap_mask"] = F.interpolate(m.float()[None, None], size=(size[1], size[0]), mode="bilinear",
                                              align_corners=False)[0, 0]
        out.append(d if isinstance(t, dict) else type(t)(**d))
    return images, out
