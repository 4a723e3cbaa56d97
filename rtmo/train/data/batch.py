"""The batch level: the collate function that turns augmented samples into `(images, targets)`, and
mmpose's BatchSyncRandomResize (a new square size drawn per batch, the batch and its targets resized)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..losses import Targets
from ..recipes import AugmentRecipe
from .sample import PoseSample


def collate(samples: Sequence[PoseSample]) -> tuple[Any, list]:
    """Stack augmented samples into `(images, targets)`: images (B,3,S,S) float32 BGR 0..255 (not
    normalised: the network takes raw pixel values); targets one `rtmo.train.losses.Targets` per image
    (labels 0; the heatmap mask as a float (S,S) tensor or None)."""
    if not samples:
        raise ValueError("collate: empty batch")
    sizes = {s.image.shape for s in samples}
    if len(sizes) != 1:
        raise ValueError(f"collate: samples have different image shapes {sorted(sizes)}")
    images = torch.from_numpy(np.stack([s.image.transpose(2, 0, 1) for s in samples])).float()
    targets = []
    for s in samples:
        mask = None if s.heatmap_mask is None else torch.from_numpy(s.heatmap_mask.astype(np.float32))
        targets.append(Targets(
            bboxes=torch.from_numpy(np.ascontiguousarray(s.bboxes, dtype=np.float32)),
            keypoints=torch.from_numpy(np.ascontiguousarray(s.keypoints, dtype=np.float32)),
            keypoints_visible=torch.from_numpy(np.ascontiguousarray(s.keypoints_visible, dtype=np.float32)),
            areas=torch.from_numpy(np.ascontiguousarray(s.areas, dtype=np.float32)),
            labels=torch.zeros(s.num_instances, dtype=torch.long),
            heatmap_mask=mask))
    return images, targets


def to_device(obj: Any, device: torch.device) -> Any:
    """A batch's tensors moved to `device`, through dataclasses (`Targets.to`), dicts, lists and tuples."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if hasattr(obj, "to") and not isinstance(obj, nn.Module) and dataclasses.is_dataclass(obj):
        return obj.to(device)
    if dataclasses.is_dataclass(obj):
        return dataclasses.replace(obj, **{k: to_device(v, device) for k, v in vars(obj).items()})
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(v, device) for v in obj)
    return obj


# ----------------------------------------------------------------------------------------- batch resize
class RandInt(Protocol):
    """A source of uniform integers: `random.Random`, or the `random` module itself (as the trainer uses)."""

    def randint(self, a: int, b: int) -> int: ...


def draw_batch_size(rng: RandInt, augment: AugmentRecipe) -> tuple[int, int]:
    """The next batch's square (w, h): `size_divisor * k`, k uniform in [ceil(lo / divisor), hi // divisor]
    of `augment.multiscale_range` (15..25 for 480-800, 10..20 for 320-640). The trainer draws from
    Python's `random` (seeded per epoch, saved in checkpoints) on rank 0 and broadcasts the size."""
    lo, hi = augment.multiscale_range
    d = augment.size_divisor
    k = rng.randint(math.ceil(lo / d), hi // d)
    return (k * d, k * d)


# fields of `Targets` (or of a per-image dict) and how a resize by (sx, sy) changes them
_XY = ("bboxes", "keypoints")  # (x, y) pairs in the last dimension
_AREA = ("areas",)
_MASK = ("heatmap_mask",)


def resize_batch(images: torch.Tensor, targets: Sequence[Any], size: tuple[int, int]
                 ) -> tuple[torch.Tensor, Any]:
    """mmpose's BatchSyncRandomResize: bilinear resize (align_corners=False) of a (B,3,H,W) batch to `size`
    (w, h); in each image's targets (a `Targets`, another dataclass or a dict) boxes and keypoints are
    scaled by (sx, sy), areas by sx*sy and the heatmap mask bilinearly (becoming float); other fields are
    kept. A no-op, returning the same objects, when the size already matches."""
    h, w = images.shape[-2:]
    if (w, h) == tuple(size):
        return images, targets
    sx, sy = size[0] / w, size[1] / h
    hw = (size[1], size[0])
    images = F.interpolate(images.float(), size=hw, mode="bilinear", align_corners=False)
    return images, type(targets)(_scale_target(t, sx, sy, hw) for t in targets)


def _scale_target(t: Any, sx: float, sy: float, hw: tuple[int, int]) -> Any:
    if dataclasses.is_dataclass(t):
        fields = {f.name: getattr(t, f.name) for f in dataclasses.fields(t)}
        return dataclasses.replace(t, **{k: _scale_field(k, v, sx, sy, hw) for k, v in fields.items()})
    if isinstance(t, dict):
        return {k: _scale_field(k, v, sx, sy, hw) for k, v in t.items()}
    raise TypeError(f"cannot resize targets of type {type(t).__name__} (expected Targets or a dict)")


def _scale_field(name: str, v: Any, sx: float, sy: float, hw: tuple[int, int]) -> Any:
    if not isinstance(v, torch.Tensor):
        return v
    if name in _XY:
        scale = v.new_tensor([sx, sy])
        return (v.reshape(*v.shape[:-1], -1, 2) * scale).reshape(v.shape)
    if name in _AREA:
        return v * (sx * sy)
    if name in _MASK:
        return F.interpolate(v.float()[None, None], size=hw, mode="bilinear", align_corners=False)[0, 0]
    return v
