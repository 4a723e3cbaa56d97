"""ONNX export of the whole RTMO pipeline, NMS and DCC included (the mmdeploy / rtmlib "end2end" contract).

Graph contract:
    input      `input`     float32 (B, 3, H, W), BGR 0..255, letterboxed with pad value 114
    output     `dets`      float32 (B, N, 5): x1, y1, x2, y2 (clamped to the input canvas), score
    output     `keypoints` float32 (B, N, K, 3): x, y in input pixels, visibility score

How selection is done in the graph:
  * candidates: `score > score_thr` and greedy NMS (suppress IoU > nms_thr, strict) through the standard
    ONNX `NonMaxSuppression` op, which ONNX Runtime, OpenVINO and TensorRT all implement. Its rules are
    mmpose's: score threshold strict `>`, suppression when IoU `>` the threshold, areas without +1,
    processing in descending score order (ties: lower index first). No cap on the count of kept boxes.
  * the backend's output order of NMS is not relied on: the kept set becomes a (B, P) mask, kept scores
    are sorted per image (TopK, ties by lower index), and the first N = max kept count over the batch
    slots are gathered. Rows past an image's own count are padding: all zeros, score 0. N >= 1: a batch
    with no detection at all still returns one all-zero row, so consumers must filter on score > 0.
  * the DCC runs on the B*N gathered rows (unclamped boxes, as mmpose), then padding rows are zeroed.
Thresholds are baked in and recorded in the metadata (`score_thr`, `nms_thr`).
"""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..nn.head import flatten_maps
from ..ops.boxes import decode_boxes, grid_priors, nms, xyxy_to_cs
from ..ops.letterbox import PAD_VALUE
from ..utils.fileio import atomic_path
from .runtime import INPUT_NAME, METADATA_PREFIX, OUTPUT_NAMES, read_metadata  # noqa: F401 (contract)


class _NonMaxSuppression(torch.autograd.Function):
    """Greedy NMS over (B, P, 4) boxes and (B, 1, P) scores -> (M, 3) [batch, class, box] int64.

    Runs our reference `nms` eagerly (so tracing sees real data) and exports as ONNX `NonMaxSuppression`.
    """

    @staticmethod
    def forward(ctx: Any, boxes: torch.Tensor, scores: torch.Tensor, max_out: int, iou_thr: float,
                score_thr: float) -> torch.Tensor:
        rows = []
        for b in range(boxes.shape[0]):
            s = scores[b, 0]
            valid = torch.nonzero(s > score_thr).squeeze(1)
            keep = valid[nms(boxes[b, valid], s[valid], iou_thr)][:max_out]
            rows.append(torch.stack([torch.full_like(keep, b), torch.zeros_like(keep), keep], dim=1))
        return torch.cat(rows) if rows else boxes.new_zeros((0, 3), dtype=torch.long)

    @staticmethod
    def symbolic(g: Any, boxes: Any, scores: Any, max_out: int, iou_thr: float, score_thr: float) -> Any:
        return g.op("NonMaxSuppression", boxes, scores,
                    g.op("Constant", value_t=torch.tensor([max_out], dtype=torch.long)),
                    g.op("Constant", value_t=torch.tensor([iou_thr], dtype=torch.float32)),
                    g.op("Constant", value_t=torch.tensor([score_thr], dtype=torch.float32)),
                    center_point_box_i=0)


