"""Draw poses: skeleton lines and keypoints coloured by body side, boxes with score and track id.

One implementation: `draw_skeleton` draws plain arrays (rtmlib-style); `draw_result` and
`PoseResult.plot` call it with a result's arrays.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import cv2
import numpy as np

from ..config import KeypointInfo, keypoint_info_for

if TYPE_CHECKING:  # results import this module to plot; the type is only a hint here
    from .results import PoseResult

# mmpose's COCO palette (dataset meta configs/_base_/datasets/coco.py, where it is written in RGB), here in
# BGR: the person's own left side green (0, 255, 0), right side orange (255, 128, 0), face and torso blue
# (51, 153, 255).
SIDE_COLORS: dict[str, tuple[int, int, int]] = {
    "left": (0, 255, 0),  # green
    "right": (0, 128, 255),  # orange
    "center": (255, 153, 51),  # blue
}
BOX_COLOR = (255, 255, 255)  # boxes without a (confirmed) track id
TEXT_COLOR = (0, 0, 0)
FACE_PARTS = ("nose", "eye", "ear", "mouth", "head", "neck")  # mmpose draws these blue whatever the side


def track_color(track_id: int) -> tuple[int, int, int]:
    """A fixed, well-saturated BGR colour per track id (golden-ratio hue steps: neighbours differ)."""
    hue = int((track_id * 0.618033988749895 % 1.0) * 180)
    hsv = np.array([[[hue, 200, 255]]], np.uint8)
    return tuple(int(v) for v in cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0])


def keypoint_side(info: KeypointInfo, k: int) -> str:
    """'left' / 'right' for the limbs' keypoints, 'center' for face / head / neck ones (as mmpose)."""
    if any(part in info.names[k] for part in FACE_PARTS):
        return "center"
    return info.side(k)


def limb_side(info: KeypointInfo, a: int, b: int) -> str:
    """A limb is 'left'/'right' when both ends are on that side, else 'center' (e.g. the shoulder line);
    the torso sides (shoulder to hip) are 'center' too, as in mmpose's COCO skeleton."""
    sa, sb = keypoint_side(info, a), keypoint_side(info, b)
    names = {info.names[a].split("_")[-1], info.names[b].split("_")[-1]}
    return sa if sa == sb and names != {"shoulder", "hip"} else "center"


def _thickness(shape: tuple[int, ...]) -> int:
    # ~2 px at 640 px, growing with the picture so lines stay visible on 4K frames.
    return max(1, round(max(shape[:2]) / 320))


def _pt(xy: np.ndarray) -> tuple[int, int]:
    return int(round(float(xy[0]))), int(round(float(xy[1])))


