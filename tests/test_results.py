"""`PoseResult` as users reach it: `model.infer(...)` on real photos, then plot / save / JSON / COCO records,
len / iteration / indexing; `model.export`; names exported at the top level."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

import rtmo
from rtmo.infer.draw import draw_result
from rtmo.infer.image import read_image

from .conftest import DATA, fixture_model

IMAGE = DATA / "coco" / "000000197388.jpg"


@pytest.fixture(scope="module")
def result():
    if not IMAGE.is_file():
        pytest.skip(f"{IMAGE} not found")
    # The fixture weights are random: threshold 0.3 keeps a handful of (meaningless) people to draw.
    r = fixture_model("t").infer(str(IMAGE), threshold=0.3)
    assert len(r) >= 2, "need a few people for the indexing checks"
    return r


def test_plot_draws_on_the_source_image(result):
    source = read_image(IMAGE)
    assert result.image is not None and np.array_equal(result.image, source)  # kept by infer
    drawn = result.plot()
    assert drawn.shape == source.shape and drawn.dtype == np.uint8
    assert np.array_equal(drawn, draw_result(source, result))  # one drawing implementation
    assert not np.array_equal(drawn, source) and np.array_equal(result.image, source)  # drawn on a copy
    # No image kept: plot(image) takes one, and a result with a path reads it.
    bare = result.select(np.arange(len(result)))
    bare.image = None
    assert np.array_equal(bare.plot(), drawn) and np.array_equal(bare.plot(source), drawn)
    bare.path = None
    with pytest.raises(ValueError, match="no image"):
        bare.plot()
    # The drawing threshold hides people, it does not drop them from the result.
    assert np.array_equal(result.plot(threshold=1.01), source) and len(result) >= 2


def test_save_writes_the_plot_atomically(result, tmp_path):
    out = result.save(tmp_path / "sub" / "pose.png")
    assert np.array_equal(cv2.imread(str(out)), result.plot())  # PNG: lossless, pixel for pixel
    assert sorted(p.name for p in out.parent.iterdir()) == ["pose.png"]  # no temporary file left
    with pytest.raises(ValueError, match="suffix"):
        result.save(tmp_path / "pose.notanimage")
    assert not list(tmp_path.glob("pose.notanimage*")) and not list(tmp_path.glob(".pose*"))


def test_len_iteration_indexing_and_shapes(result):
    n, k = len(result), result.keypoint_info.num_keypoints
    assert result.keypoints.shape == (n, k, 2) and result.keypoint_scores.shape == (n, k)
    dets = list(result)
    assert len(dets) == n and [d.conf for d in dets] == pytest.approx(result.scores.tolist())
    d0, last = result[0], result[-1]
    assert d0.keypoints.shape == (k, 3)
    np.testing.assert_array_equal(d0.keypoints, result.keypoints_with_scores[0])
    assert d0.bbox == pytest.approx(result.boxes[0].tolist())
    assert last.conf == pytest.approx(result.scores[-1])
    with pytest.raises(IndexError):
        result[n]
    head = result[:2]
    assert isinstance(head, rtmo.PoseResult) and len(head) == 2
    np.testing.assert_array_equal(head.boxes, result.boxes[:2])
    strong = result[result.scores > float(np.median(result.scores))]
    assert len(strong) == int((result.scores > np.median(result.scores)).sum())


def test_json_and_coco_records(result):
    d = json.loads(result.to_json())
    assert d == json.loads(json.dumps(result.to_dict()))
    assert d["image_shape"] == list(result.image_shape) and len(d["detections"]) == len(result)
    recs = result.to_coco(197388)
    from rtmo.eval.coco import pose_result_to_coco

    assert recs == pose_result_to_coco(result, 197388)  # one definition
    x1, y1, x2, y2 = result.boxes[0].tolist()
    assert recs[0]["bbox"] == pytest.approx([x1, y1, x2 - x1, y2 - y1])
    assert recs[0]["keypoints"] == pytest.approx(result.keypoints_with_scores[0].reshape(-1).tolist())
    from pycocotools.coco import COCO

    gt = COCO(str(DATA / "coco" / "test_coco.json"))
    loaded = gt.loadRes(recs)  # pycocotools accepts them as keypoint results
    assert len(loaded.getAnnIds(imgIds=[197388])) == len(result)


def test_top_level_names():
    from rtmo.config import ResNetConfig
    from rtmo.infer.draw import draw_skeleton

    assert rtmo.ResNetConfig is ResNetConfig and rtmo.draw_skeleton is draw_skeleton
    assert {"ResNetConfig", "draw_skeleton"} <= set(rtmo.__all__)


def test_model_export_method(tmp_path):
    pytest.importorskip("onnx")
    model = fixture_model("t")
    out = model.export(format="onnx", path=str(tmp_path / "t.onnx"), simplify=False, check=False)
    assert out == tmp_path / "t.onnx" and out.stat().st_size > 1_000_000
    import onnx

    from rtmo.export import read_metadata

    meta = read_metadata(onnx.load(str(out)))  # a real RTMO export, with its metadata
    assert meta and any("keypoint" in key for key in meta), meta
