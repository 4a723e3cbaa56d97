"""Every kind of image a user may pass: clear errors for the broken ones, correct results for the rest."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from rtmo.infer.image import ImageError, load_image, read_image

from .conftest import data_images, fixture_model


@pytest.fixture(scope="module")
def model():
    return fixture_model("t")


@pytest.fixture(scope="module")
def sample():
    return data_images()[0]


def same(a, b, kpt_atol=1e-3):
    assert len(a) == len(b)
    np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-3)
    np.testing.assert_allclose(a.keypoints, b.keypoints, atol=kpt_atol)
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-6)


def test_path_array_and_pil_agree(model, sample):
    from PIL import Image

    by_path = model.infer(sample)
    assert len(by_path) > 0
    same(model.infer(str(sample)), by_path)
    same(model.infer(cv2.imread(str(sample))), by_path)
    pil = Image.open(sample)
    # PIL and OpenCV may use different JPEG decoders; decode with OpenCV and hand over as RGB PIL instead.
    pil = Image.fromarray(cv2.imread(str(sample))[:, :, ::-1])
    same(model.infer(pil), by_path)


def test_grayscale_rgba_and_16bit(model, sample, tmp_path):
    bgr = cv2.imread(str(sample))
    gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    cv2.imwrite(str(tmp_path / "gray.png"), gray)
    ref_gray = model.infer(cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR))
    same(model.infer(tmp_path / "gray.png"), ref_gray)
    same(model.infer(gray), ref_gray)

    rgba = cv2.cvtColor(bgr, cv2.COLOR_BGR2BGRA)
    rgba[..., 3] = 200
    cv2.imwrite(str(tmp_path / "rgba.png"), rgba)
    same(model.infer(tmp_path / "rgba.png"), model.infer(bgr))

    cv2.imwrite(str(tmp_path / "deep.png"), bgr.astype(np.uint16) * 257)
    assert read_image(tmp_path / "deep.png").dtype == np.uint8
    same(model.infer(tmp_path / "deep.png"), model.infer(bgr))


def test_tiny_and_huge_images(model):
    tiny = model.infer(np.full((1, 1, 3), 128, np.uint8))
    assert tiny.image_shape == (1, 1) and tiny.keypoints.shape[1:] == (17, 2)
    huge = np.zeros((4000, 6000, 3), np.uint8)
    res = model.infer(huge)
    assert res.image_shape == (4000, 6000)
    if len(res):  # coordinates come back in the huge image's pixels
        assert res.boxes[:, 2].max() <= 6000 + 1e-3


def test_broken_files_give_clear_errors(model, sample, tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "junk.jpg").write_bytes(b"this is not an image")
    data = sample.read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    png = cv2.imencode(".png", cv2.imread(str(sample)))[1].tobytes()
    (tmp_path / "cut.png").write_bytes(png[: len(png) // 2])
    cases = {"missing.jpg": "no such file", "empty.jpg": "empty", "junk.jpg": "not a readable image",
             "cut.jpg": "truncated", "cut.png": "truncated"}
    for name, pattern in cases.items():
        with pytest.raises(ImageError, match=pattern) as e:
            model.infer(tmp_path / name)
        assert name in str(e.value)
    with pytest.raises(ImageError, match="directory"):
        model.infer(tmp_path)
    with pytest.raises(ImageError, match="unsupported image type"):
        load_image(12345)
    with pytest.raises(ImageError, match="shape"):
        load_image(np.zeros((4, 4, 2), np.uint8))
    with pytest.raises(ImageError, match="NaN"):
        load_image(np.full((4, 4, 3), np.nan, np.float32))


def test_empty_list_and_no_detections(model):
    assert model.infer([]) == []
    res = model.infer(np.zeros((64, 64, 3), np.uint8), threshold=1.0)
    assert len(res) == 0 and res.keypoints.shape == (0, 17, 2) and res.detections == []
