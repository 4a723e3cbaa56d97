"""COCO-format training datasets: parsing, malformed input, body7 conversion/resampling, and the
letterbox-only pipeline against mmpose's own training batch (fixtures/train_rtmo-{s,t}_seed0/batch.npz)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from rtmo.config import COCO_KEYPOINTS, CROWDPOSE_KEYPOINTS
from rtmo.train.data import (
    BODY7_TO_COCO,
    BODY7_TO_CROWDPOSE,
    CocoPoseDataset,
    CombinedDataset,
    KeypointConverter,
    Stage1Pipeline,
    Stage2Pipeline,
    TrainDataset,
    build_train_data,
    collate,
    flip_indices_from_names,
)
from rtmo.train.recipes import AugmentRecipe

from .conftest import SHARED
from .train_util import criterion, official_recipe

COCO_DIR = SHARED / "data" / "coco"
COCO_JSON = COCO_DIR / "test_coco.json"
CROWD_DIR = SHARED / "data" / "crowdpose"


# every probability 0 (the centred letterbox, no HSV, no flip): the deterministic stage-2 pipeline of the
# training fixtures
LETTERBOX = AugmentRecipe(hsv_gains=(0, 0, 0), flip_prob=0.0, stage2_affine="none")


def _stage1(variant: str, dataset: str) -> Stage1Pipeline:
    """The stage-1 pipeline the official recipe trains with."""
    r = official_recipe(variant, dataset)
    return Stage1Pipeline(r.augment, r.input_size[0])


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} not available")
    return path


@pytest.fixture(scope="module")
def coco() -> CocoPoseDataset:
    return CocoPoseDataset(need(COCO_JSON), COCO_DIR)


# ----------------------------------------------------------------------------------------- real files
def test_real_coco_file_counts(coco):
    # 4 images, 14 annotations; the 2 without keypoints (1202706, 508900) stay instances until
    # FilterAnnotations (mmpose bottom-up) and their polygons are the images' invalid segmentations.
    assert len(coco) == 4 and coco.num_instances == 14 and coco.malformed == []
    assert [r.img_id for r in coco.records] == [785, 40083, 196141, 197388]
    assert coco.keypoint_info == COCO_KEYPOINTS
    assert [len(r.invalid_segs) for r in coco.records] == [0, 1, 1, 0]
    s = coco.load(1)
    assert s.image.shape == (s.orig_hw[0], s.orig_hw[1], 3) and s.image.dtype == np.uint8
    assert s.ann_ids.tolist() == [198196, 230195, 1202706]
    # COCO xywh -> xyxy, here inside the image so no clipping: (38.08, 110.95, 174.71, 174.71)
    np.testing.assert_allclose(s.bboxes[0], [38.08, 110.95, 38.08 + 174.71, 110.95 + 174.71], rtol=1e-6)
    assert set(np.unique(s.keypoints_visible)) <= {0.0, 1.0}


def test_real_coco_after_filter(coco):
    # the README of the training fixtures: 12 persons with keypoints, (1, 2, 4, 5) per image
    td = TrainDataset(coco, Stage2Pipeline(LETTERBOX, 640), seed=0)
    counts = [td[i].num_instances for i in range(len(td))]
    assert counts == [1, 2, 4, 5]
    kept = np.concatenate([td[i].ann_ids for i in range(len(td))])
    assert 1202706 not in kept and 508900 not in kept and len(kept) == 12


@pytest.mark.parametrize("name,size", [("train_rtmo-s_seed0", 640), ("train_rtmo-t_seed0", 416)])
def test_letterbox_pipeline_reproduces_mmpose_batch(coco, name, size):
    fx = np.load(need(SHARED / "fixtures" / name / "batch.npz"))
    td = TrainDataset(coco, Stage2Pipeline(LETTERBOX, size), seed=0)
    samples = [td[i] for i in range(4)]
    images, targets = collate(samples)
    assert images.dtype.is_floating_point and tuple(images.shape) == (4, 3, size, size)
    np.testing.assert_array_equal(images.numpy().astype(np.uint8), fx["inputs_uint8"])  # bit-exact
    assert np.array_equal(images.numpy(), fx["inputs_uint8"].astype(np.float32))
    for i, (s, t) in enumerate(zip(samples, targets)):
        np.testing.assert_array_equal(s.ann_ids, fx[f"b{i}_ann_ids"])
        np.testing.assert_allclose(s.warp_mat, fx[f"b{i}_warp_mat"], atol=1e-9)
        # 1e-3 px / area units: float32 arithmetic in another order may differ by a few ulps
        for key in ("bboxes", "keypoints", "keypoints_visible", "areas"):
            np.testing.assert_allclose(getattr(t, key).numpy(), fx[f"b{i}_{key}"], atol=1e-3, rtol=0,
                                       err_msg=f"image {i} {key}")
        assert t.labels.tolist() == fx[f"b{i}_labels"].tolist()
        np.testing.assert_array_equal(t.heatmap_mask.numpy() > 0.5, fx["heatmap_mask"][i] > 0)
    assert sum(int(m.heatmap_mask.sum()) for m in targets) > 0  # the two unlabelled persons are masked


def test_real_crowdpose_file():
    ds = CocoPoseDataset(need(CROWD_DIR / "test_crowdpose.json"), CROWD_DIR)
    # 14 keypoints recognised as CrowdPose (names in the file: 'head'/'neck'), official sigmas/flip pairs
    assert ds.keypoint_info.num_keypoints == 14
    assert ds.keypoint_info.sigmas == CROWDPOSE_KEYPOINTS.sigmas
    assert ds.keypoint_info.flip_indices == (1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 12, 13)
    assert len(ds) == 2 and ds.num_instances == 5
    out = TrainDataset(ds, _stage1("s", "crowdpose"), seed=3)[0]
    assert out.image.shape == (640, 640, 3) and out.keypoints.shape[1:] == (14, 2)
    assert np.isfinite(out.keypoints).all()


# ----------------------------------------------------------------------------------------- synthetic files
def _write(tmp_path: Path, anns: list[dict], names: list[str] | None = None, images=None,
           skeleton=None) -> Path:
    names = names or list(COCO_KEYPOINTS.names)
    data = {
        "images": images or [{"id": 1, "file_name": "a.jpg", "width": 100, "height": 80},
                             {"id": 2, "file_name": "b.jpg", "width": 100, "height": 80},
                             {"id": 3, "file_name": "c.jpg", "width": 100, "height": 80}],
        "annotations": anns,
        "categories": [{"id": 1, "name": "person", "keypoints": names, "skeleton": skeleton or [[1, 2]]}],
    }
    p = tmp_path / "ann.json"
    p.write_text(json.dumps(data))
    return p


def _ann(i: int, img: int = 1, k: int = 17, **kw) -> dict:
    kp = []
    for j in range(k):
        kp += [10 + j, 20 + j, 2]
    a = {"id": i, "image_id": img, "category_id": 1, "bbox": [5, 5, 50, 60], "keypoints": kp,
         "num_keypoints": k, "iscrowd": 0, "area": 1234.0, "segmentation": [[5, 5, 55, 5, 55, 65]]}
    a.update(kw)
    return a


def test_malformed_annotations_skipped_with_ids(tmp_path):
    bad_kp = _ann(0)["keypoints"][:-3]
    anns = [
        _ann(1),
        _ann(2, bbox=None) | {"bbox": None},
        {k: v for k, v in _ann(3).items() if k != "keypoints"},
        _ann(4, keypoints=bad_kp),
        _ann(5, bbox=[5, 5, float("nan"), 10]),
        _ann(6, bbox=[5, 5, -3, 10]),
        _ann(7, bbox=[5, 5, 10, 0]),
        _ann(8, keypoints=["x"] * 51),
        _ann(9, img=99),
        _ann(10, img=2, iscrowd=1, num_keypoints=0, keypoints=[0] * 51),  # valid: an unlabelled crowd
        _ann(11, area="big"),
        "not an annotation",
    ]
    p = _write(tmp_path, anns)
    with pytest.warns(UserWarning, match="malformed") as rec:
        ds = CocoPoseDataset(p, tmp_path)
    msg = str(rec[0].message)
    reported = {i for i, _ in ds.malformed}
    assert reported == {2, 3, 4, 5, 6, 7, 8, 9, 11, None}
    for i in (2, 4, 5, 6, 7, 8, 9, 11):
        assert f"{i} (" in msg
    reasons = dict(ds.malformed)
    assert "51 keypoint values" not in reasons[4] and "48 keypoint values, expected 51" in reasons[4]
    assert "NaN" in reasons[5] and "not positive" in reasons[6] and "not positive" in reasons[7]
    # image 1: the good annotation (+ the zero/negative-size boxes only mask the heatmap, as mmpose);
    # image 2: the crowd annotation stays an instance (FilterAnnotations removes it later)
    assert [r.img_id for r in ds.records] == [1, 2]
    assert ds.records[0].ann_ids.tolist() == [1] and len(ds.records[0].invalid_segs) == 2
    assert ds.records[1].ann_ids.tolist() == [10] and len(ds.records[1].invalid_segs) == 1
    np.testing.assert_allclose(ds.records[0].bboxes[0], [5, 5, 55, 65])


def test_box_clipping_and_area_fallback(tmp_path):
    # x2 = x + w clipped to W - 1 = 99; no 'area': max(0.53 * clipped box area, 1)
    a = _ann(1, bbox=[-10, 30, 200, 20])
    del a["area"]
    ds = CocoPoseDataset(_write(tmp_path, [a]), tmp_path)
    np.testing.assert_allclose(ds.records[0].bboxes[0], [0, 30, 99, 50])
    np.testing.assert_allclose(ds.records[0].areas[0], 0.53 * 99 * 20, rtol=1e-6)


def test_missing_files_and_bad_json(tmp_path):
    with pytest.raises(FileNotFoundError, match="annotation file"):
        CocoPoseDataset(tmp_path / "nope.json", tmp_path)
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        CocoPoseDataset(tmp_path / "x.json", tmp_path)
    (tmp_path / "y.json").write_text(json.dumps({"images": []}))
    with pytest.raises(ValueError, match="not a COCO file"):
        CocoPoseDataset(tmp_path / "y.json", tmp_path)
    ds = CocoPoseDataset(_write(tmp_path, [_ann(1)]), tmp_path)
    with pytest.raises(FileNotFoundError, match="a.jpg"):
        ds.load(0)


def test_custom_keypoint_set(tmp_path):
    names = ["nose", "left_hand", "right_hand", "left_foot", "right_foot"]
    p = _write(tmp_path, [_ann(1, k=5)], names=names, skeleton=[[1, 2], [1, 3], [7, 9]])
    with pytest.warns(UserWarning, match="without OKS sigmas"):
        ds = CocoPoseDataset(p, tmp_path)
    info = ds.keypoint_info
    assert info.flip_indices == (0, 2, 1, 4, 3)
    assert info.skeleton == ((0, 1), (0, 2))  # 1-based edges; the out-of-range one is dropped
    assert ds.records[0].keypoints.shape == (1, 5, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = CocoPoseDataset(p, tmp_path, sigmas=[0.1] * 5)
    assert ds.keypoint_info.sigmas == (0.1,) * 5
    with pytest.raises(ValueError, match="sigmas"):
        CocoPoseDataset(p, tmp_path, sigmas=[0.1] * 4)
    with pytest.raises(ValueError, match="self-inverse"):
        CocoPoseDataset(p, tmp_path, sigmas=[0.1] * 5, flip_indices=[1, 2, 0, 3, 4])
    # a keypoint count that does not match the category is malformed, not a crash
    with pytest.warns(UserWarning, match="malformed"):
        ds = CocoPoseDataset(_write(tmp_path, [_ann(1, k=17), _ann(2, k=5)], names=names), tmp_path,
                             sigmas=[0.1] * 5)
    assert ds.records[0].ann_ids.tolist() == [2]
    assert flip_indices_from_names(COCO_KEYPOINTS.names) == COCO_KEYPOINTS.flip_indices


# ----------------------------------------------------------------------------------------- body7
def test_keypoint_converter_tables():
    # every table maps distinct targets; COCO->CrowdPose keeps the 12 body joints in order
    for tables, k in ((BODY7_TO_COCO, 17), (BODY7_TO_CROWDPOSE, 14)):
        assert set(tables) == {"coco", "aic", "crowdpose", "mpii", "jhmdb", "halpe", "posetrack"}
        for m in tables.values():
            KeypointConverter(k, m)  # validates
    # the official recipes carry the same tables
    from rtmo.train.recipes import TrainRecipe

    for name, tables in (("rtmo-l_16xb16-600e_body7-640x640", BODY7_TO_COCO),
                         ("rtmo-l_16xb16-700e_body7-crowdpose-640x640", BODY7_TO_CROWDPOSE)):
        rec = TrainRecipe.load(name)
        for spec in rec.data.train:
            assert tuple(tuple(p) for p in spec.mapping) == tables[spec.name], (name, spec.name)
    # conversion: CrowdPose left_shoulder (0) -> COCO 5; COCO nose has no source: zero and invisible
    conv = KeypointConverter(17, BODY7_TO_COCO["crowdpose"])
    kp = np.arange(14 * 2, dtype=np.float32).reshape(1, 14, 2)
    kpts, vis = conv(kp, np.ones((1, 14), np.float32))
    np.testing.assert_array_equal(kpts[0, 5], kp[0, 0])
    np.testing.assert_array_equal(kpts[0, 16], kp[0, 11])
    assert (kpts[0, :5] == 0).all() and (vis[0, :5] == 0).all() and (vis[0, 5:] == 1).all()
    with pytest.raises(ValueError, match="reads source keypoint"):
        conv(kp[:, :5], np.ones((1, 5), np.float32))


def test_converted_dataset_uses_target_metadata():
    ds = CocoPoseDataset(need(CROWD_DIR / "test_crowdpose.json"), CROWD_DIR,
                         converter=KeypointConverter(17, BODY7_TO_COCO["crowdpose"]))
    assert ds.keypoint_info == COCO_KEYPOINTS
    s = ds.load(0)
    assert s.keypoints.shape[1:] == (17, 2) and s.flip_indices == COCO_KEYPOINTS.flip_indices


class _Stub:
    """A dataset of `n` items for the resampling arithmetic."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.keypoint_info = COCO_KEYPOINTS

    def __len__(self) -> int:
        return self.n