def draw_skeleton(image: np.ndarray, keypoints: np.ndarray, scores: np.ndarray | None = None,
                  keypoint_info: KeypointInfo | None = None, threshold: float = 0.3,
                  boxes: np.ndarray | None = None, box_scores: np.ndarray | None = None,
                  track_ids: np.ndarray | None = None, thickness: int | None = None) -> np.ndarray:
    """A copy of the BGR uint8 `image` with poses drawn from plain arrays.

    `keypoints`: (n, K, 2) or (n, K, 3) (x, y[, score]) in image pixels, or (K, 2|3) for one person;
    `scores`: (n, K) keypoint scores (default: the third column, else all drawn). Keypoints scoring below
    `threshold` are left out, and so is any limb with such an end. `keypoint_info` gives the skeleton and
    sides (default: COCO for 17 keypoints, CrowdPose for 14). `boxes` (n, 4) xyxy are drawn with
    `box_scores` (n,) as labels; with `track_ids` (n,) each box takes its track's colour and "id N"
    (id -1, an unconfirmed track, is drawn as untracked).
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"drawing expects a BGR uint8 HxWx3 image, got {image.dtype} {image.shape}")
    kpts = np.asarray(keypoints, np.float32)
    if kpts.ndim == 2:
        kpts = kpts[None]
        scores = None if scores is None else np.asarray(scores)[None]
    if kpts.ndim != 3 or kpts.shape[2] not in (2, 3):
        raise ValueError(f"keypoints must be (n, K, 2|3) or (K, 2|3), got {kpts.shape}")
    n, k = kpts.shape[:2]
    if scores is None:
        scores = kpts[..., 2] if kpts.shape[2] == 3 else np.ones((n, k), np.float32)
    scores = np.asarray(scores, np.float32).reshape(n, k)
    info = keypoint_info or keypoint_info_for(k)
    if info.num_keypoints != k:
        raise ValueError(f"keypoint_info has {info.num_keypoints} keypoints, the arrays have {k}")
    canvas = image.copy()
    t = thickness or _thickness(image.shape)
    radius = t + 1
    if boxes is not None:
        for i, box in enumerate(np.asarray(boxes, np.float32).reshape(-1, 4)):
            tid = None if track_ids is None or int(track_ids[i]) < 0 else int(track_ids[i])
            label = "" if box_scores is None else f"{float(box_scores[i]):.2f}"
            if tid is not None:
                label = f"id {tid} {label}".strip()
            _draw_box(canvas, box, label, BOX_COLOR if tid is None else track_color(tid), t)
    for i in range(n):
        pts, ok = kpts[i], scores[i] >= threshold
        for a, b in info.skeleton:
            if ok[a] and ok[b]:
                cv2.line(canvas, _pt(pts[a]), _pt(pts[b]), SIDE_COLORS[limb_side(info, a, b)], t, cv2.LINE_AA)
        for j in np.flatnonzero(ok):
            cv2.circle(canvas, _pt(pts[j]), radius, SIDE_COLORS[keypoint_side(info, int(j))], -1, cv2.LINE_AA)
    return canvas


def _draw_box(canvas: np.ndarray, box: np.ndarray, label: str, color: tuple[int, int, int], t: int) -> None:
    x1, y1, x2, y2 = (int(round(float(v))) for v in box)
    cv2.rectangle(canvas, (x1, y1), (x2, y2), color, t, cv2.LINE_AA)
    if not label:
        return
    scale, weight = 0.4 * t, max(1, t // 2)
    (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, weight)
    ty = max(y1, th + base)  # keep the label inside the picture for boxes at the top edge
    cv2.rectangle(canvas, (x1, ty - th - base), (x1 + tw, ty), color, -1)
    cv2.putText(canvas, label, (x1, ty - base), cv2.FONT_HERSHEY_SIMPLEX, scale, TEXT_COLOR, weight,
                cv2.LINE_AA)


def draw_result(image: np.ndarray, result: PoseResult, kpt_threshold: float = 0.3, boxes: bool = True,
                thickness: int | None = None, person_threshold: float | None = None) -> np.ndarray:
    """A copy of the BGR `image` with the people of `result` drawn.

    People scoring below `person_threshold` (default: `kpt_threshold`, 0.3 as mmpose's inferencer) are not
    drawn; of the others, keypoints scoring below `kpt_threshold` are left out, with their limbs. Boxes
    carry "score", or "id N score" in the track's colour when the result has track ids.
    """
    if image.ndim == 3 and tuple(image.shape[:2]) != tuple(result.image_shape):
        raise ValueError(f"image is {image.shape[1]}x{image.shape[0]} but the result is for "
                         f"{result.image_shape[1]}x{result.image_shape[0]}")
    keep = result.scores >= (kpt_threshold if person_threshold is None else person_threshold)
    return draw_skeleton(
        image, result.keypoints[keep], result.keypoint_scores[keep], result.keypoint_info, kpt_threshold,
        boxes=result.boxes[keep] if boxes else None, box_scores=result.scores[keep],
        track_ids=None if result.track_ids is None else result.track_ids[keep], thickness=thickness)