class Decoder(nn.Module):
    """Flattened head outputs -> (dets, keypoints): threshold + NMS, ranking, padding, DCC, clamping.

    Split from the network so the selection/DCC graph can also be exported alone in float64, where ONNX
    Runtime and PyTorch agree to ~1e-8 px (the parity tests use that to check this part exactly).
    """

    def __init__(self, model: nn.Module, score_thr: float, nms_thr: float, max_out: int = 100_000):
        super().__init__()
        self.dcc = model.head.dcc
        self.num_keypoints, self.bbox_padding = model.config.num_keypoints, model.config.bbox_padding
        self.score_thr, self.nms_thr, self.max_out = float(score_thr), float(nms_thr), int(max_out)

    def forward(self, cls: torch.Tensor, bbox: torch.Tensor, vis: torch.Tensor, pose: torch.Tensor,
                priors: torch.Tensor, strides: torch.Tensor, h: Any, w: Any
                ) -> tuple[torch.Tensor, torch.Tensor]:
        scores = cls.sigmoid()[..., 0]  # (B, P): one class
        boxes = decode_boxes(bbox, priors, strides)  # (B, P, 4) unclamped
        vis = vis.sigmoid()  # (B, P, K)
        # NonMaxSuppression takes float32 only (a float64 graph is used by the parity tests).
        sel = _NonMaxSuppression.apply(boxes.float(), scores[:, None].float(), self.max_out, self.nms_thr,
                                       self.score_thr)
        kept = torch.zeros_like(scores)
        kept[sel[:, 0], sel[:, 2]] = 1.0
        # Kept scores are > score_thr >= 0; everything else sorts below them at -1.
        ranked = torch.where(kept > 0, scores, torch.full_like(scores, -1.0))
        ranked, order = ranked.sort(dim=1, descending=True)
        # At least one slot: an all-padding row keeps zero-size tensors out of the DCC, which some
        # backends cannot reshape (ONNX Runtime fails on a (0, K) Reshape with -1).
        n_max = kept.sum(dim=1).max().clamp(min=1)
        # The first n_max slots, as an index tensor of data-dependent length (NonZero keeps it dynamic).
        slots = torch.nonzero(torch.arange(scores.shape[1], device=scores.device) < n_max).squeeze(1)
        order = order.index_select(1, slots)  # (B, N)
        valid = ranked.index_select(1, slots) >= 0  # (B, N)

        b_idx = torch.arange(scores.shape[0], device=scores.device)[:, None].expand_as(order)
        det_boxes, det_scores = boxes[b_idx, order], scores[b_idx, order]  # (B, N, 4), (B, N)
        det_vis, det_pose = vis[b_idx, order], pose[b_idx, order]
        kpts = self.dcc(det_pose.reshape(-1, det_pose.shape[-1]),
                        xyxy_to_cs(det_boxes.reshape(-1, 4), self.bbox_padding),
                        priors[order].reshape(-1, 2)).reshape(det_boxes.shape[0], -1, self.num_keypoints, 2)
        det_boxes = torch.stack([det_boxes[..., 0].clamp(0, w), det_boxes[..., 1].clamp(0, h),
                                 det_boxes[..., 2].clamp(0, w), det_boxes[..., 3].clamp(0, h)], dim=-1)
        dets = torch.cat([det_boxes, det_scores[..., None]], dim=-1)
        keypoints = torch.cat([kpts, det_vis[..., None]], dim=-1)
        dets = torch.where(valid[..., None], dets, torch.zeros_like(dets))
        keypoints = torch.where(valid[..., None, None], keypoints, torch.zeros_like(keypoints))
        return dets, keypoints


class End2End(nn.Module):
    """images -> (dets, keypoints) with selection in the graph; wraps (does not modify) an RTMO model."""

    def __init__(self, model: nn.Module, score_thr: float, nms_thr: float, max_out: int = 100_000):
        super().__init__()
        self.model = model
        self.decoder = Decoder(model, score_thr, nms_thr, max_out)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        maps = self.model.forward_maps(images)
        # Priors from the map shapes (not the model's cache) so a dynamic-size graph computes them too.
        sizes = [tuple(x.shape[2:]) for x in maps.cls]
        cfg = self.model.config
        priors, strides = grid_priors(sizes, cfg.featmap_strides_pointgenerator, images.device,
                                      cfg.centralize_points_pointgenerator)
        return self.decoder(flatten_maps(maps.cls), flatten_maps(maps.bbox), flatten_maps(maps.vis),
                            flatten_maps(maps.pose), priors.to(images.dtype), strides.to(images.dtype),
                            images.shape[2], images.shape[3])


def metadata_for(model: nn.Module, score_thr: float, nms_thr: float) -> dict[str, str]:
    """Everything a runtime needs to use the file without the Python model; values are JSON strings."""
    from .. import __version__

    info = model.keypoint_info
    cfg = model.config
    meta: dict[str, Any] = {
        "input_size": list(cfg.input_size), "pad_value": PAD_VALUE, "color_order": "BGR",
        "keypoint_set": info.name, "keypoint_names": list(info.names),
        "skeleton": [list(p) for p in info.skeleton], "flip_indices": list(info.flip_indices),
        "sigmas": list(info.sigmas), "class_names": list(getattr(model, "class_names", ("person",))),
        "score_thr": score_thr, "nms_thr": nms_thr, "variant": getattr(cfg, "variant", None),
        "checkpoint_sha256": getattr(model, "checkpoint_info", {}).get("sha256"),
        "rtmo_version": __version__, "outputs": "dets (B,N,5) x1y1x2y2score; keypoints (B,N,K,3) xy score; "
                                               "rows past an image's count are zero padding",
    }
    return {METADATA_PREFIX + k: json.dumps(v) for k, v in meta.items()}


MIN_OPSET = 11  # NonMaxSuppression with a score threshold


