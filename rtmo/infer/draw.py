"""Draw poses: skeleton lines and keypoints coloured by body side, boxes with score and track id."""

from __future__ import annotations

import cv2
import numpy as np

from ..config import KeypointInfo
from .results import PoseResult

# BGR. Left / right are the person's own sides (COCO/CrowdPose naming), as mmpose colours them.
SIDE_COLORS: dict[str, tuple[int, int, int]] = {
    "left": (0, 165, 255),  # orange
    "right": (255, 128, 0),  # blue
    "center": (0, 200, 0),  # green
}
BOX_COLOR = (255, 255, 255)
TEXT_COLOR = (0, 0, 0)


def limb_side(info: KeypointInfo, a: int, b: int) -> str:
    """A limb is 'left'/'right' when both ends are on that side, else 'center' (e.g. the shoulder line)."""
    sa, sb = info.side(a), info.side(b)
    return sa if sa == sb else "center"


def _thickness(shape: tuple[int, ...]) -> int:
    # ~2 px at 640 px, growing with the picture so lines stay visible on 4K frames.
    return max(1, round(max(shape[:2]) / 320))


def draw_result(image: np.ndarray, result: PoseResult, kpt_threshold: float = 0.3, boxes: bool = True,
                thickness: int | None = None) -> np.ndarray:
    """A copy of the BGR `image` with every person of `result` drawn.

    Keypoints with score < `kpt_threshold` are left out, and so is any limb with such an end. Boxes carry
    "score" or "id N score" when the result has track ids (id -1, an unconfirmed track, shows no id).
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"draw_result expects a BGR uint8 HxWx3 image, got {image.dtype} {image.shape}")
    if tuple(image.shape[:2]) != tuple(result.image_shape):
        raise ValueError(f"image is {image.shape[1]}x{image.shape[0]} but the result is for "
                         f"{result.image_shape[1]}x{result.image_shape[0]}")
    canvas = image.copy()
    t = thickness or _thickness(image.shape)
    info = result.keypoint_info
    radius = t + 1
    for i in range(len(result)):
        if boxes:
            x1, y1, x2, y2 = (int(round(float(v))) for v in result.boxes[i])
            cv2.rectangle(canvas, (x1, y1), (x2, y2), BOX_COLOR, t, cv2.LINE_AA)
            label = f"{result.scores[i]:.2f}"
            if result.track_ids is not None and int(result.track_ids[i]) >= 0:
                label = f"id {int(result.track_ids[i])} {label}"
            scale = 0.4 * t
            (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, max(1, t // 2))
            ty = max(y1, th + base)  # keep the label inside the picture for boxes at the top edge
            cv2.rectangle(canvas, (x1, ty - th - base), (x1 + tw, ty), BOX_COLOR, -1)
            cv2.putText(canvas, label, (x1, ty - base), cv2.FONT_HERSHEY_SIMPLEX, scale, TEXT_COLOR,
                        max(1, t // 2), cv2.LINE_AA)
        pts = result.keypoints[i]
        ok = result.keypoint_scores[i] >= kpt_threshold
        for a, b in info.skeleton:
            if ok[a] and ok[b]:
                pa = (int(round(float(pts[a, 0]))), int(round(float(pts[a, 1]))))
                pb = (int(round(float(pts[b, 0]))), int(round(float(pts[b, 1]))))
                cv2.line(canvas, pa, pb, SIDE_COLORS[limb_side(info, a, b)], t, cv2.LINE_AA)
        for k in np.flatnonzero(ok):
            p = (int(round(float(pts[k, 0]))), int(round(float(pts[k, 1]))))
            cv2.circle(canvas, p, radius, SIDE_COLORS[info.side(int(k))], -1, cv2.LINE_AA)
    return canvas
