"""The typed model outputs: `model(images)` -> KeypointOutput padded to the batch's largest count,
`model(images, targets)` -> RTMOLoss, for B = 1 and B = 3 with different detection counts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rtmo.infer.api import preprocess
from rtmo.infer.image import read_image
from rtmo.outputs import KEYPOINT_FIELDS, KeypointOutput, RTMOLoss, RTMOModelOutput

from .conftest import DATA, FIXTURES, fixture_checkpoint, fixture_model

STEMS = ("000000197388", "000000040083", "000000000785")


@pytest.fixture(scope="module")
def batch3() -> torch.Tensor:
    images = [read_image(DATA / "coco" / f"{s}.jpg") for s in STEMS]
    return torch.from_numpy(preprocess(images, (416, 416))[0])


def test_eval_output_b1_and_b3(batch3):
    model = fixture_model("t")
    # thresholds that give the three images different counts
    out3 = model(batch3, threshold=0.6)
    assert isinstance(out3, RTMOModelOutput) and out3.loss is None
    o = out3.outputs
    counts = o.num_detections.tolist()
    assert len(counts) == 3 and len(set(counts)) > 1, counts
    b, n, k = 3, max(counts), 17
    assert o.scores.shape == o.labels.shape == o.bbox_scores.shape == (b, n)
    assert o.pred_bboxes.shape == (b, n, 4) and o.pred_keypoints.shape == (b, n, k, 2)
    assert o.keypoint_scores.shape == o.keypoints_visible.shape == (b, n, k)
    assert o.valid.tolist() == [[j < c for j in range(n)] for c in counts]
    assert (o.scores[~o.valid] == 0).all() and (o.pred_keypoints[~o.valid] == 0).all()  # padding
    # the per-image views are exactly what predict_batch gives, image by image
    ref = model.predict_batch(batch3, threshold=0.6).per_image_lists()
    for i, view in enumerate(o.per_image()):
        for f in KEYPOINT_FIELDS:
            assert torch.equal(view[f], ref[f][i]), (i, f)
    one = model(batch3[1:2], threshold=0.6).outputs
    assert one.scores.shape == (1, counts[1]) and one.num_detections.tolist() == [counts[1]]


def _per_image(rand, zeros) -> dict:
    per = {f: [rand(2, 17) if "keypoint" in f else rand(2, 17, 2) if f == "pred_keypoints"
               else rand(2, 4) if f == "pred_bboxes" else rand(2), zeros((0, 17))
               if "keypoint" in f else zeros((0, 17, 2)) if f == "pred_keypoints"
               else zeros((0, 4)) if f == "pred_bboxes" else zeros(0)] for f in KEYPOINT_FIELDS}
    # the documented second names are the same arrays as the ones they name
    per["bbox_scores"], per["keypoints_visible"] = per["scores"], per["keypoint_scores"]
    return per


def test_from_per_image_round_trip_with_an_empty_image():
    per = _per_image(torch.rand, torch.zeros)
    out = KeypointOutput.from_per_image(per)
    assert out.num_detections.tolist() == [2, 0] and out.scores.shape == (2, 2)
    back = out.per_image_lists()
    for f in KEYPOINT_FIELDS:
        assert all(torch.equal(a, b) for a, b in zip(back[f], per[f])), f


def test_numpy_outputs_as_the_exported_runtimes_give_them():
    """The same type without torch arrays: padding, validity mask, views, aliases."""
    rng = np.random.default_rng(0)
    per = _per_image(lambda *s: rng.random(s, dtype=np.float32),
                     lambda s: np.zeros(s, np.float32))
    out = KeypointOutput.from_per_image(per)
    assert isinstance(out.scores, np.ndarray) and out.num_detections.tolist() == [2, 0]
    assert out.valid.tolist() == [[True, True], [False, False]] and out.numpy() is out
    assert out.bbox_scores is out.scores and out.keypoints_visible is out.keypoint_scores
    back = out.per_image_lists()
    for f in KEYPOINT_FIELDS:
        assert all(np.array_equal(a, b) for a, b in zip(back[f], per[f])), f
    t = KeypointOutput.from_per_image({k: [torch.from_numpy(x) for x in v] for k, v in per.items()})
    assert all(np.array_equal(getattr(t.numpy(), f), getattr(out, f)) for f in KEYPOINT_FIELDS)


def test_training_output_is_an_rtmo_loss():
    from rtmo import ModelManager
    from rtmo.train.losses import Criterion, Targets

    with np.load(FIXTURES / "train_rtmo-t_seed0" / "batch.npz") as z:
        images = torch.from_numpy(z["inputs_uint8"]).float()
        targets = [Targets(*(torch.from_numpy(z[f"b{i}_{k}"]) for k in (
            "bboxes", "keypoints", "keypoints_visible", "areas", "labels"))) for i in range(4)]
    model = ModelManager.get(fixture_checkpoint("t"), device="cpu")  # its own copy: train mode updates BN
    model.train()
    model.criterion = Criterion()  # stage-1 losses
    for imgs, tgts in ((images[:1], targets[:1]), (images[1:], targets[1:])):  # B = 1 and B = 3
        out = model(imgs, tgts)
        assert isinstance(out, RTMOModelOutput) and out.outputs is None
        loss = out.loss
        assert isinstance(loss, RTMOLoss)
        terms = loss.as_dict()
        assert set(terms) == {"loss", "loss_cls", "loss_bbox", "loss_vis", "loss_oks", "loss_mle"}
        parts = sum(v for k, v in terms.items() if k != "loss")
        torch.testing.assert_close(loss.loss, parts)  # the weighted sum of the terms
        assert float(loss.num_pos) >= len(tgts)
    with pytest.raises(ValueError, match="unknown loss entries"):
        RTMOLoss.from_dict({"loss": torch.zeros(()), "loss_x": torch.zeros(())})
