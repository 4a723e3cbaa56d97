"""`rtmo train` end to end on user data: a custom 5-keypoint COCO-format set (names, skeleton, sigmas and
flip pairs flow from the annotation file and recipe into the model and its checkpoint), and a ResNet-18
backbone; the checkpoints load back with `ModelManager.get` and predict."""

from __future__ import annotations

import json

import pytest
import torch

from rtmo import ModelManager
from rtmo.cli import main

from .conftest import DATA

PICK = (0, 9, 10, 15, 16)  # COCO nose, wrists, ankles
NAMES = ["head", "left_hand", "right_hand", "left_foot", "right_foot"]
SIGMAS = [0.05, 0.07, 0.07, 0.09, 0.09]

RECIPE = """
variant = "t"
input_size = [128, 128]
[data]
batch_size = 2
workers = 0
{train}
[augment]
multiscale_range = [128, 128]
mixup_prob = 0.0
[schedule]
epochs = 2
warmup_epochs = 1
cosine1 = [1, 1, 1]
bump_epoch = 1
cosine2 = [1, 1, 1]
head_switch_epoch = 1
num_last_epochs = 1
[runtime]
val_interval = 1
checkpoint_interval = 1
log_interval = 1
amp = false
[ema]
enabled = false
"""


@pytest.fixture(scope="module")
def custom_ann(tmp_path_factory):
    src = DATA / "coco" / "test_coco.json"
    if not src.is_file():
        pytest.skip(f"{src} not available")
    coco = json.loads(src.read_text())
    for a in coco["annotations"]:
        k = [a["keypoints"][3 * i:3 * i + 3] for i in PICK]
        a["keypoints"] = [v for kp in k for v in kp]
        a["num_keypoints"] = sum(1 for kp in k if kp[2] > 0)
    coco["categories"] = [{"id": 1, "name": "person", "keypoints": NAMES,
                           "skeleton": [[1, 2], [1, 3], [1, 4], [1, 5]]}]
    path = tmp_path_factory.mktemp("custom") / "custom5.json"
    path.write_text(json.dumps(coco))
    return path


def test_custom_keypoint_set_trains_and_round_trips(custom_ann, tmp_path):
    images = DATA / "coco"
    train = (f'train = [{{ name = "custom5", ann_file = "{custom_ann}", img_prefix = "{images}", '
             f'sigmas = {SIGMAS} }}]')
    recipe = tmp_path / "custom.toml"
    recipe.write_text(RECIPE.format(train=train))
    out = tmp_path / "run"
    rc = main(["train", str(recipe), "--output", str(out), "--val-ann", str(custom_ann), "--val-images",
               str(images), "--backbone-init", ""])
    assert rc == 0
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["type"] for r in recs].count("val") == 2 and "AP" in recs[-1]

    model = ModelManager.get(out / "last.pth")
    info = model.keypoint_info
    assert model.config.num_keypoints == 5 and list(info.names) == NAMES
    assert info.flip_indices == (0, 2, 1, 4, 3)  # from the left_/right_ names
    assert info.skeleton == ((0, 1), (0, 2), (0, 3), (0, 4))
    assert list(info.sigmas) == pytest.approx(SIGMAS)
    assert torch.allclose(model.head.loss_oks.sigmas, torch.tensor(SIGMAS))  # what SimOTA/OKS loss used
    result = model.infer(str(images / "000000197388.jpg"), threshold=0.0)
    assert result.keypoints.shape[1:] == (5, 2)


def test_resnet18_backbone_trains_and_loads(tmp_path):
    src = DATA / "coco" / "test_coco.json"
    if not src.is_file():
        pytest.skip(f"{src} not available")
    recipe = tmp_path / "r18.toml"
    train = f'train = [{{ name = "coco", ann_file = "{src}", img_prefix = "{src.parent}" }}]'
    recipe.write_text(RECIPE.format(train=train))
    out = tmp_path / "run"
    assert main(["train", str(recipe), "--output", str(out), "--backbone", "resnet18"]) == 0
    model = ModelManager.get(out / "last.pth")
    cfg = model.config.backbone_config
    assert type(cfg).__name__ == "ResNetConfig" and cfg.depth == 18
    assert model.backbone.layer1[0].conv1.weight.shape == (64, 64, 3, 3)
    assert model.infer(str(src.parent / "000000197388.jpg"), threshold=0.0).keypoints.shape[1:] == (17, 2)