def test_combined_resampling():
    a, b, c = _Stub(10), _Stub(7), _Stub(3)
    cd = CombinedDataset([a, b, c], [1.0, 0.3, 0.5])
    # epoch length: sum of round(len * r) = 10 + round(2.1) + round(1.5) = 10 + 2 + 2 (banker's rounding)
    assert len(cd) == 14 and cd.lens == [10, 2, 2]
    rng = np.random.default_rng(0)
    assert [cd.locate(i, rng) for i in range(10)] == [(0, i) for i in range(10)]
    # the j-th index of a resampled set is a random member of the j-th of round(len*r) strata
    hits = {(i, j): set() for i in (1, 2) for j in range(2)}
    for _ in range(300):
        for g, (i, j) in zip(range(10, 14), [(1, 0), (1, 1), (2, 0), (2, 1)]):
            d, local = cd.locate(g, rng)
            assert d == i
            hits[(i, j)].add(local)
    assert hits[(1, 0)] == {0, 1, 2, 3} and hits[(1, 1)] == {3, 4, 5, 6}  # gap 3.49995
    assert hits[(2, 0)] == {0, 1} and hits[(2, 1)] == {1, 2}  # gap 1.49995
    with pytest.raises(IndexError):
        cd.locate(14, rng)
    with pytest.raises(ValueError, match="keypoint counts"):
        crowd = _Stub(3)
        crowd.keypoint_info = CROWDPOSE_KEYPOINTS
        CombinedDataset([a, crowd])


