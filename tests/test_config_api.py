"""The documented configuration API: the brief's two examples as written, pretrained backbones offline,
and the grid-prior generator parameters end to end (priors, decoding, training, export)."""

from __future__ import annotations

import hashlib
import io
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch

import rtmo
from rtmo import CSPConfig, RTMOConfig
from rtmo.hub.zoo import REGISTRY, ZooEntry, read_checkpoint
from rtmo.ops.boxes import grid_priors
from rtmo.utils.downloads import BACKBONES, BackboneEntry, DownloadError

from .conftest import DATA, FIXTURES, fixture_checkpoint


def _offline(*args, **kwargs):
    raise urllib.error.URLError("network unreachable (test)")


@pytest.fixture()
def yolox_s_in_cache(tmp_path, monkeypatch):
    """A YOLOX-s-shaped detector checkpoint in the cache under the registry's name for `small`, the entry's
    checksum set to the file's (a real file's checksum cannot be forged), the network switched off."""
    torch.manual_seed(3)
    donor = rtmo.RTMO(RTMOConfig.preset("s"))
    state = {"backbone." + k: v for k, v in donor.backbone.state_dict().items()}
    state["neck.dummy"] = torch.zeros(1)  # a detector file holds more than the backbone
    buf = io.BytesIO()
    torch.save({"meta": {"epoch": 300}, "state_dict": state}, buf)
    data = buf.getvalue()
    digest = hashlib.sha256(data).hexdigest()[:8]
    entry = BackboneEntry("yolox-s", f"https://example.invalid/yolox_s_test-{digest}.pth", digest)
    monkeypatch.setitem(BACKBONES, "yolox-s", entry)
    monkeypatch.setenv("RTMO_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(urllib.request, "urlopen", _offline)
    (tmp_path / entry.filename).write_bytes(data)
    return donor


def test_custom_configuration_example_as_documented(yolox_s_in_cache):
    from rtmo import RTMO, CSPConfig, RTMOConfig

    backbone_config = CSPConfig(size="small", use_pretrained=True)
    config = RTMOConfig(backbone_config=backbone_config, num_classes=1, num_keypoints=17)
    model = RTMO(config)
    for k, v in yolox_s_in_cache.backbone.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[k], v), k
    assert config.variant == "s"  # how the backbone was initialised is not architecture


def test_use_pretrained_false_is_random_and_a_local_file_works_offline(yolox_s_in_cache, tmp_path):
    torch.manual_seed(0)
    plain = rtmo.RTMO(RTMOConfig(backbone_config=CSPConfig(size="small")))
    w = "stem.conv.conv.weight"
    assert not torch.equal(plain.backbone.state_dict()[w], yolox_s_in_cache.backbone.state_dict()[w])
    local = next(tmp_path.glob("yolox_s_test-*.pth")).rename(tmp_path / "my_yolox.pth")
    model = rtmo.RTMO(RTMOConfig(backbone_config=CSPConfig(size="small", use_pretrained=True,
                                                           pretrained=str(local))))
    assert torch.equal(model.backbone.state_dict()[w], yolox_s_in_cache.backbone.state_dict()[w])


