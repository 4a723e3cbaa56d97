"""What inference returns: per-image results with per-person detections and array views."""

from __future__ import annotations

from dataclasses import dataclass, field

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
    """All people found in one image. Arrays are the vectorised form of `detections`."""

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

    def __len__(self) -> int:
        return len(self.scores)

    @property
    def keypoints_with_scores(self) -> np.ndarray:
        """(n, K, 3): x, y, score."""
        return np.concatenate([self.keypoints, self.keypoint_scores[..., None]], axis=-1)

    @property
    def detections(self) -> list[Detection]:
        kps = self.keypoints_with_scores
        return [
            Detection(
                bbox=tuple(float(v) for v in self.boxes[i]), conf=float(self.scores[i]),
                cls_id=int(self.class_ids[i]), label=self.class_names[int(self.class_ids[i])],
                keypoints=kps[i],
                track_id=None if self.track_ids is None else int(self.track_ids[i]),
            )
            for i in range(len(self))
        ]

    def select(self, mask: np.ndarray) -> PoseResult:
        """A copy keeping only the detections where `mask` is true (or at the given indices)."""
        keep = np.asarray(mask)
        return PoseResult(
            self.boxes[keep], self.scores[keep], self.class_ids[keep], self.keypoints[keep],
            self.keypoint_scores[keep], self.image_shape, self.keypoint_info, self.class_names, self.path,
            None if self.track_ids is None else self.track_ids[keep], self.frame_index, self.timestamp,
            dict(self.extra),
        )

    def to_dict(self) -> dict:
        d = {"image_shape": list(self.image_shape), "detections": [x.to_dict() for x in self.detections]}
        if self.path is not None:
            d["path"] = self.path
        if self.frame_index is not None:
            d["frame_index"] = self.frame_index
        if self.timestamp is not None:
            d["timestamp"] = self.timestamp
        return d

    def __repr__(self) -> str:
        return (f"PoseResult({len(self)} people, image {self.image_shape[1]}x{self.image_shape[0]}"
                + (f", path={self.path!r}" if self.path else "") + ")")
