"""Drawing: hand-placed people on a black canvas; the colour of known pixels is the truth."""

from __future__ import annotations

import numpy as np
import pytest

import rtmo
from rtmo.config import COCO_KEYPOINTS, CROWDPOSE_KEYPOINTS, KeypointInfo
from rtmo.infer.draw import (
    BOX_COLOR,
    SIDE_COLORS,
    draw_result,
    draw_skeleton,
    keypoint_side,
    limb_side,
    track_color,
)
from rtmo.infer.results import PoseResult

SIZE = 200


def person(info: KeypointInfo, placed: dict[int, tuple[float, float, float]], box=(10, 10, 190, 190),
           track_id: int | None = None) -> PoseResult:
    """One person whose keypoints not in `placed` (index -> x, y, score) have score 0."""
    k = info.num_keypoints
    kpts = np.zeros((1, k, 2), np.float32)
    scores = np.zeros((1, k), np.float32)
    for i, (x, y, s) in placed.items():
        kpts[0, i], scores[0, i] = (x, y), s
    return PoseResult(np.array([box], np.float32), np.array([0.87], np.float32), np.zeros(1, np.int64), kpts,
                      scores, (SIZE, SIZE), info,
                      track_ids=None if track_id is None else np.array([track_id], np.int64))


def px(img: np.ndarray, x: int, y: int) -> tuple[int, ...]:
    return tuple(int(v) for v in img[y, x])


def close(a: tuple[int, ...], b: tuple[int, ...], tol: int = 8) -> bool:
    return max(abs(u - v) for u, v in zip(a, b)) <= tol


BLACK = (0, 0, 0)


def test_coco_limbs_coloured_by_side_and_threshold():
    i = {n: COCO_KEYPOINTS.names.index(n) for n in ("left_shoulder", "right_shoulder", "left_elbow",
                                                      "right_elbow", "left_wrist")}
    r = person(COCO_KEYPOINTS, {
        i["left_shoulder"]: (50, 50, 0.9), i["left_elbow"]: (50, 150, 0.9),
        i["right_shoulder"]: (150, 50, 0.9), i["right_elbow"]: (150, 150, 0.9),
        i["left_wrist"]: (20, 180, 0.2),  # below the 0.3 threshold: neither it nor its forearm is drawn
    })
    canvas = np.zeros((SIZE, SIZE, 3), np.uint8)
    out = draw_result(canvas, r, kpt_threshold=0.3, boxes=False, thickness=3)
    assert not canvas.any()  # drawn on a copy
    assert close(px(out, 50, 100), SIDE_COLORS["left"])  # left upper arm
    assert close(px(out, 150, 100), SIDE_COLORS["right"])  # right upper arm
    assert close(px(out, 100, 50), SIDE_COLORS["center"])  # shoulder line joins both sides
    assert close(px(out, 50, 150), SIDE_COLORS["left"])  # the elbow keypoint itself
    assert px(out, 20, 180) == BLACK and px(out, 35, 165) == BLACK  # wrist and forearm left out
    # With a lower threshold the wrist and forearm appear, in the left colour.
    low = draw_result(canvas, r, kpt_threshold=0.1, boxes=False, thickness=3)
    assert close(px(low, 20, 180), SIDE_COLORS["left"]) and close(px(low, 35, 165), SIDE_COLORS["left"])
    # Nothing else was drawn: every coloured pixel lies within a keypoint radius (thickness + 1, plus one
    # anti-aliased pixel) of the three limbs' lines.
    ys, xs = np.nonzero(out.any(axis=2))
    near = (np.abs(xs - 50) <= 5) | (np.abs(xs - 150) <= 5) | (np.abs(ys - 50) <= 5)
    assert near.all()


def test_crowdpose_skeleton_from_metadata():
    names = CROWDPOSE_KEYPOINTS.names
    r = person(CROWDPOSE_KEYPOINTS, {names.index("top_head"): (100, 20, 0.9),
                                     names.index("neck"): (100, 60, 0.9),
                                     names.index("left_shoulder"): (60, 60, 0.9),
                                     names.index("left_elbow"): (60, 140, 0.9)})
    out = draw_result(np.zeros((SIZE, SIZE, 3), np.uint8), r, boxes=False, thickness=3)
    assert close(px(out, 100, 40), SIDE_COLORS["center"])  # head - neck
    assert close(px(out, 80, 60), SIDE_COLORS["center"])  # neck - left shoulder: mixed sides
    assert close(px(out, 60, 100), SIDE_COLORS["left"])  # left upper arm
    assert limb_side(CROWDPOSE_KEYPOINTS, names.index("right_hip"), names.index("right_knee")) == "right"


