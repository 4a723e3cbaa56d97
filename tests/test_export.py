"""ONNX export with NMS in the graph, and its runtimes, against PyTorch on the mmpose fixtures.

Tolerances. ONNX Runtime / OpenVINO convolutions round differently from PyTorch's (~1e-5 relative), which
moves boxes by ~3e-3 px and scores by ~6e-5 with the random-weight fixtures; their DCC amplifies that into
keypoint jumps of up to a few px (PyTorch with 1 vs 2 threads already differs by 0.45 px). So the fp32
end-to-end check (`compare_outputs`) asks for identical detections (count, order), boxes <= 1e-2 px,
scores <= 2e-4 and keypoint median / p90 <= 5e-3 / 0.1 px, and the part that is ours (selection, NMS,
ranking, padding, DCC, clamping) is checked sharply by exporting it alone in float64: <= 1e-6 px.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from rtmo import RTMO, RTMOConfig
from rtmo.decode import Decoder, NonMaxSuppression
from rtmo.export.onnx import End2End, compare_outputs, export_onnx, graph_outputs, read_metadata
from rtmo.export.runtime import OnnxRuntimeModel, OpenVINOModel, TensorRTModel, build_engine
from rtmo.infer.api import preprocess
from rtmo.infer.image import load_image
from rtmo.nn.head import flatten_maps
from rtmo.ops.boxes import grid_priors
from rtmo.outputs import KEYPOINT_FIELDS, KeypointOutput

from .conftest import DATA, fixture_checkpoint

IMAGES = ["coco/000000000785.jpg", "coco/000000040083.jpg", "crowdpose/103319.jpg"]

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")


def _model(variant: str) -> RTMO:
    p = fixture_checkpoint(variant)
    m = RTMO(RTMOConfig.preset(variant))
    m.load_state_dict(torch.load(p, weights_only=True)["state_dict"])
    return m.eval()


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    paths = [DATA / p for p in IMAGES]
    if not all(p.exists() for p in paths):
        pytest.skip("fixture images missing")
    return [load_image(p)[0] for p in paths]


@pytest.fixture(scope="module", params=["t", "s"])
def exported(request, tmp_path_factory) -> tuple[RTMO, Path]:
    """Each model exported once per session (dynamic batch, no simplification: checked separately)."""
    torch.set_num_threads(2)
    model = _model(request.param)
    path = export_onnx(model, tmp_path_factory.mktemp("onnx") / f"rtmo-{request.param}.onnx", simplify=False,
                       check=False)
    return model, path


def test_export_leaves_model_untouched_and_wrapper_is_exact(exported, images):
    model, _ = exported
    before = {k: v.clone() for k, v in model.state_dict().items()}
    export_onnx(model, exported[1].with_suffix(".static.onnx"), dynamic_batch=False, simplify=False,
                check=False)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before) and model.training is False
    # The traced module, run eagerly, is the model's own inference bit for bit (same ops, same order).
    batch = torch.from_numpy(preprocess(images[:2], model.input_size)[0])
    ref = model.predict_batch(batch).per_image_lists()
    with torch.no_grad():
        dets, kpts = End2End(model, model.config.score_thr, model.config.nms_thr)(batch)
    for b in range(2):
        n = len(ref["scores"][b])
        assert n > 0 and torch.all(dets[b, n:] == 0)
        assert torch.equal(dets[b, :n, :4], ref["pred_bboxes"][b])
        assert torch.equal(dets[b, :n, 4], ref["scores"][b])
        assert torch.equal(kpts[b, :n, :, :2], ref["pred_keypoints"][b])
        assert torch.equal(kpts[b, :n, :, 2], ref["keypoint_scores"][b])


class _PostGraph(torch.nn.Module):
    def __init__(self, decoder: Decoder, priors: torch.Tensor, strides: torch.Tensor, h: int, w: int):
        super().__init__()
        self.decoder, self.priors, self.strides, self.h, self.w = decoder, priors, strides, h, w

    def forward(self, cls, bbox, vis, pose):
        return graph_outputs(self.decoder(cls, bbox, vis, pose, self.priors, self.strides, self.h, self.w))


def test_selection_and_dcc_graph_exact_in_float64(exported, images, tmp_path):
    import onnxruntime as ort

    model, _ = exported
    batch = torch.from_numpy(preprocess(images, model.input_size)[0])
    with torch.no_grad():
        maps = model.forward_maps(batch)
    inputs = [flatten_maps(x).double() for x in (maps.cls, maps.bbox, maps.vis, maps.pose)]
    priors, strides = grid_priors([tuple(x.shape[2:]) for x in maps.cls], model.config.featmap_strides)
    net64 = copy.deepcopy(model).double()
    h, w = batch.shape[2:]
    decoder = Decoder(net64.head.dcc, 0.1, 0.65, net64.config.bbox_padding)
    post = _PostGraph(decoder, priors.double(), strides.double(), h, w).eval()
    names = ["cls", "bbox", "vis", "pose"]
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(post, tuple(inputs), str(tmp_path / "post.onnx"), input_names=names,
                          output_names=["dets", "keypoints"], opset_version=17, dynamo=False,
                          dynamic_axes={n: {0: "b"} for n in names})
        ref_d, ref_k = post(*inputs)
    sess = ort.InferenceSession(str(tmp_path / "post.onnx"), providers=["CPUExecutionProvider"])
    for sl in (slice(0, 3), slice(1, 2)):  # batch 3 and batch 1 through the same dynamic graph
        with torch.no_grad():
            ref_d, ref_k = post(*[x[sl] for x in inputs])
        d, k = sess.run(None, {n: x[sl].numpy() for n, x in zip(names, inputs)})
        assert d.shape == tuple(ref_d.shape) and k.shape == tuple(ref_k.shape)
        np.testing.assert_allclose(d, ref_d.numpy(), rtol=0, atol=1e-6)
        np.testing.assert_allclose(k, ref_k.numpy(), rtol=0, atol=1e-6)
    assert (d[..., 4] > 0).sum() > 5  # the check saw real detections


@pytest.mark.parametrize("batch_size", [1, 3])
def test_onnxruntime_parity(exported, images, batch_size):
    model, path = exported
    rt = OnnxRuntimeModel(path, providers=["CPUExecutionProvider"], num_threads=2)
    batch, _ = preprocess(images[:batch_size], model.input_size)
    got = rt.predict_batch(batch)
    ref = model.predict_batch(batch)
    stats = compare_outputs(ref, got)  # raises on any mismatch
    assert stats["box_px"] < 1e-2 and sum(len(s) for s in got.per_image_lists()["scores"]) > 10
    # The one output type of the decode step: the same KeypointOutput fields, numpy arrays from a runtime.
    assert isinstance(got, KeypointOutput) and type(got) is type(ref)
    got_views, ref_views = got.per_image(), ref.numpy().per_image()
    for f in KEYPOINT_FIELDS:
        assert isinstance(getattr(got, f), np.ndarray) and getattr(got, f).shape == getattr(ref, f).shape, f
        assert all(g[f].dtype == r[f].dtype and g[f].shape == r[f].shape
                   for g, r in zip(got_views, ref_views)), f
    assert np.array_equal(got.num_detections, ref.num_detections.numpy())
    assert np.array_equal(got.labels, ref.labels.numpy()) and got.bbox_scores is got.scores
    if batch_size == 3:  # padded rows: each image keeps exactly its own count
        dets, _ = rt.run(batch)
        counts = (dets[..., 4] > 0).sum(1)
        assert dets.shape[1] == counts.max() and len(set(counts.tolist())) > 1


def test_openvino_parity(exported, images):
    pytest.importorskip("openvino")
    model, path = exported
    rt = OpenVINOModel(path, num_threads=2)
    batch, _ = preprocess(images[:2], model.input_size)
    compare_outputs(model.predict_batch(batch), rt.predict_batch(batch))


def test_metadata_round_trip_and_user_api(exported, images):
    import onnx

    model, path = exported
    meta = read_metadata(onnx.load(str(path)))
    info = model.keypoint_info
    assert meta["input_size"] == list(model.config.input_size) and meta["pad_value"] == 114
    assert meta["keypoint_names"] == list(info.names) and meta["flip_indices"] == list(info.flip_indices)
    assert meta["skeleton"] == [list(p) for p in info.skeleton] and meta["sigmas"] == list(info.sigmas)
    assert meta["score_thr"] == 0.1 and meta["nms_thr"] == 0.65 and meta["checkpoint_sha256"] is None
    rt = OnnxRuntimeModel(path, num_threads=2)
    assert rt.keypoint_info == info and rt.input_size == tuple(model.input_size)

    res, ref = rt.infer(list(images[:2])), model.infer(list(images[:2]))
    for r, e in zip(res, ref):
        assert len(r) == len(e) and r.image_shape == e.image_shape
        np.testing.assert_allclose(r.boxes, e.boxes, atol=2e-2)  # 1e-2 px input scale x up to 1.6 image
    # A higher threshold after NMS selects exactly what PyTorch selects with it (NMS only removes lower
    # scores, so thresholding after it is exact); nothing found gives an empty result.
    assert len(rt.infer(images[0], threshold=0.5)) == len(model.infer(images[0], threshold=0.5)) > 0
    assert len(rt.infer(np.full((240, 320, 3), 114, np.uint8))) == 0
    with pytest.raises(ValueError, match="baked"):
        rt.infer(images[0], threshold=0.05)
    with pytest.raises(ValueError, match="re-export"):
        rt.infer(images[0], nms_threshold=0.5)
    with pytest.raises(ValueError, match="batch"):
        rt.run(np.zeros((3, 416, 416), np.float32))


def test_official_contract_without_metadata(exported, images, tmp_path):
    """An mmdeploy end2end.onnx has the same I/O but no metadata and a fixed batch of 1."""
    import onnx

    model, path = exported
    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    onnx.save(proto, str(tmp_path / "end2end.onnx"))
    rt = OnnxRuntimeModel(tmp_path / "end2end.onnx")
    assert rt.official and rt.static_batch and rt.input_size == tuple(model.input_size)
    res = rt.infer(list(images[:2]))  # batch 2 through a batch-1 graph: one image at a time
    assert rt.keypoint_info.name == "coco"
    assert [len(r) for r in res] == [len(r) for r in model.infer(list(images[:2]))]
    with pytest.raises(ValueError, match="inside the graph at IoU 0.65"):  # read from the NMS op
        rt.infer(images[0], nms_threshold=0.5)


def _nms_graph(tmp_path: Path, iou_thr: float, score_thr: float) -> Path:
    class M(torch.nn.Module):
        def forward(self, boxes, scores):
            return NonMaxSuppression.apply(boxes, scores, 100, iou_thr, score_thr)

    boxes, scores = torch.rand(1, 4, 4), torch.rand(1, 1, 4)
    out = tmp_path / "nms.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer chatter about the eager NMS loop: the op is what is traced
        torch.onnx.export(M(), (boxes, scores), str(out), input_names=["boxes", "scores"], opset_version=17,
                          dynamo=False, dynamic_axes={"boxes": {1: "n"}, "scores": {2: "n"}})
    return out


def test_nms_op_semantics_match_mmpose(tmp_path):
    """Hand-built cases: IoU exactly at the threshold is kept (suppression is IoU > thr, strict), a score
    exactly at the score threshold is dropped (score > thr), equal scores go by lower index."""
    import onnxruntime as ort

    boxes = torch.tensor([[[0, 0, 2, 1], [0, 0, 1, 1], [10, 10, 12, 12], [10, 10, 12, 12.5],
                           [20, 20, 21, 21]]], dtype=torch.float32)
    # IoU(0,1) = 1/2 exactly; IoU(2,3) = 4/5; box 4 has score == score_thr.
    scores = torch.tensor([[[0.9, 0.8, 0.7, 0.7, 0.25]]])
    expect = [0, 1, 2]  # box 3 ties with 2 at 0.7 and loses by index, then is suppressed (0.8 > 0.5)
    got_eager = NonMaxSuppression.apply(boxes, scores, 100, 0.5, 0.25)[:, 2].tolist()
    sess = ort.InferenceSession(str(_nms_graph(tmp_path, 0.5, 0.25)), providers=["CPUExecutionProvider"])
    got_ort = sess.run(None, {"boxes": boxes.numpy(), "scores": scores.numpy()})[0][:, 2].tolist()
    assert got_eager == expect and sorted(got_ort) == expect
    try:
        import openvino as ov
    except ImportError:
        return
    from rtmo.export.runtime import _strict_nms_iou

    core = ov.Core()
    model = core.read_model(str(tmp_path / "nms.onnx"))
    feed = {"boxes": boxes.numpy(), "scores": scores.numpy()}
    plain = core.compile_model(model, "CPU")
    # OpenVINO on its own suppresses at IoU == thr (>=); OpenVINOModel nudges the threshold one ulp up.
    assert sorted(int(i) for i in plain(feed)[plain.output(0)][:, 2]) == [0, 2]
    _strict_nms_iou(model)
    fixed = core.compile_model(model, "CPU")
    assert sorted(int(i) for i in fixed(feed)[fixed.output(0)][:, 2]) == expect


def test_tensorrt_absent_gives_clear_error(tmp_path):
    try:
        import tensorrt  # noqa: F401
        if torch.cuda.is_available():
            pytest.skip("TensorRT and CUDA present: the error path is not reachable")
    except ImportError:
        pass
    with pytest.raises((ImportError, RuntimeError), match="TensorRT"):
        build_engine(tmp_path / "x.onnx", tmp_path / "x.engine")
    with pytest.raises((ImportError, RuntimeError), match="TensorRT"):
        TensorRTModel(tmp_path / "x.engine")


def test_dynamic_hw_is_not_offered(tmp_path):
    """Traced at one size, the graph keeps size-dependent constants (priors, the neck's position encoding:
    wrong boxes at 320x512 in a trial), so neither the API nor the CLI offers a dynamic height/width."""
    with pytest.raises(TypeError, match="dynamic_hw"):
        export_onnx(RTMO(RTMOConfig.preset("t")), tmp_path / "x.onnx", dynamic_hw=True)
    assert not (tmp_path / "x.onnx").exists()


def test_bad_paths_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.onnx"):
        OnnxRuntimeModel(tmp_path / "nope.onnx")
    (tmp_path / "model.pth").write_bytes(b"x")
    with pytest.raises(ValueError, match="onnx"):
        OnnxRuntimeModel(tmp_path / "model.pth")