# ----------------------------------------------------------------------------------------- wiring
def test_collate_feeds_the_losses(coco):
    torch = pytest.importorskip("torch")
    from rtmo.config import RTMOConfig
    from rtmo.model import RTMO
    from rtmo.train.losses import Targets, compute_losses

    td = TrainDataset(coco, _stage1("t", "body7"), seed=0)
    images, targets = collate([td[0], td[3]])
    assert isinstance(targets[0], Targets) and targets[0].heatmap_mask is None
    assert images.shape == (2, 3, 416, 416) and targets[0].labels.dtype == torch.long
    torch.manual_seed(0)
    model = RTMO(RTMOConfig.preset("t")).train()
    from rtmo.train.data import resize_batch

    images, targets = resize_batch(images, targets, (320, 320))  # smaller: a quicker CPU forward
    with torch.no_grad():
        out = compute_losses(model, images, targets, criterion("t", "body7", 1))
    assert all(torch.isfinite(v).all() for k, v in out.items() if k.startswith("loss"))


def test_build_train_data_from_recipe(coco):
    from rtmo.train.recipes import DatasetSpec, TrainRecipe

    rec = TrainRecipe.load("rtmo-t_8xb32-600e_body7-416x416")
    spec = DatasetSpec(name="coco", ann_file="coco/test_coco.json", img_prefix="coco/", ratio=1.0,
                       mapping=[[i, i] for i in range(17)])
    rec.data.root = str(need(SHARED / "data"))
    rec.data.train = [spec, DatasetSpec(name="crowdpose", ann_file="crowdpose/test_crowdpose.json",
                                        img_prefix="crowdpose/", ratio=0.5,
                                        mapping=[list(p) for p in BODY7_TO_COCO["crowdpose"]])]
    rec.data.stage2_train = [spec]
    data = build_train_data(rec)
    d1, d2 = data.build_dataset(1), data.build_dataset(2)
    assert len(d1) == 4 + 1 and len(d2) == 4  # round(2 * 0.5) = 1 CrowdPose image per epoch
    d1.seed = d2.seed = 0
    images, targets = data.collate_fn([d1[0], d1[4]])
    assert images.shape == (2, 3, 416, 416) and targets[1].keypoints.shape[1:] == (17, 2)
    images, targets = data.collate_fn([d2[1], d2[2]])
    assert targets[0].heatmap_mask.shape == (416, 416)
    assert data.build_dataset(1) is d1  # built once


