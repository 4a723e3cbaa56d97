"""What inference returns: per-image results with per-person detections and array views.

Shapes (n people, K keypoints; coordinates in image pixels):

=================================  ==========  ===================================================
`PoseResult` (arrays, all people)  shape       `Detection` (one person, `result[i]`)
=================================  ==========  ===================================================
`result.boxes`                     (n, 4)      `det.bbox` (4,) tuple x1, y1, x2, y2
`result.scores`                    (n,)        `det.conf` float
`result.class_ids`                 (n,)        `det.cls_id` int, `det.label` str
`result.keypoints`                 (n, K, 2)   `det.keypoints[:, :2]` -- x, y
`result.keypoint_scores`           (n, K)      `det.keypoints[:, 2]` -- score
`result.keypoints_with_scores`     (n, K, 3)   `det.keypoints` (K, 3) -- x, y, score
`result.track_ids`                 (n,)|None   `det.track_id` int | None
=================================  ==========  ===================================================
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..config import KeypointInfo


@dataclass
class Detection:
    """One person. Coordinates are image pixels."""

    bbox: tuple[float, float, float, float]  # x1, y1, x2, y2
    conf: float
    cls_id: int
    label: str
    keypoints: np.ndarray  # (K, 3): x, y, score (sigmoid of the visibility logit)
    track_id: int | None = None

    def to_dict(self) -> dict:
        d = {"bbox": [float(v) for v in self.bbox], "conf": float(self.conf), "cls_id": int(self.cls_id),
             "label": self.label, "keypoints": self.keypoints.astype(float).round(3).tolist()}
        if self.track_id is not None:
            d["track_id"] = int(self.track_id)
        return d


@dataclass
class PoseResult:
    """All people found in one image; the arrays are the vectorised form of the detections.

    `len(result)` people; `for det in result` and `result[i]` give `Detection`s, `result[mask]` /
    `result[a:b]` a `PoseResult` of those people. `result.image` is the decoded BGR source when `infer`
    loaded it (None otherwise: `plot(image)` then takes it, or reads `path`).
    """

    boxes: np.ndarray  # (n, 4) float32 xyxy
    scores: np.ndarray  # (n,) float32
    class_ids: np.ndarray  # (n,) int64
    keypoints: np.ndarray  # (n, K, 2) float32
    keypoint_scores: np.ndarray  # (n, K) float32
    image_shape: tuple[int, int]  # (h, w)
    keypoint_info: KeypointInfo
    class_names: tuple[str, ...] = ("person",)
    path: str | None = None
    track_ids: np.ndarray | None = None  # (n,) int64 when tracking
    frame_index: int | None = None
    timestamp: float | None = None  # seconds, for video frames
    extra: dict = field(default_factory=dict)
    image: np.ndarray | None = field(default=None, repr=False, compare=False)  # (h, w, 3) BGR uint8

    def __len__(self) -> int:
        return len(self.scores)

    def __iter__(self) -> Iterator[Detection]:
        return iter(self.detections)

    def __getitem__(self, index: int | slice | np.ndarray | list) -> Detection | PoseResult:
        if isinstance(index, (int, np.integer)):
            n = len(self)
            if not -n <= index < n:
                raise IndexError(f"person {index} of a result with {n}")
            return self._detection(int(index) % n)
        return self.select(np.arange(len(self))[index] if isinstance(index, slice) else index)

    @property
    def keypoints_with_scores(self) -> np.ndarray:
        """(n, K, 3): x, y, score."""
        return np.concatenate([self.keypoints, self.keypoint_scores[..., None]], axis=-1)

    def _detection(self, i: int) -> Detection:
        return Detection(
            bbox=tuple(float(v) for v in self.boxes[i]), conf=float(self.scores[i]),
            cls_id=int(self.class_ids[i]), label=self.class_names[int(self.class_ids[i])],
            keypoints=np.concatenate([self.keypoints[i], self.keypoint_scores[i][:, None]], axis=-1),
            track_id=None if self.track_ids is None else int(self.track_ids[i]),
        )

    @property
    def detections(self) -> list[Detection]:
        return [self._detection(i) for i in range(len(self))]

    def select(self, mask: np.ndarray) -> PoseResult:
        """A copy keeping only the detections where `mask` is true (or at the given indices)."""
        keep = np.asarray(mask)
        return PoseResult(
            self.boxes[keep], self.scores[keep], self.class_ids[keep], self.keypoints[keep],
            self.keypoint_scores[keep], self.image_shape, self.keypoint_info, self.class_names, self.path,
            None if self.track_ids is None else self.track_ids[keep], self.frame_index, self.timestamp,
            dict(self.extra), self.image,
        )

    # ------------------------------------------------------------------ serialising
    def to_dict(self) -> dict:
        """JSON-ready: image_shape [h, w], detections (bbox, conf, cls_id, label, keypoints [[x, y, score]]
        rounded to 3 decimals, track_id when tracking), path / frame_index / timestamp when known."""
        d = {"image_shape": list(self.image_shape), "detections": [x.to_dict() for x in self.detections]}
        if self.path is not None:
            d["path"] = self.path
        if self.frame_index is not None:
            d["frame_index"] = self.frame_index
        if self.timestamp is not None:
            d["timestamp"] = self.timestamp
        return d

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def to_coco(self, image_id: int, category_id: int = 1) -> list[dict]:
        """COCO keypoint-results records (`COCO.loadRes` / mmpose CocoMetric format, score_mode='bbox'):
        per person image_id, category_id, keypoints as flat [x, y, score] * K, score, bbox [x, y, w, h].
        The one definition of the format: `rtmo val`, `rtmo predict --save-json` and training use it."""
        n, k = self.keypoints.shape[:2] if len(self) else (0, 0)
        kps = self.keypoints_with_scores.reshape(n, k * 3)
        records = []
        for i in range(n):
            x1, y1, x2, y2 = (float(v) for v in self.boxes[i])
            records.append({
                "image_id": int(image_id),
                "category_id": int(category_id),
                "keypoints": [float(v) for v in kps[i]],
                "score": float(self.scores[i]),
                # mmpose writes the box too; COCO's loadRes then takes the detection area from it
                "bbox": [x1, y1, x2 - x1, y2 - y1],
            })
        return records

    # ------------------------------------------------------------------ drawing
    def plot(self, image: np.ndarray | None = None, threshold: float = 0.3, boxes: bool = True,
             thickness: int | None = None) -> np.ndarray:
        """The source image with the poses drawn (a new BGR uint8 (h, w, 3) array).

        `image`: the picture to draw on (default: `self.image`, the frame kept by streaming with
        `keep_images`, or the file at `self.path`). People and keypoints scoring below `threshold` (0.3,
        what mmpose's inferencer draws) are left out of the drawing, not out of the result."""
        from .draw import draw_result  # drawing needs OpenCV; results themselves are numpy only

        return draw_result(self._source_image(image), self, threshold, boxes=boxes, thickness=thickness)

    def save(self, path: str | os.PathLike, image: np.ndarray | None = None, threshold: float = 0.3,
             boxes: bool = True, thickness: int | None = None) -> Path:
        """Write `plot(...)` to `path` (format from the suffix: .jpg, .png, ...), atomically: a temporary
        file in the same folder renamed into place, so a crash never leaves half a picture."""
        import cv2

        p = Path(path)
        drawn = self.plot(image, threshold, boxes, thickness)
        try:
            ok, buf = cv2.imencode(p.suffix or ".jpg", drawn)
        except cv2.error:  # OpenCV raises for an unknown extension
            ok = False
        if not ok:
            raise ValueError(f"{p}: cannot encode an image with suffix {p.suffix!r} (use .jpg or .png)")
        from ..utils.fileio import atomic_write_bytes

        return atomic_write_bytes(p, buf.tobytes())

    def _source_image(self, image: np.ndarray | None) -> np.ndarray:
        for candidate in (image, self.image, self.extra.get("image")):
            if candidate is not None:
                return candidate
        if self.path is not None:
            from .image import read_image

            return read_image(self.path)
        raise ValueError("this result holds no image and has no path: pass the image, result.plot(image)")

    def __repr__(self) -> str:
        return (f"PoseResult({len(self)} people, image {self.image_shape[1]}x{self.image_shape[0]}"
                + (f", path={self.path!r}" if self.path else "") + ")")