def max_opset() -> int:
    """The newest opset the TorchScript exporter can write."""
    from torch.onnx import _constants

    return int(getattr(_constants, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", _constants.ONNX_MAX_OPSET))


def check_export_options(threshold: float | None, nms_threshold: float | None, opset: int) -> None:
    """Refuse bad options before any work is done; ValueError names the option and the allowed range."""
    if threshold is not None and not (isinstance(threshold, (int, float)) and 0 <= threshold < 1):
        raise ValueError(f"threshold must be a number in [0, 1), got {threshold!r}")
    if nms_threshold is not None and not (isinstance(nms_threshold, (int, float)) and 0 < nms_threshold <= 1):
        raise ValueError(f"nms_threshold must be a number in (0, 1], got {nms_threshold!r}")
    if not isinstance(opset, int) or not MIN_OPSET <= opset <= max_opset():
        raise ValueError(f"opset must be between {MIN_OPSET} (NonMaxSuppression with a score threshold) and "
                         f"{max_opset()} (the newest this torch exports), got {opset!r}")


def export_onnx(model: nn.Module, path: str | Path, dynamic_batch: bool = True, opset: int = 17,
                simplify: bool = True, threshold: float | None = None, nms_threshold: float | None = None,
                check: bool = True, check_images: list[Any] | None = None) -> Path:
    """Export `model` (left untouched: a copy is exported) to one self-contained ONNX file at `path`.

    The file is written beside `path` under a temporary name and renamed only after `onnx.checker` and the
    self-check passed, so `path` never holds a torn or unverified file: on any failure it keeps what it
    held before. `check` runs ONNX Runtime on the file against PyTorch on `check_images` (paths / BGR
    arrays; a seeded synthetic image when None) and raises if detections or keypoints differ
    (`compare_outputs`). `simplify` uses onnxslim when installed and keeps its result only if it gives
    identical outputs. The input size is the model's (`model.config.input_size`); traced at one size the
    graph keeps size-dependent constants, so there is no dynamic height/width.
    """
    import onnx

    check_export_options(threshold, nms_threshold, opset)
    path = Path(path)
    score_thr = float(model.config.score_thr if threshold is None else threshold)
    nms_thr = float(model.config.nms_thr if nms_threshold is None else nms_threshold)
    net = copy.deepcopy(model).cpu().float().eval()
    net._priors_cache = {}
    wrapper = End2End(net, score_thr, nms_thr).eval()
    w, h = net.config.input_size
    example = _example_batch((w, h), 2 if dynamic_batch else 1)
    dets_axes = {0: "batch", 1: "num_dets"} if dynamic_batch else {1: "num_dets"}
    dynamic_axes = {"dets": dets_axes, "keypoints": dict(dets_axes)}
    if dynamic_batch:
        dynamic_axes[INPUT_NAME] = {0: "batch"}
    with atomic_path(path, suffix=".tmp.onnx") as tmp:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer / deprecation chatter; the parity check is the judge
            torch.onnx.export(wrapper, (example,), str(tmp), input_names=[INPUT_NAME],
                              output_names=list(OUTPUT_NAMES), dynamic_axes=dynamic_axes, opset_version=opset,
                              do_constant_folding=True, dynamo=False)
        proto = onnx.load(str(tmp))
        if simplify:
            proto = _simplify(proto, wrapper, example)
        for k, v in metadata_for(net, score_thr, nms_thr).items():
            proto.metadata_props.add(key=k, value=v)
        proto.doc_string = "RTMO end2end: input (B,3,H,W) BGR 0..255 letterboxed; outputs dets, keypoints"
        onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp))
        if check:
            check_onnx(model, tmp, check_images)
    return path


def _example_batch(input_size: tuple[int, int], batch: int) -> torch.Tensor:
    """A seeded integer-valued BGR batch; only used to trace, so any content with detections is fine."""
    w, h = input_size
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (batch, 3, h, w), generator=g).float()


def _simplify(proto: Any, wrapper: nn.Module, example: torch.Tensor) -> Any:
    try:
        import onnxslim
    except ImportError:
        return proto
    try:
        slim = onnxslim.slim(copy.deepcopy(proto))
    except Exception as e:  # a simplifier bug must not break export: keep the plain graph
        warnings.warn(f"onnxslim failed ({e}); keeping the unsimplified graph", stacklevel=3)
        return proto
    before, after = _run_proto(proto, example), _run_proto(slim, example)
    if all(a.shape == b.shape and np.array_equal(a, b) for a, b in zip(before, after)):
        return slim
    warnings.warn("onnxslim changed the outputs; keeping the unsimplified graph", stacklevel=3)
    return proto


def _run_proto(proto: Any, batch: torch.Tensor) -> list[np.ndarray]:
    import onnxruntime as ort

    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {INPUT_NAME: batch.numpy()})