# ----------------------------------------------------------------------------------------- robustness
def test_mpii_list_format_as_mmpose_reads_it(tmp_path):
    """mmpose's MpiiDataset: scale x 200 px, centre y + 15 px per 200 px of scale, centre - 1 (MATLAB),
    box = centre +- scale / 2, area 0.53 x box; two people of one image form one record."""
    joints = [[30.0 + j, 40.0 + j] for j in range(16)]
    anns = [{"image": "015601864.jpg", "center": [100.0, 80.0], "scale": 1.0, "joints": joints,
             "joints_vis": [1] * 15 + [0]},
            {"image": "015601864.jpg", "center": [300.0, 200.0], "scale": 0.5, "joints": joints,
             "joints_vis": [1] * 16},
            {"image": "000000002.jpg", "center": [50.0, 50.0], "scale": 0.25, "joints": joints,
             "joints_vis": [1] * 16}]
    p = tmp_path / "mpii_train.json"
    p.write_text(json.dumps(anns))
    conv = KeypointConverter(17, BODY7_TO_COCO["mpii"])
    ds = CocoPoseDataset(p, tmp_path, converter=conv)
    assert len(ds) == 2 and ds.records[0].path.endswith("015601864.jpg")
    # person 1: centre (100, 80 + 15) - 1 = (99, 94), side 200 -> [-1, -6, 199, 194] (no clipping)
    # person 2: centre (300, 200 + 7.5) - 1 = (299, 206.5), side 100 -> [249, 156.5, 349, 256.5]
    np.testing.assert_allclose(ds.records[0].bboxes, [[-1, -6, 199, 194], [249, 156.5, 349, 256.5]])
    np.testing.assert_allclose(ds.records[0].areas, [0.53 * 200 * 200, 0.53 * 100 * 100], rtol=1e-6)
    np.testing.assert_allclose(ds.records[0].keypoints[0], joints)  # joints are not shifted
    assert ds.records[0].keypoints_visible[0].tolist() == [1] * 15 + [0]
    assert ds.keypoint_info.num_keypoints == 17