def test_box_with_score_and_track_id():
    canvas = np.zeros((SIZE, SIZE, 3), np.uint8)
    plain = draw_result(canvas, person(COCO_KEYPOINTS, {}), thickness=2)
    tracked = draw_result(canvas, person(COCO_KEYPOINTS, {}, track_id=3), thickness=2)
    assert px(plain, 100, 190) == BOX_COLOR and px(plain, 190, 100) == BOX_COLOR  # box edges
    assert px(plain, 100, 100) == BLACK  # inside stays untouched (no keypoints scored)
    # Tracked: the box takes its track's colour, a fixed one per id, different between ids.
    assert px(tracked, 100, 190) == track_color(3) != BOX_COLOR
    assert track_color(3) == track_color(3) != track_color(4)

    # The label sits on a filled background at the box's top-left corner (pushed down to stay inside the
    # picture); "id 3 0.87" is wider than "0.87".
    def label_width(img: np.ndarray) -> int:
        row = img[2:8, 10:].max(axis=2).max(axis=0)  # rows inside the label, above the box's top edge
        return int(np.flatnonzero(row > 0).max())

    assert label_width(tracked) > label_width(plain) > 10
    unconfirmed = draw_result(canvas, person(COCO_KEYPOINTS, {}, track_id=-1), thickness=2)
    assert np.array_equal(unconfirmed, plain)  # id -1 (unconfirmed track) shows no id


def test_palette_is_mmpose_coco():
    """mmpose's COCO meta (RGB): face keypoints and torso lines blue (51, 153, 255), left limbs green
    (0, 255, 0), right limbs orange (255, 128, 0); we draw BGR."""
    assert SIDE_COLORS == {"left": (0, 255, 0), "right": (0, 128, 255), "center": (255, 153, 51)}
    n = COCO_KEYPOINTS.names.index
    assert keypoint_side(COCO_KEYPOINTS, n("left_eye")) == "center"  # mmpose: eyes / ears blue
    assert keypoint_side(COCO_KEYPOINTS, n("left_knee")) == "left"
    assert limb_side(COCO_KEYPOINTS, n("left_shoulder"), n("left_hip")) == "center"  # torso side
    assert limb_side(COCO_KEYPOINTS, n("left_eye"), n("left_ear")) == "center"
    assert limb_side(COCO_KEYPOINTS, n("right_knee"), n("right_ankle")) == "right"
    r = person(COCO_KEYPOINTS, {n("left_shoulder"): (50, 40, 0.9), n("left_hip"): (50, 160, 0.9),
                                n("nose"): (150, 30, 0.9)})
    out = draw_result(np.zeros((SIZE, SIZE, 3), np.uint8), r, boxes=False, thickness=3)
    assert close(px(out, 50, 100), SIDE_COLORS["center"])  # shoulder-hip line: blue
    assert close(px(out, 150, 30), SIDE_COLORS["center"])  # nose keypoint: blue
    assert close(px(out, 50, 160), SIDE_COLORS["left"])  # the hip keypoint itself: green


def test_people_below_the_draw_threshold_are_not_drawn():
    r = person(COCO_KEYPOINTS, {5: (50, 50, 0.9)})  # person score 0.87
    canvas = np.zeros((SIZE, SIZE, 3), np.uint8)
    # The person threshold defaults to the keypoint one: the keypoint (0.9) passes 0.9, the person does not.
    assert not draw_result(canvas, r, kpt_threshold=0.9).any()
    assert not draw_result(canvas, r, kpt_threshold=0.3, person_threshold=0.9).any()  # nobody drawn
    assert draw_result(canvas, r, kpt_threshold=0.3, person_threshold=0.8).any()


def test_draw_skeleton_arrays_equal_the_result_drawing():
    """rtmlib-style call on plain arrays gives the same pixels as drawing the result (one implementation)."""
    n = COCO_KEYPOINTS.names.index
    r = person(COCO_KEYPOINTS, {n("left_shoulder"): (50, 50, 0.9), n("left_elbow"): (50, 150, 0.9),
                                n("right_shoulder"): (150, 50, 0.4)})
    canvas = np.zeros((SIZE, SIZE, 3), np.uint8)
    want = draw_result(canvas, r, boxes=False, thickness=3)
    assert np.array_equal(draw_skeleton(canvas, r.keypoints, r.keypoint_scores, thickness=3), want)
    # (K, 3) for one person, scores in the third column; the 17-keypoint set is taken to be COCO.
    assert np.array_equal(draw_skeleton(canvas, r.keypoints_with_scores[0], thickness=3), want)
    assert rtmo.draw_skeleton is draw_skeleton
    with pytest.raises(ValueError, match="keypoints must be"):
        draw_skeleton(canvas, np.zeros((17,)))


def test_rejects_mismatched_image():
    r = person(COCO_KEYPOINTS, {})
    with pytest.raises(ValueError, match="result is for 200x200"):
        draw_result(np.zeros((100, 200, 3), np.uint8), r)
    with pytest.raises(ValueError, match="BGR uint8"):
        draw_result(np.zeros((SIZE, SIZE), np.uint8), r)
