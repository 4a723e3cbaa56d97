"""Architecture: parameter counts (summed over mmpose's module structure) and the official key lists
(fixtures/keys)."""

from __future__ import annotations

import re

import pytest
import torch

from rtmo import RTMO, CSPConfig, RTMOConfig
from rtmo.hub.zoo import CheckpointError, detect_config, load_state_dict_checked
from rtmo.model import num_parameters

from .conftest import FIXTURES

# Learnable parameter totals of mmpose's RTMO models, per size and keypoint count (COCO 17, CrowdPose 14).
PARAMS = {("t", 17): 6_829_875, ("s", 17): 9_868_899, ("m", 17): 22_526_307, ("l", 17): 44_693_315,
          ("s", 14): 9_765_678, ("m", 14): 22_372_254, ("l", 14): 44_488_430}


@pytest.mark.parametrize("variant,k", sorted(PARAMS))
def test_parameter_counts(variant, k):
    assert num_parameters(RTMO(RTMOConfig.preset(variant, k))) == PARAMS[(variant, k)]


def read_keys(path):
    keys = {}
    for line in path.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, shape = line.split("\t")[:2]
        keys[name] = tuple(int(v) for v in re.findall(r"\d+", shape))
    return keys


KEY_FILES = sorted((FIXTURES / "keys").glob("*.txt")) if (FIXTURES / "keys").is_dir() else []


@pytest.mark.skipif(not KEY_FILES, reason="fixtures/keys not found")
@pytest.mark.parametrize("key_file", KEY_FILES, ids=lambda p: p.stem)
def test_official_keys_detect_and_load_strictly(key_file):
    """Every official key list: architecture detected from shapes alone, then a strict load."""
    keys = read_keys(key_file)
    fake = {k: torch.zeros(s, dtype=torch.int64 if k.endswith("num_batches_tracked") else torch.float32)
            for k, s in keys.items()}
    cfg = detect_config(fake)
    expected_variant = key_file.stem.split("_")[0].split("-")[1]
    assert cfg.variant == expected_variant
    assert cfg.num_keypoints == (14 if "crowdpose" in key_file.stem else 17)
    assert cfg.input_size == ((416, 416) if expected_variant == "t" else (640, 640))
    model = RTMO(cfg)
    assert set(model.state_dict()) == set(keys)
    load_state_dict_checked(model, fake)


def test_wrong_checkpoint_lists_the_problem():
    s_keys = RTMO(RTMOConfig.preset("s")).state_dict()
    model = RTMO(RTMOConfig.preset("t"))
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_state_dict_checked(model, s_keys)
    partial = dict(model.state_dict())
    partial.pop("head.dcc.pos_enc")
    partial["head.extra"] = torch.zeros(1)
    with pytest.raises(CheckpointError) as e:
        load_state_dict_checked(model, partial)
    assert "missing (1): head.dcc.pos_enc" in str(e.value) and "unexpected (1): head.extra" in str(e.value)


def test_detect_rejects_non_rtmo():
    with pytest.raises(CheckpointError, match="not an RTMO checkpoint"):
        detect_config({"fc.weight": torch.zeros(3, 3)})


def test_config_presets():
    assert CSPConfig("large").widen_factor == 1.0
    with pytest.raises(ValueError, match="size"):
        CSPConfig("huge")
    with pytest.raises(ValueError, match="variant"):
        RTMOConfig.preset("x")
    assert RTMOConfig.preset("m").variant == "m"


@pytest.mark.parametrize("depth,channels", [(18, (128, 256, 512)), (50, (512, 1024, 2048))])
def test_resnet_backbone_builds_runs_and_loads_torchvision_names(depth, channels, tmp_path):
    from rtmo.config import ResNetConfig

    cfg = RTMOConfig(backbone_config=ResNetConfig(depth))
    model = RTMO(cfg).eval()
    assert model.backbone.out_channels == channels
    assert [m.in_channels for m in (p.conv for p in model.neck.input_proj)] == list(channels)
    feats = model.backbone(torch.zeros(1, 3, 128, 128))
    assert [f.shape[1:] for f in feats] == [(c, s, s) for c, s in zip(channels, (16, 8, 4))]
    out = model(torch.rand(2, 3, 128, 128) * 255, threshold=0.0).outputs.per_image_lists()
    assert len(out["pred_keypoints"]) == 2 and out["pred_keypoints"][0].shape[1:] == (17, 2)
    # A torchvision ImageNet file has exactly these names plus the classifier, which is dropped.
    own = model.backbone.state_dict()
    sd = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in own.items()}
    for key in ("conv1.weight", "bn1.running_var", "layer2.0.downsample.0.weight", "layer4.1.bn2.bias"):
        assert key in sd
    sd["fc.weight"], sd["fc.bias"] = torch.zeros(1000, channels[-1]), torch.zeros(1000)
    torch.save(sd, tmp_path / "imagenet.pth")
    loaded = RTMO(RTMOConfig(backbone_config=ResNetConfig(depth, pretrained=str(tmp_path / "imagenet.pth"))))
    assert torch.equal(loaded.backbone.layer2[0].downsample[0].weight, sd["layer2.0.downsample.0.weight"])