def test_jhmdb_boxes_and_keypoints_lose_the_matlab_one(tmp_path):
    names = [f"j{i}" for i in range(15)]
    kp = []
    for j in range(15):
        kp += [11.0 + j, 21.0 + j, 2]
    ann = {"id": 1, "image_id": 1, "category_id": 1, "bbox": [11, 21, 50, 50], "keypoints": kp,
           "num_keypoints": 15, "iscrowd": 0, "area": 900.0}
    p = _write(tmp_path, [ann], names=names)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # custom set without sigmas
        plain = CocoPoseDataset(p, tmp_path)
        ds = CocoPoseDataset(p, tmp_path, one_based=True)
    np.testing.assert_allclose(plain.records[0].bboxes[0], [11, 21, 61, 71])
    np.testing.assert_allclose(ds.records[0].bboxes[0], [10, 20, 60, 70])
    np.testing.assert_allclose(ds.records[0].keypoints[0, 0], [10, 20])
    np.testing.assert_allclose(ds.records[0].keypoints[0] + 1, plain.records[0].keypoints[0])


def test_no_usable_annotation_is_an_error(tmp_path):
    anns = [_ann(1, iscrowd=1), _ann(2, num_keypoints=0, keypoints=[0] * 51), _ann(3, bbox=[1, 1, -5, 2])]
    with pytest.raises(ValueError, match="ann.json: no usable person annotation"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            CocoPoseDataset(_write(tmp_path, anns), tmp_path)


def test_unreadable_training_images_skipped_up_to_a_cap(tmp_path, monkeypatch):
    """A truncated JPEG (which OpenCV alone would decode into a half-grey picture) is found by the
    inference decoder, reported by name and replaced by the next image; past the cap, training stops
    with one message naming the file. Missing files are found before the first step."""
    import rtmo.train.data.coco as dsmod

    src = COCO_DIR / "000000000785.jpg"
    if not src.exists():
        pytest.skip(f"{src} not found")
    for name in ("a.jpg", "c.jpg"):
        (tmp_path / name).write_bytes(src.read_bytes())
    (tmp_path / "b.jpg").write_bytes(src.read_bytes()[:5000])  # cut off: no end-of-image marker
    p = _write(tmp_path, [_ann(1, img=1), _ann(2, img=2), _ann(3, img=3)])
    with pytest.raises(FileNotFoundError, match=r"1 of 3 training images cannot be read.*b\.jpg: truncated"):
        CocoPoseDataset(p, tmp_path).load(1)
    monkeypatch.setattr(dsmod, "MAX_UNREADABLE_FRACTION", 0.5)
    ds = CocoPoseDataset(p, tmp_path)
    with pytest.warns(UserWarning, match=r"b\.jpg: truncated"):
        s = ds.load(1)
    assert s.img_path.endswith("c.jpg")
    (tmp_path / "c.jpg").unlink()
    with pytest.warns(UserWarning, match=r"1 of 3 images are missing or empty.*c\.jpg"):
        ds = CocoPoseDataset(p, tmp_path, check_images=True)
    assert [Path(r.path).name for r in ds.records] == ["a.jpg", "b.jpg"]