def test_use_pretrained_offline_names_the_file_and_where_to_put_it(tmp_path, monkeypatch):
    monkeypatch.setenv("RTMO_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(urllib.request, "urlopen", _offline)
    with pytest.raises(DownloadError) as e:
        rtmo.RTMO(RTMOConfig(backbone_config=CSPConfig(size="small", use_pretrained=True)))
    msg = str(e.value)
    assert BACKBONES["yolox-s"].url in msg and str(tmp_path / "cache" / BACKBONES["yolox-s"].filename) in msg
    with pytest.raises(DownloadError, match="resnet18-f37072fd.pth"):
        rtmo.RTMO(RTMOConfig(backbone_config=rtmo.config.ResNetConfig(18, use_pretrained=True)))


def test_quick_start_example_with_a_pil_image(monkeypatch, tmp_path):
    """ModelManager.get(official name) -> infer(PIL image) -> detections with label and conf; the name is
    served from the cache (the fixture file under a registry entry carrying its checksum)."""
    from PIL import Image

    data = fixture_checkpoint("t").read_bytes()
    digest = hashlib.sha256(data).hexdigest()[:8]
    entry = ZooEntry("rtmo-s-coco", f"rtmo-t_test-{digest}_20231211.pth", "t", 17, (416, 416), "body7",
                     "COCO val2017", 0.0)
    monkeypatch.setitem(REGISTRY, "rtmo-s-coco", entry)
    monkeypatch.setenv("RTMO_CACHE_DIR", str(tmp_path))
    (tmp_path / entry.filename).write_bytes(data)

    from rtmo import ModelManager

    model = ModelManager.get("rtmo-s-coco")
    image = Image.open(DATA / "coco" / "000000197388.jpg")
    result = model.infer(image, threshold=0.5)
    assert len(result.detections) > 0
    for detection in result.detections:
        assert detection.label == "person" and 0.5 < detection.conf <= 1.0
        x1, y1, x2, y2 = detection.bbox
        # as in mmpose, boxes are clamped to the letterboxed canvas, which here pads above and below
        assert 0 <= x1 <= x2 <= image.width and y1 <= y2
        assert detection.keypoints.shape == (17, 3)


# ------------------------------------------------------------------------------------ point generator

def test_point_generator_defaults_are_the_official_ones():
    cfg = RTMOConfig()
    assert cfg.featmap_strides_pointgenerator == (16, 32) and cfg.centralize_points_pointgenerator is True
    priors, strides = grid_priors([(2, 3), (1, 2)], (16, 32))
    np.testing.assert_array_equal(priors[:3].numpy(), [[7.5, 7.5], [23.5, 7.5], [39.5, 7.5]])
    np.testing.assert_array_equal(priors[6:].numpy(), [[15.5, 15.5], [47.5, 15.5]])
    corners, _ = grid_priors([(2, 3), (1, 2)], (16, 32), centralize=False)
    np.testing.assert_array_equal(corners[:3].numpy(), [[0, 0], [16, 0], [32, 0]])
    np.testing.assert_array_equal(strides.numpy(), [16] * 6 + [32] * 2)
    with pytest.raises(ValueError, match="one positive integer stride per head level"):
        RTMOConfig(featmap_strides_pointgenerator=(16,))


def _fixture_model_with(**overrides) -> rtmo.RTMO:
    cfg = RTMOConfig.preset("t")
    for k, v in overrides.items():
        setattr(cfg, k, v)
    model = rtmo.RTMO(cfg)
    model.load_state_dict(read_checkpoint(fixture_checkpoint("t"))[0])
    return model.eval()


def test_corner_points_shift_decoded_boxes_by_the_offset():
    """Boxes decode as raw * stride + prior: with corner points every box moves by (stride - 1) / 2."""
    centred, corner = _fixture_model_with(), _fixture_model_with(centralize_points_pointgenerator=False)
    from rtmo.infer.api import preprocess
    from rtmo.infer.image import read_image

    img = read_image(DATA / "coco" / "000000197388.jpg")

    batch = torch.from_numpy(preprocess([img], (416, 416))[0])
    with torch.no_grad():
        maps = centred.forward_maps(batch)
    p_c, s_c = centred.priors(maps)
    p_k, _ = corner.priors(maps)
    torch.testing.assert_close(p_c - p_k, ((s_c - 1) / 2)[:, None].expand_as(p_c), rtol=0, atol=0)


def test_corner_points_train_and_export(tmp_path):
    """A non-default generator goes through SimOTA and the losses, and the ONNX graph uses it too (the
    export self-check compares the graph with this model; a graph with centred points would fail it)."""
    from rtmo.export.onnx import export_onnx
    from rtmo.export.runtime import OnnxRuntimeModel
    from rtmo.train.losses import Criterion, Targets

    with np.load(FIXTURES / "train_rtmo-t_seed0" / "batch.npz") as b:  # mmpose's training batch
        images = torch.from_numpy(b["inputs_uint8"]).float()
        targets = [Targets(*(torch.from_numpy(b[f"b{i}_{k}"]) for k in (
            "bboxes", "keypoints", "keypoints_visible", "areas", "labels"))) for i in range(4)]
    corner = _fixture_model_with(centralize_points_pointgenerator=False)
    centred = _fixture_model_with()
    corner.train()
    centred.train()
    corner.criterion = centred.criterion = Criterion()  # stage-1 losses
    total_k, total_c = corner(images, targets).loss.loss, centred(images, targets).loss.loss
    assert torch.isfinite(total_k) and float(total_k.detach()) != float(total_c.detach())
    total_k.backward()
    assert corner.head.head_module.out_bbox[0].weight.grad.abs().sum() > 0

    corner.eval()
    path = export_onnx(corner, tmp_path / "corner.onnx", simplify=False, check=True,
                       check_images=[str(DATA / "coco" / "000000197388.jpg")])
    image = str(DATA / "coco" / "000000197388.jpg")
    got, ref = OnnxRuntimeModel(path).infer(image), corner.infer(image)
    assert len(got) == len(ref) > 0
    np.testing.assert_allclose(np.sort(got.boxes[:, 0]), np.sort(ref.boxes[:, 0]), atol=1e-2)
