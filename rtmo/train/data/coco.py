"""COCO-format keypoint files for training, and mmpose's MPII list format read as one.

`CocoPoseDataset` parses a COCO keypoint JSON (any number of keypoints) into one record per image, as
mmpose's bottom-up `CocoDataset` does: every annotation with a box and keypoints is an instance (crowd and
unlabelled ones too: `FilterAnnotations` removes them after augmentation, and their polygons feed the
heatmap mask). Malformed annotations are skipped and reported with their id, never fatal; images are
decoded by the inference decoder, and unreadable ones are skipped up to a cap.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ...config import COCO_KEYPOINTS, CROWDPOSE_KEYPOINTS, KeypointInfo
from ...infer.image import ImageError, read_image
from .keypoints import KeypointConverter, keypoint_info_from_category
from .sample import PoseSample, Rng

# Training skips unreadable images (with a warning naming each) until more than this fraction of a dataset's
# images are unreadable; then it stops: the data is broken, not a file or two.
MAX_UNREADABLE_FRACTION = 0.01
# MPII's 16 joints, in the order of mmpose's list-format annotation files (`mpii_train.json`)
MPII_KEYPOINT_NAMES = ("right_ankle", "right_knee", "right_hip", "left_hip", "left_knee", "left_ankle",
                       "pelvis", "thorax", "upper_neck", "head_top", "right_wrist", "right_elbow",
                       "right_shoulder", "left_shoulder", "left_elbow", "left_wrist")
# mmpose's MpiiDataset: `scale` is in units of 200 px; the centre moves down by 15 px per 200 px of scale
MPII_PIXEL_STD = 200.0
MPII_CENTER_SHIFT = 15.0


class UnreadableImageError(FileNotFoundError):
    """Too many training images cannot be read; the message names the annotation file and examples."""


# ----------------------------------------------------------------------------------------- dataset
@dataclass
class ImageRecord:
    """Parsed annotations of one image (instances in original-image pixels, see `PoseSample`)."""

    img_id: int
    path: str
    width: int
    height: int
    bboxes: np.ndarray
    keypoints: np.ndarray
    keypoints_visible: np.ndarray
    areas: np.ndarray
    ann_ids: np.ndarray
    invalid_segs: list = field(default_factory=list)


class CocoPoseDataset:
    """A COCO-format keypoint dataset, one record per image that has at least one annotation with a box and
    keypoints (mmpose's bottom-up reading of the file).

    Args:
        ann_file: COCO keypoint JSON.
        img_dir: folder the images' `file_name`s are relative to.
        sigmas, flip_indices: override the keypoint metadata (required sigmas for a custom set).
        category_id: the keypoint category to read (default: the first category that lists keypoints).
        converter: maps the file's keypoints onto another set (body7); metadata then comes from `target`.
        target: KeypointInfo of the converted set (default COCO-17 / CrowdPose-14 by the converter's size).

    Per instance (mmpose `parse_data_info`): box xyxy clipped to [0, W-1] x [0, H-1]; visibility min(1, v);
    area = `area` or max(0.53 * box area, 1). Instances that are crowd, have no labelled keypoint or an
    empty box stay instances (removed by `FilterAnnotations` after augmentation) and their polygons are
    collected in `invalid_segs`. Skipped with their id in `self.malformed` (and one warning): missing or
    non-numeric `bbox`/`keypoints`, a keypoint count that does not match the category, negative or zero box
    size, NaN/inf values, an unknown `image_id`.
    """

    def __init__(self, ann_file: str | Path, img_dir: str | Path, sigmas: Sequence[float] | None = None,
                 flip_indices: Sequence[int] | None = None, category_id: int | None = None,
                 converter: KeypointConverter | None = None, target: KeypointInfo | None = None,
                 one_based: bool = False, check_images: bool = False) -> None:
        self.ann_file, self.img_dir = Path(ann_file), Path(img_dir)
        self.one_based = one_based  # JHMDB: MATLAB pixel indices, 1 is subtracted (mmpose JhmdbDataset)
        self.unreadable: dict[str, str] = {}  # path -> why, images found unreadable by this process
        if not self.ann_file.is_file():
            raise FileNotFoundError(f"annotation file not found: {self.ann_file}")
        try:
            with open(self.ann_file, encoding="utf-8") as f:
                data = json.load(f)
        except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError, over-long integers
            raise ValueError(f"{self.ann_file}: not valid JSON ({' '.join(str(e).split())[:200]})") from None
        except RecursionError:
            raise ValueError(f"{self.ann_file}: JSON nested too deeply to be an annotation file") from None
        if isinstance(data, list) and data and isinstance(data[0], dict) and "joints" in data[0]:
            data = mpii_to_coco(data, self.ann_file)  # mmpose's MPII list format
        if not isinstance(data, dict) or not isinstance(data.get("images"), list) \
                or not isinstance(data.get("annotations"), list):
            raise ValueError(f"{self.ann_file}: not a COCO file (needs 'images' and 'annotations' lists)")
        cats = [c for c in data.get("categories") or [] if isinstance(c, dict) and c.get("keypoints")]
        if category_id is not None:
            cats = [c for c in cats if c.get("id") == category_id]
        if not cats:
            raise ValueError(f"{self.ann_file}: no category with keypoint names"
                             + (f" and id {category_id}" if category_id is not None else ""))
        cat = cats[0]
        self.category_id = cat.get("id")
        with warnings.catch_warnings():
            if converter is not None:  # the source set's sigmas are never used: no warning about them
                warnings.simplefilter("ignore")
            self.source_info = keypoint_info_from_category(cat, None if converter else sigmas,
                                                           None if converter else flip_indices,
                                                           name=self.ann_file.stem)
        self.converter = converter
        if converter is None:
            self.keypoint_info = self.source_info
        else:
            if target is None:
                target = {17: COCO_KEYPOINTS, 14: CROWDPOSE_KEYPOINTS}.get(converter.num_keypoints)
            if target is None or target.num_keypoints != converter.num_keypoints:
                raise ValueError(f"a converter to {converter.num_keypoints} keypoints needs a matching "
                                 f"`target` KeypointInfo")
            self.keypoint_info = target
        self.malformed: list[tuple[Any, str]] = []
        self.num_valid = 0  # labelled, non-crowd persons (the ones that train anything)
        self.records = self._parse(data)
        if self.malformed:
            shown = ", ".join(f"{i} ({why})" for i, why in self.malformed[:10])
            more = f" and {len(self.malformed) - 10} more" if len(self.malformed) > 10 else ""
            warnings.warn(f"{self.ann_file.name}: skipped {len(self.malformed)} malformed annotation(s): "
                          f"{shown}{more} (full list in `.malformed`)", stacklevel=2)
        if self.num_valid == 0:
            why = f"; {len(self.malformed)} malformed, e.g. {self.malformed[0][1]}" if self.malformed else ""
            raise ValueError(f"{self.ann_file}: no usable person annotation (a box and at least one labelled "
                             f"keypoint, not crowd) among {len(data['annotations'])} annotation(s){why}")
        if check_images:
            self.check_files()

    # -------------------------------------------------------------- parsing
    def _parse(self, data: dict) -> list[ImageRecord]:
        k = self.source_info.num_keypoints
        images: dict[Any, dict] = {}
        for img in data["images"]:
            if isinstance(img, dict) and "id" in img and "file_name" in img:
                images[img["id"]] = img
        per_image: dict[Any, list[dict]] = {}
        for ann in data["annotations"]:
            if not isinstance(ann, dict):
                self.malformed.append((None, "annotation is not an object"))
                continue
            if self.category_id is not None and ann.get("category_id", self.category_id) != self.category_id:
                continue
            if "bbox" not in ann or "keypoints" not in ann:  # mmpose drops these silently
                self.malformed.append((ann.get("id"), "missing 'bbox' or 'keypoints'"))
                continue
            if ann.get("image_id") not in images:
                self.malformed.append((ann.get("id"), f"unknown image_id {ann.get('image_id')!r}"))
                continue
            per_image.setdefault(ann["image_id"], []).append(ann)

        records = []
        for img_id, img in images.items():  # image order of the file, as pycocotools' getImgIds
            anns = per_image.get(img_id)
            if not anns:
                continue
            try:
                w, h = int(img["width"]), int(img["height"])  # 0 x 0: unknown (MPII), boxes not clipped
            except (KeyError, TypeError, ValueError):
                why = f"image {img_id} has no valid width/height"
                self.malformed.extend((a.get("id"), why) for a in anns)
                continue
            boxes, kpts, vis, areas, ids, invalid = [], [], [], [], [], []
            for ann in anns:
                inst = self._parse_instance(ann, w, h, k)
                if not isinstance(inst, tuple):
                    if inst is not None:  # a person without a usable box: only its segmentation is kept
                        invalid.append(inst)
                    continue
                box, kp, v, area, valid = inst
                self.num_valid += bool(valid)
                if not valid:
                    if "segmentation" in ann and ann["segmentation"] is not None:
                        invalid.append(ann["segmentation"])
                boxes.append(box)
                kpts.append(kp)
                vis.append(v)
                areas.append(area)
                ids.append(ann.get("id", -1))
            n = len(boxes)
            kp_arr = np.array(kpts, dtype=np.float32).reshape(n, k, 2)
            v_arr = np.array(vis, dtype=np.float32).reshape(n, k)
            records.append(ImageRecord(
                img_id=img_id, path=str(self.img_dir / img["file_name"]), width=w, height=h,
                bboxes=np.array(boxes, dtype=np.float32).reshape(n, 4), keypoints=kp_arr,
                keypoints_visible=v_arr, areas=np.array(areas, dtype=np.float32).reshape(n),
                ann_ids=np.array(ids, dtype=np.int64).reshape(n), invalid_segs=invalid))
        return records

    def _parse_instance(self, ann: dict, img_w: int, img_h: int, k: int):
        aid = ann.get("id")
        try:
            bbox = np.asarray(ann["bbox"], dtype=np.float64)
            raw = np.asarray(ann["keypoints"], dtype=np.float64)
        except (TypeError, ValueError):
            self.malformed.append((aid, "non-numeric 'bbox' or 'keypoints'"))
            return None
        if bbox.shape != (4,):
            self.malformed.append((aid, f"bbox has {bbox.size} values, expected 4"))
            return None
        if raw.ndim != 1 or raw.size != 3 * k:
            self.malformed.append((aid, f"{raw.size} keypoint values, expected {3 * k} ({k} keypoints)"))
            return None
        if not (np.isfinite(bbox).all() and np.isfinite(raw).all()):
            self.malformed.append((aid, "NaN or infinite value"))
            return None
        if self.one_based:  # mmpose JhmdbDataset: MATLAB indices, the box corner and keypoints move by -1
            bbox[:2] -= 1
            raw = raw.reshape(k, 3)
            raw[:, :2] -= 1
            raw = raw.reshape(-1)
        x, y, bw, bh = bbox
        if bw <= 0 or bh <= 0:
            self.malformed.append((aid, f"box size {bw:g} x {bh:g} is not positive"))
            # mmpose keeps such a person as an unlabelled instance: its polygons still mask the heatmap.
            return ann.get("segmentation")
        area = ann.get("area")
        if area is not None and (not isinstance(area, (int, float)) or not math.isfinite(area)):
            self.malformed.append((aid, f"invalid area {area!r}"))
            return None
        if img_w > 0 and img_h > 0:
            x1, y1 = np.clip(x, 0, img_w - 1), np.clip(y, 0, img_h - 1)
            x2, y2 = np.clip(x + bw, 0, img_w - 1), np.clip(y + bh, 0, img_h - 1)
        else:  # size unknown (MPII's list format): mmpose does not clip these boxes either
            x1, y1, x2, y2 = x, y, x + bw, y + bh
        box = np.array([x1, y1, x2, y2], dtype=np.float32)
        kp = raw.astype(np.float32).reshape(k, 3)
        vis = np.minimum(1, kp[:, 2])
        if area is None:  # some body7 sources have no segmentation area
            area = max((x2 - x1) * (y2 - y1) * 0.53, 1.0)
        num_kpts = ann.get("num_keypoints", int(np.count_nonzero(kp[:, :2].max(axis=1))))
        w32, h32 = box[2:] - box[:2]
        # mmpose `_is_valid_instance`: these persons are unlabelled; their polygons go to the heatmap mask.
        valid = not (ann.get("iscrowd", 0) or num_kpts == 0 or w32 <= 0 or h32 <= 0 or kp[:, :2].max() <= 0)
        return box, kp[:, :2], vis, float(area), valid

    # -------------------------------------------------------------- access
    def __len__(self) -> int:
        return len(self.records)

    @property
    def num_instances(self) -> int:
        return int(sum(r.bboxes.shape[0] for r in self.records))

    def check_files(self) -> None:
        """Before the first step: every image file must exist and be non-empty (a stat per file, cheap
        even for COCO). Missing ones are dropped with one warning naming them, up to
        `MAX_UNREADABLE_FRACTION` of the set; beyond it the data is broken and training does not start.
        (Decoding is checked when an image is first loaded, with the same decoder as inference.)"""
        missing = []
        for r in self.records:
            try:
                ok = os.stat(r.path).st_size > 0
            except OSError:
                ok = False
            if not ok:
                missing.append(r.path)
        if not missing:
            return
        self._check_cap(len(missing), f"{missing[0]}: no such file or empty")
        warnings.warn(f"{self.ann_file.name}: {len(missing)} of {len(self.records)} images are missing or "
                      f"empty and are left out: {', '.join(missing[:10])}"
                      + (f" and {len(missing) - 10} more" if len(missing) > 10 else ""), stacklevel=3)
        gone = set(missing)
        self.records = [r for r in self.records if r.path not in gone]

    def _check_cap(self, bad: int, example: str) -> None:
        n = len(self.records)
        if bad > MAX_UNREADABLE_FRACTION * n:
            raise UnreadableImageError(
                f"{self.ann_file}: {bad} of {n} training images cannot be read (more than "
                f"{MAX_UNREADABLE_FRACTION:.0%}; is the image folder {self.img_dir} right?), e.g. {example}")

    def load(self, index: int, rng: Rng | None = None) -> PoseSample:
        """Image `index` (BGR uint8) with its instances, converted to the target keypoint set.

        Decoded by `rtmo.infer.image.read_image`, as inference does (so both agree on what is unreadable).
        An unreadable image is reported once (a warning naming it) and replaced by the next readable one;
        more than `MAX_UNREADABLE_FRACTION` unreadable images raise `UnreadableImageError`."""
        n = len(self.records)
        for step in range(n):
            r = self.records[(index + step) % n]
            if r.path in self.unreadable:
                continue
            try:
                image = read_image(r.path)
                break
            except ImageError as e:
                self.unreadable[r.path] = str(e)
                self._check_cap(len(self.unreadable), str(e))
                warnings.warn(f"skipping an unreadable training image (image id {r.img_id}): {e}",
                              stacklevel=2)
        else:
            raise UnreadableImageError(f"{self.ann_file}: none of its {n} images can be read")
        kpts, vis = r.keypoints.copy(), r.keypoints_visible.copy()
        if self.converter is not None:
            kpts, vis = self.converter(kpts, vis)
        return PoseSample(image=image, bboxes=r.bboxes.copy(), keypoints=kpts, keypoints_visible=vis,
                          areas=r.areas.copy(), ann_ids=r.ann_ids.copy(),
                          flip_indices=self.keypoint_info.flip_indices, img_id=r.img_id, img_path=r.path,
                          invalid_segs=list(r.invalid_segs), orig_hw=image.shape[:2])


def mpii_to_coco(anns: list, where: Path | str = "MPII file") -> dict:
    """mmpose's MPII list format (one record per person: image, center, scale, joints, joints_vis) as a
    COCO-style dict, as `MpiiDataset` reads it: box = centre +- 100 * scale px after moving the centre down
    by 15 px per 200 px of scale and subtracting 1 (MATLAB indices; the joints are kept as they are);
    area = 0.53 x box area (at least 1); people of one image grouped into one record (bottom-up)."""
    images: dict[str, dict] = {}
    out = []
    for i, a in enumerate(anns):
        try:
            name = str(a["image"])
            center = np.asarray(a["center"], dtype=np.float64).reshape(2)
            scale = float(a["scale"]) * MPII_PIXEL_STD
            joints = np.asarray(a["joints"], dtype=np.float64).reshape(-1, 2)
            vis = np.asarray(a["joints_vis"], dtype=np.float64).reshape(-1)
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{where}: record {i} is not an MPII annotation (image, center, scale, joints, "
                             f"joints_vis): {e}") from None
        if len(joints) != len(MPII_KEYPOINT_NAMES) or len(vis) != len(joints):
            raise ValueError(f"{where}: record {i} has {len(joints)} joints / {len(vis)} visibilities, "
                             f"expected {len(MPII_KEYPOINT_NAMES)}")
        if center[0] != -1:
            center[1] += MPII_CENTER_SHIFT / MPII_PIXEL_STD * scale
        center -= 1
        x1, y1 = center - scale / 2
        img = images.setdefault(name, {"id": len(images) + 1, "file_name": name, "width": 0, "height": 0})
        kp = np.concatenate([joints, vis[:, None]], axis=1)
        out.append({"id": i + 1, "image_id": img["id"], "category_id": 1, "bbox": [x1, y1, scale, scale],
                    "area": max(scale * scale * 0.53, 1.0), "keypoints": kp.ravel().tolist(), "iscrowd": 0,
                    "num_keypoints": int(np.count_nonzero(vis))})
    return {"images": list(images.values()), "annotations": out,
            "categories": [{"id": 1, "name": "person", "keypoints": list(MPII_KEYPOINT_NAMES)}]}

