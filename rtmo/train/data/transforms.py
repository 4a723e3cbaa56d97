"""Training augmentation of RTMO, as mmpose implements it, in OpenCV/numpy.

Stage 1 (most epochs):  Mosaic -> perspective BottomupRandomAffine -> YOLOX MixUp -> HSV -> flip -> filter.
Stage 2 (last epochs):  affine BottomupRandomAffine (letterbox, or random for m/l COCO/body7) -> HSV -> flip
                        -> heatmap mask -> filter.
Batch level:            `rtmo.train.data.batch` (collate, BatchSyncRandomResize).

Every transform is a small picklable object whose `__call__(sample, rng)` takes a `numpy.random.Generator`,
so a pipeline run is reproducible from its seed and DataLoader workers need no global random state. The
mix transforms also take a `source` (anything with `__len__` and `load(index, rng) -> PoseSample`) from
which they draw their extra images. Details that look accidental (the perspective window centred on
(S/2, S/2) of the 2S x 2S mosaic, `keep_empty=False` keeping images without instances, crowd RLEs not in
the heatmap mask, `x' = w - 1 - x` flips) are mmpose's and are kept on purpose: they shaped the released
models.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from ...ops.letterbox import get_warp_matrix
from ..recipes import AugmentRecipe
from .sample import (
    PoseSample,
    Rng,
    SampleSource,
    check_rng,
    clip_boxes,
    concat_samples,
    flip_boxes,
    flip_keypoints,
    hide_outside,
    perspective_matrix,
    transform_boxes,
    transform_points,
)


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
        rng = check_rng(rng)
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
        rng = check_rng(rng)
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
        rng = check_rng(rng)
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
            boxes = flip_boxes(boxes, aux_w)
            kpts, vis = flip_keypoints(kpts, vis, aux_w, sample.flip_indices)
        boxes[:, 0::2] -= dx
        boxes[:, 1::2] -= dy
        kpts[..., 0] -= dx
        kpts[..., 1] -= dy
        extra = aux.replace(bboxes=boxes, keypoints=kpts, keypoints_visible=vis, areas=aux.areas * r ** 2)
        out = concat_samples(image, [sample, extra], sample)
        clip_boxes(out.bboxes, w, h)
        hide_outside(out.keypoints, out.keypoints_visible, w, h)
        return out


# ----------------------------------------------------------------------------------------- photometric / flip
@dataclass
class HSVAug:
    """YOLOX HSV jitter: gains U(-1,1) * (hue, sat, val), each kept with a fair coin, truncated to int16;
    H wraps modulo 180 (OpenCV's 8-bit hue), S and V are clipped to [0, 255]."""

    hue_delta: int = 5
    saturation_delta: int = 30
    value_delta: int = 30

    def draw_gains(self, rng: Rng) -> np.ndarray:
        rng = check_rng(rng)
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
        rng = check_rng(rng)
        if not rng.random() < self.prob:
            return sample
        width = sample.image.shape[1]
        kpts, vis = flip_keypoints(sample.keypoints, sample.keypoints_visible, width, sample.flip_indices)
        return sample.replace(image=np.ascontiguousarray(sample.image[:, ::-1]),
                              bboxes=flip_boxes(sample.bboxes, width), keypoints=kpts, keypoints_visible=vis,
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
class Stage1Pipeline:
    """The augmentation of most epochs, as a recipe's `[augment]` table sets it: Mosaic, perspective
    affine, MixUp, HSV, flip, filter on `input_size` x `input_size`; `__call__(sample, rng, source)`."""

    def __init__(self, augment: AugmentRecipe, input_size: int) -> None:
        a, s = augment, int(input_size)
        self.augment, self.input_size = a, s
        self.mosaic = Mosaic((s, s), a.mosaic_center_range, a.pad_val, a.mosaic_prob)
        # every affine component always drawn (probability 1), as in the official stage-1 pipelines
        self.affine = RandomAffine((s, s), "perspective", a.affine_shift, 1.0, a.affine_scale, 1.0,
                                   a.affine_rotate, 1.0, a.affine_shear, 1.0, "uniform", a.pad_val)
        self.mixup = MixUp((s, s), a.mixup_ratio, a.mixup_flip, a.pad_val, a.mixup_prob)
        self.hsv = HSVAug(*a.hsv_gains)
        self.flip = RandomFlip(a.flip_prob)
        self.filter = FilterAnnotations()

    def __call__(self, sample: PoseSample, rng: Rng, source: SampleSource) -> PoseSample:
        # With mosaic_prob < 1 a skipped Mosaic leaves the raw image, which the perspective warp then crops
        # around (S/2, S/2) as mmpose does.
        sample = self.mosaic(sample, rng, source)
        sample = self.affine(sample, rng)
        if self.augment.mixup_prob > 0:
            sample = self.mixup(sample, rng, source)
        if any(self.augment.hsv_gains):  # (0, 0, 0) = off, without the lossy BGR->HSV->BGR round trip
            sample = self.hsv(sample, rng)
        sample = self.flip(sample, rng)
        return self.filter(sample)


class Stage2Pipeline:
    """The augmentation of the last epochs: affine fit onto `input_size` x `input_size` (the centred
    letterbox when `augment.stage2_affine` is "none"; "default" keeps the random affine that the m/l
    COCO/body7 configs leave active), HSV, flip, heatmap mask, filter;
    `__call__(sample, rng, source=None)`."""

    def __init__(self, augment: AugmentRecipe, input_size: int) -> None:
        a, s = augment, int(input_size)
        self.augment, self.input_size = a, s
        p = 1.0 if a.stage2_affine == "default" else 0.0
        self.affine = RandomAffine((s, s), "affine", a.stage2_affine_shift, p, a.stage2_affine_scale, p,
                                   a.stage2_affine_rotate, p, 0.0, 0.0, "trunc_norm", a.pad_val)
        self.hsv = HSVAug(*a.hsv_gains)
        self.flip = RandomFlip(a.flip_prob)
        self.mask = HeatmapMask()
        self.filter = FilterAnnotations()

    def __call__(self, sample: PoseSample, rng: Rng, source: SampleSource | None = None) -> PoseSample:
        sample = self.affine(sample, rng)
        if any(self.augment.hsv_gains):
            sample = self.hsv(sample, rng)
        sample = self.flip(sample, rng)
        sample = self.mask(sample)
        return self.filter(sample)
