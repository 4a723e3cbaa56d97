"""Photos as users have them: EXIF orientation applied as mmpose applies it, data after the image end.

`data/mmpose_exif_refs.npz` holds mmpose 1.3.2's own `inference_bottomup` results (RTMO-t fixture
checkpoint) on one COCO photo tagged with EXIF orientations 1, 3, 6 and 8 (`bench/mmpose_exif_refs.py`,
run in the mmpose-ref venv); the tags are added without re-encoding (`exif_util.py`), and the recorded
sha256 proves the test reads the bytes mmpose read.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from rtmo.infer.image import ImageError, decode_image, read_image

from .conftest import DATA, fixture_checkpoint, fixture_model
from .exif_util import with_orientation
from .test_parity import assert_keypoints_match

REFS = Path(__file__).parent / "data" / "mmpose_exif_refs.npz"
STEM = "000000197388"


def tagged(tmp_path: Path, orientation: int) -> Path:
    data = with_orientation((DATA / "coco" / f"{STEM}.jpg").read_bytes(), orientation)
    path = tmp_path / f"{STEM}_o{orientation}.jpg"
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
def test_exif_orientation_gives_mmpose_poses(tmp_path, orientation):
    refs = np.load(REFS)
    key = f"{STEM}_o{orientation}"
    path = tagged(tmp_path, orientation)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == str(refs[f"{key}.sha256"])
    res = fixture_model("t").infer(str(path))
    assert res.image_shape == tuple(refs[f"{key}.ori_shape"])
    assert len(res) == len(refs[f"{key}.bbox_scores"]) > 0
    # mmpose's tolerances for float32 re-implementations (fixtures README), keypoints as in test_parity.
    np.testing.assert_allclose(res.scores, refs[f"{key}.bbox_scores"], atol=1e-5)
    np.testing.assert_allclose(res.boxes, refs[f"{key}.bboxes"], atol=1e-3)
    assert_keypoints_match(res.keypoints, refs[f"{key}.keypoints"])


def test_exif_rotation_matches_the_pixels():
    """Orientation 6 means "rotate 90 degrees clockwise to display", 3 is 180 degrees, 8 counter-clockwise."""
    original = read_image(DATA / "coco" / f"{STEM}.jpg")
    data = (DATA / "coco" / f"{STEM}.jpg").read_bytes()
    np.testing.assert_array_equal(decode_image(with_orientation(data, 6)), np.rot90(original, k=-1))
    np.testing.assert_array_equal(decode_image(with_orientation(data, 3)), np.rot90(original, k=2))
    np.testing.assert_array_equal(decode_image(with_orientation(data, 8)), np.rot90(original, k=1))


def test_pil_image_with_orientation_tag_is_made_upright(tmp_path):
    from PIL import Image

    path = tagged(tmp_path, 6)
    model = fixture_model("t")
    by_path = model.infer(str(path))
    with Image.open(path) as im:  # PIL keeps the tag and does not rotate
        assert im.size == (640, 392)
        by_pil = model.infer(im)
    assert by_pil.image_shape == by_path.image_shape == (640, 392)
    # PIL and OpenCV decode JPEG with different IDCTs, so the pixels differ by a few levels.
    assert abs(len(by_pil) - len(by_path)) <= max(3, len(by_path) // 10)


def test_drawn_output_is_upright(tmp_path):
    path = tagged(tmp_path, 6)
    proc = subprocess.run([sys.executable, "-m", "rtmo", "predict", str(path), "--model",
                           str(fixture_checkpoint("t")), "--save", "--save-json", "-o", str(tmp_path / "run"),
                           "--quiet", "--device", "cpu"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    drawn = [p for p in (tmp_path / "run").rglob("*.jpg")]
    assert drawn, list((tmp_path / "run").rglob("*"))
    assert cv2.imread(str(drawn[0]), cv2.IMREAD_IGNORE_ORIENTATION | cv2.IMREAD_COLOR).shape[:2] == (640, 392)
    records = json.loads(next((tmp_path / "run").glob("*.json")).read_text())
    refs = np.load(REFS)
    assert len(records) == len(refs[f"{STEM}_o6.bbox_scores"])


def _motion_photo_tail() -> bytes:
    """What a phone appends after the JPEG's end marker: an MP4 (here its header and random payload)."""
    rng = np.random.default_rng(0)
    return b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom" + rng.bytes(200_000)


def test_trailing_data_after_the_image_is_ignored(tmp_path):
    jpg = (DATA / "coco" / f"{STEM}.jpg").read_bytes()
    png = cv2.imencode(".png", read_image(DATA / "coco" / f"{STEM}.jpg"))[1].tobytes()
    for name, data in (("motion.jpg", jpg), ("extra.png", png)):
        (tmp_path / name).write_bytes(data + _motion_photo_tail())
        np.testing.assert_array_equal(read_image(tmp_path / name), decode_image(data))


def test_cut_short_is_still_refused_even_with_an_exif_thumbnail(tmp_path):
    """A thumbnail inside APP1 carries its own end marker; a cut main image must still count as cut."""
    jpg = (DATA / "coco" / f"{STEM}.jpg").read_bytes()
    thumb = cv2.imencode(".jpg", np.zeros((8, 8, 3), np.uint8))[1].tobytes()
    payload = b"Exif\x00\x00" + thumb
    with_thumb = jpg[:2] + b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload + jpg[2:]
    assert decode_image(with_thumb).shape == (392, 640, 3)
    for cut in (len(with_thumb) // 2, len(with_thumb) - 2):
        (tmp_path / "cut.jpg").write_bytes(with_thumb[:cut])
        with pytest.raises(ImageError, match="truncated"):
            read_image(tmp_path / "cut.jpg")
    png = cv2.imencode(".png", np.zeros((32, 32, 3), np.uint8))[1].tobytes()
    with pytest.raises(ImageError, match="truncated"):
        decode_image(png[:-12], "cut.png")  # IEND chunk missing
