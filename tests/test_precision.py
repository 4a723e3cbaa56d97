"""Reduced precision through the public API: torch bf16, OpenVINO bf16, INT8 files calibrated on the shared
images, each against fp32 on the RTMO-t fixture.

Why these tolerances: the fixture weights are random, and random weights amplify rounding (the fixture
README; their DCC heatmaps are near one-hot). Measured on 000000000785 / 103319 at threshold 0.5 against
fp32 ONNX Runtime: bf16 moves boxes by a median of 3-5 px and scores by <= 0.01; INT8 boxes by 13-19 px,
scores by <= 0.035, keypoints by ~130 px (meaningless on random weights). So these tests check that each
path finds the same people (>= 90 % of fp32's detections with score >= 0.5 matched at box IoU >= 0.5) with
bounded drift (box median: bf16 <= 10 px, INT8 <= 30 px; score median: bf16 <= 0.05, INT8 <= 0.1, as
the nearest-box match sometimes pairs neighbours in the crowd, measured up to 0.057): a broken path (wrong
layout, lost quantization ranges, a float part quantized) fails that. Accuracy in pixels and AP is
measured on a trained checkpoint by bench/precision_accuracy.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rtmo import ModelManager
from rtmo.ops.boxes import box_iou

from .conftest import DATA, fixture_checkpoint, fixture_dir, fixture_model

IMAGE = "crowdpose/103319.jpg"


def _mmdeploy():
    p = fixture_dir("t") / "mmdeploy" / "end2end.onnx"
    if not p.is_file():
        pytest.skip(f"missing {p}")
    return p


def _close_to_fp32(ref, got, box_px: float, score: float = 0.05) -> None:
    keep = ref.scores >= 0.5
    assert keep.sum() >= 5
    iou = box_iou(torch.from_numpy(ref.boxes[keep]), torch.from_numpy(got.boxes)).numpy()
    best, j = iou.max(1), iou.argmax(1)
    assert (best >= 0.5).mean() >= 0.9, best
    assert np.median(np.abs(ref.boxes[keep] - got.boxes[j])) <= box_px
    assert np.median(np.abs(ref.scores[keep] - got.scores[j])) <= score


@pytest.fixture(scope="module")
def fp32():
    return ModelManager.get(_mmdeploy()).infer(str(DATA / IMAGE))


def _bf16_cpu() -> bool:
    from rtmo.model import cpu_has_bf16

    return cpu_has_bf16()


def test_torch_bf16(fp32):
    ckpt = fixture_checkpoint("t")
    if not _bf16_cpu():
        with pytest.raises(ValueError, match="bf16"):
            ModelManager.get(ckpt, device="cpu", precision="bf16")
        pytest.skip("this CPU has no bf16 units: the refusal was checked")
    m = ModelManager.get(ckpt, device="cpu", precision="bf16")
    assert m.precision == "bf16"
    _close_to_fp32(fp32, m.infer(str(DATA / IMAGE)), box_px=10)


def test_precision_refusals():
    ckpt = fixture_checkpoint("t")
    with pytest.raises(ValueError, match="needs a CUDA device"):
        ModelManager.get(ckpt, device="cpu", precision="fp16")
    with pytest.raises(ValueError, match="precision must be one of"):
        ModelManager.get(ckpt, device="cpu", precision="int4")
    with pytest.raises(ValueError, match="ONNX Runtime runs the file's own precision"):
        ModelManager.get(_mmdeploy(), precision="bf16")


def test_openvino_bf16(fp32):
    pytest.importorskip("openvino")
    if not _bf16_cpu():
        pytest.skip("this CPU has no bf16 units")
    m = ModelManager.get(_mmdeploy(), backend="openvino", precision="bf16")
    assert m.precision == "bf16" and "bf16" in repr(m)
    _close_to_fp32(fp32, m.infer(str(DATA / IMAGE)), box_px=10)


def test_openvino_bf16_keeps_rtmo_decoder_in_float32(tmp_path):
    """On rtmo's own export, OpenVINO bf16 runs the network at bf16 and the decoder (selection, NMS, DCC)
    at float32; mmdeploy's graph, with no rtmo decoder to cut, runs whole. The two halves chained at
    float32 give the whole graph's outputs (the cut loses nothing). What it buys is measured on a trained
    checkpoint by bench/precision_accuracy.py (keypoints 0.06 px from fp32 instead of 1.06 px); the
    fixture's random weights amplify the network's bf16 rounding alone to pixels, so only the people
    found are compared here."""
    ov = pytest.importorskip("openvino")
    pytest.importorskip("onnx")
    if not _bf16_cpu():
        pytest.skip("this CPU has no bf16 units")
    from rtmo.export.onnx import export_onnx
    from rtmo.export.runtime import split_at_decoder
    from rtmo.infer.api import preprocess
    from rtmo.infer.image import read_image

    path = export_onnx(ModelManager.get(fixture_checkpoint("t"), device="cpu"), tmp_path / "t.onnx",
                       check=False)
    image = str(DATA / IMAGE)
    ref = ModelManager.get(path, backend="openvino")
    split = ModelManager.get(path, backend="openvino", precision="bf16")
    assert split._decoder is not None
    assert "bfloat16" in str(split.compiled.get_property("INFERENCE_PRECISION_HINT"))
    assert "float32" in str(split._decoder.get_property("INFERENCE_PRECISION_HINT"))
    assert ModelManager.get(_mmdeploy(), backend="openvino", precision="bf16")._decoder is None
    _close_to_fp32(ref.infer(image), split.infer(image), box_px=10)

    network, decoder, between = split_at_decoder(path)
    core, f32 = ov.Core(), {"INFERENCE_PRECISION_HINT": "f32"}
    net = core.compile_model(core.read_model(network.SerializeToString()), "CPU", f32)
    dec = core.compile_model(core.read_model(decoder.SerializeToString()), "CPU", f32)
    batch, _ = preprocess([read_image(image)], ref.input_size)
    maps = net.create_infer_request().infer({0: batch})
    got = dec.create_infer_request().infer({n: maps[net.output(n)] for n in between})
    want = ref.run(batch)
    np.testing.assert_allclose(got[dec.output("dets")], want[0], atol=1e-3)
    np.testing.assert_allclose(got[dec.output("keypoints")], want[1], atol=1e-2)


def test_int8_onnx_calibrated_on_shared_images(fp32, tmp_path):
    from rtmo.export.quantize import quantize_onnx

    out = quantize_onnx(_mmdeploy(), tmp_path / "int8.onnx", DATA / "coco")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["int8.onnx"]  # no temporary file left
    m = ModelManager.get(out)
    assert m.precision == "int8" and m.selection["max_detections"] == 50
    import onnx

    graph = onnx.load(str(out)).graph
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in graph.node}
    # Activations uint8 (the U8S8 form of ONNX Runtime's x86 int8 kernels; S8S8 ran slower than fp32)
    consts = {i.name: i.data_type for i in graph.initializer}
    zero_points = {consts[n.input[2]] for n in graph.node if n.op_type == "QuantizeLinear" and n.input[2:]}
    assert zero_points == {onnx.TensorProto.UINT8}
    _close_to_fp32(fp32, m.infer(str(DATA / IMAGE)), box_px=30, score=0.1)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no image files"):
        quantize_onnx(_mmdeploy(), tmp_path / "x.onnx", tmp_path / "empty")
    assert not (tmp_path / "x.onnx").exists()


def test_int8_openvino_calibrated_on_shared_images(fp32, tmp_path):
    pytest.importorskip("nncf")
    from rtmo.export.quantize import quantize_openvino

    out = quantize_openvino(_mmdeploy(), tmp_path / "int8.xml", DATA / "coco")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["int8.bin", "int8.xml"]
    m = ModelManager.get(out)
    assert type(m).__name__ == "OpenVINOModel" and m.precision == "int8"
    _close_to_fp32(fp32, m.infer(str(DATA / IMAGE)), box_px=30, score=0.1)


def test_fp32_fast_within_float_rounding_of_bit_exact():
    """`fast=True` (fused BatchNorm/RepVGG, channels-last, SiLU): the same detections in the same order,
    boxes and scores at float-rounding level. Keypoints: the random fixture DCC turns ~1e-6 relative
    changes of the pose maps into bin jumps on a few keypoints (measured on RTMO-s, 6 images: max 4.6 px,
    median ~1e-4 px; boxes <= 3.2e-3 px, scores <= 2.8e-5), so the median is checked tightly and the
    maximum loosely; bench/precision_accuracy.py measures it on a trained checkpoint."""
    from rtmo.nn.layers import Swish

    ckpt = fixture_checkpoint("t")
    exact = ModelManager.get(ckpt, device="cpu")
    fast = ModelManager.get(ckpt, device="cpu", fast=True)
    assert fast.precision == "fp32" and fast.fast and not getattr(exact, "fast", False)
    assert not any(isinstance(m, Swish) for m in fast.modules())
    assert any(isinstance(m, Swish) for m in exact.modules())  # the default stays the bit-exact model
    kpt = []
    for name in (IMAGE, "coco/000000000785.jpg"):
        a, b = exact.infer(str(DATA / name)), fast.infer(str(DATA / name))
        assert len(a) == len(b) > 0
        np.testing.assert_allclose(b.boxes, a.boxes, atol=1e-2, rtol=0)
        np.testing.assert_allclose(b.scores, a.scores, atol=1e-4, rtol=0)
        np.testing.assert_allclose(b.keypoint_scores, a.keypoint_scores, atol=1e-4, rtol=0)
        kpt.append(np.abs(b.keypoints - a.keypoints).ravel())
    kpt = np.concatenate(kpt)
    assert np.median(kpt) < 1e-2 and kpt.max() < 10.0, (np.median(kpt), kpt.max())
    assert fast.head.dcc.fast and not exact.head.dcc.fast
    with pytest.raises(ValueError, match="load the model again"):
        fast.set_precision("fp32")  # fusing is irreversible
    assert fast.set_precision("fp32", fast=True) is fast


def test_reassociated_dcc_is_the_same_product():
    """The fast path's DCC computes feats @ (E W^T + b)^T as (feats @ W) @ E^T + feats @ b (E's cos and sin
    halves as two products) and softmax without softmax_1d's clamp/eps: in float64 the two orders agree to
    1e-12 (pure algebra), and on the fixture DCC in float32 the heatmaps agree to float rounding (logits
    that differ by ~1e-6 relative; 1e-4 absolute on probabilities)."""
    from rtmo.nn.dcc import _bin_logits
    from rtmo.nn.layers import SinePositionalEncoding

    g = torch.Generator().manual_seed(0)
    fc, spe = torch.nn.Linear(128, 96).double(), SinePositionalEncoding(128, 300.0).double()
    feats, pos = torch.randn(5, 17, 96, generator=g).double(), torch.randn(5, 192, generator=g).double() * 300
    plain = torch.matmul(feats, fc(spe.encode_1d(pos)).transpose(-1, -2))
    torch.testing.assert_close(_bin_logits(feats, fc, spe, pos), plain, rtol=1e-12, atol=1e-12)

    dcc = fixture_model("t").head.dcc.eval()
    n = 40
    pose = torch.randn(n, dcc.pose_to_kpts[0].in_features, generator=g)
    cs = torch.cat([torch.rand(n, 2, generator=g) * 400, 20 + torch.rand(n, 2, generator=g) * 300], dim=1)
    grids = torch.rand(n, 2, generator=g) * 400
    with torch.no_grad():
        ref = dcc.heatmaps(pose, cs, grids)
        dcc.fast = True
        new = dcc.heatmaps(pose, cs, grids)
        dcc.fast = False
    for a, b in zip(ref, new):
        assert not torch.equal(a, b)  # another order of products: not the same bits
        torch.testing.assert_close(b, a, rtol=0, atol=1e-4)


def test_dcc_exp_bit_identical_to_torch_exp():
    """The DCC softmax's exp skips the CPU kernel's slow path (inputs below -87) without changing a bit,
    across the subnormal band, exact zeros, -inf and NaN, at lengths that exercise vector tails."""
    from rtmo.nn.dcc import _exp

    edges = [-87.0, -87.3, -103.9, -103.972, -104.0, -1e30, -float("inf"), float("nan")]
    z = torch.cat([torch.linspace(-200, 0, 400_001), -torch.rand(50_000) * 1e5, torch.tensor(edges)])
    z = z[torch.randperm(len(z), generator=torch.Generator().manual_seed(0))]
    for n in (1, 7, 33, len(z)):
        assert torch.equal(_exp(z[:n]).nan_to_num(7.0), z[:n].exp().nan_to_num(7.0)), n