def match_detections(ref_boxes: torch.Tensor, got_boxes: torch.Tensor) -> torch.Tensor:
    """For each reference box, the index of the backend's box nearest to it (largest coordinate gap, greedy
    from the closest pair). Two people with near-equal scores may come out in either order from two
    backends, so detections are paired by where they are, not by their rank."""
    n = len(ref_boxes)
    cost = (ref_boxes[:, None, :].double() - got_boxes[None, :, :].double()).abs().amax(-1)
    order = torch.argsort(cost.flatten())
    pair = torch.full((n,), -1, dtype=torch.long)
    used = torch.zeros(len(got_boxes), dtype=torch.bool)
    for flat in order.tolist():
        i, j = divmod(flat, len(got_boxes))
        if pair[i] < 0 and not used[j]:
            pair[i], used[j] = j, True
            if bool((pair >= 0).all()):
                break
    return pair


def compare_outputs(ref: dict[str, list[torch.Tensor]], got: dict[str, list[torch.Tensor]]
                    ) -> dict[str, float]:
    """Deviation of one backend's `predict_tensor` output from PyTorch's; raises if detections differ.

    Detections are paired by position first (`match_detections`). Why these bounds: a backend's
    convolutions round differently from PyTorch's (~1e-5 relative, measured 3e-3 px on boxes and 6e-5 on
    scores for the random-weight fixtures), so boxes get 1e-2 px and scores 2e-4. The DCC turns such noise
    into keypoint jumps (its 1-D heatmaps are near one-hot with random weights: PyTorch with 1 vs 2 threads
    already moves keypoints by 0.45 px), so keypoints are judged by the median (<= 5e-3 px) and 90th
    percentile (<= 0.1 px) of their deviation: a wrong prior, box or gather shifts every keypoint by
    pixels. The selection + DCC graph alone is checked to 1e-6 px in float64 by the tests.
    """
    stats = {"box_px": 0.0, "score": 0.0, "kpt_px_median": 0.0, "kpt_px_p90": 0.0, "kpt_px_max": 0.0}
    # exported runtimes answer in numpy, the PyTorch model in tensors
    ref = {k: [torch.as_tensor(x).cpu() for x in v] for k, v in ref.items()}
    got = {k: [torch.as_tensor(x).cpu() for x in v] for k, v in got.items()}
    for b in range(len(ref["scores"])):
        n_ref, n_got = len(ref["scores"][b]), len(got["scores"][b])
        if n_ref != n_got:
            raise RuntimeError(f"image {b}: {n_got} detections, PyTorch has {n_ref}")
        if not n_ref:
            continue
        pair = match_detections(ref["pred_bboxes"][b].cpu(), got["pred_bboxes"][b])
        g = {k: got[k][b][pair] for k in ("pred_bboxes", "scores", "keypoint_scores", "pred_keypoints")}
        box = float((ref["pred_bboxes"][b].cpu() - g["pred_bboxes"]).abs().max())
        score = max(float((ref[k][b].cpu() - g[k]).abs().max()) for k in ("scores", "keypoint_scores"))
        kpt = (ref["pred_keypoints"][b].cpu() - g["pred_keypoints"]).abs().amax(-1).flatten()
        q50, q90 = torch.quantile(kpt.double(), torch.tensor([0.5, 0.9], dtype=torch.float64)).tolist()
        for key, val in (("box_px", box), ("score", score), ("kpt_px_median", q50), ("kpt_px_p90", q90),
                         ("kpt_px_max", float(kpt.max()))):
            stats[key] = max(stats[key], val)
        if box > 1e-2 or score > 2e-4:
            raise RuntimeError(f"image {b}: detections differ from PyTorch (box {box:.2e} px, "
                               f"score {score:.2e})")
        if q50 > 5e-3 or q90 > 0.1:
            raise RuntimeError(f"image {b}: keypoints differ from PyTorch (median {q50:.2e} px, "
                               f"p90 {q90:.2e} px)")
    return stats


def check_onnx(model: nn.Module, path: str | Path, images: list[Any] | None = None) -> dict[str, float]:
    """Run ONNX Runtime on `path` and PyTorch `model` on `images` (batch 1 each, fp32) and compare them
    with `compare_outputs`. Raises RuntimeError naming the difference; returns the largest deviations."""
    from ..infer.api import preprocess
    from ..infer.image import load_image
    from .runtime import OnnxRuntimeModel

    ort_model = OnnxRuntimeModel(path, providers=["CPUExecutionProvider"])
    if images is None:
        size = tuple(model.config.input_size)
        arrays = [_example_batch(size, 1)[0].permute(1, 2, 0).numpy().astype(np.uint8)]
    else:
        arrays = [load_image(x)[0] for x in images]
    worst: dict[str, float] = {}
    for i, img in enumerate(arrays):
        batch, _ = preprocess([img], tuple(model.input_size))
        try:
            ref = model.predict_tensor(batch)
            stats = compare_outputs(ref, ort_model.predict_tensor(batch))
        except RuntimeError as e:
            raise RuntimeError(f"ONNX check of {path} failed on check image {i}: {e}") from None
        worst = {k: max(worst.get(k, 0.0), v) for k, v in stats.items()}
    return worst
