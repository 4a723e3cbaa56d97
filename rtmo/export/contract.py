"""The exported graph's contract and what every runtime shares: reading the metadata, checking a file's
inputs and outputs, the selection a graph bakes in, and `ExportedModel`, which turns the graph's outputs
into the decode step's `KeypointOutput` and gives each runtime the model API (`rtmo.infer.backend`).

The graph contract (ours and mmdeploy's):
    input      `input`     float32 (B, 3, H, W), BGR 0..255, letterboxed with pad value 114
    output     `dets`      float32 (B, N, 5): x1, y1, x2, y2, score
    output     `keypoints` float32 (B, N, K, 3): x, y in input pixels, visibility score
Rows past an image's own count are padding (score 0, or below the graph's score threshold).

Nothing here imports torch: a deployment install runs exported files without it.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..config import KeypointInfo, RTMOConfig, keypoint_info_for
from ..infer.backend import PoseAPI
from ..ops.checks import check_fraction
from ..outputs import KeypointOutput

INPUT_NAME = "input"
OUTPUT_NAMES = ("dets", "keypoints")
METADATA_PREFIX = "rtmo."
CONTRACT = ("expected an RTMO end2end graph: input `input` Bx3xHxW float32; outputs `dets` BxNx5 and "
            "`keypoints` BxNxKx3 (a file from `rtmo export` or mmdeploy)")
_DEFAULT_SCORE_THR = RTMOConfig.score_thr


class ModelFileError(ValueError):
    """An exported model file that cannot be used: unreadable, corrupt, or not the RTMO graph contract."""


def read_metadata(onnx_model: Any) -> dict[str, Any]:
    """The `rtmo.*` metadata of an onnx ModelProto (or of a {key: str} mapping) as Python values."""
    if isinstance(onnx_model, dict):
        props = onnx_model
    else:
        props = {p.key: p.value for p in onnx_model.metadata_props}
    n = len(METADATA_PREFIX)
    return {k[n:]: json.loads(v) for k, v in props.items() if k.startswith(METADATA_PREFIX)}

def graph_dims(shape: Any) -> list[int | None]:
    """Static dimensions as ints, dynamic ones (names, -1, 0, None) as None."""
    return [int(d) if isinstance(d, (int, np.integer)) and int(d) > 0 else None for d in shape]


def check_contract(path: Path, inputs: list[tuple[str, list[int | None], str]],
                    outputs: list[tuple[str, list[int | None], str]]) -> None:
    """(name, dims, dtype) of the graph's inputs and outputs against the contract; one line if not."""
    def fail(what: str) -> None:
        raise ModelFileError(f"{path}: {what}; {CONTRACT}")

    if len(inputs) != 1:
        fail(f"the graph has {len(inputs)} inputs ({', '.join(n for n, _, _ in inputs)})")
    name, dims, dtype = inputs[0]
    if name != INPUT_NAME or len(dims) != 4 or dims[1] not in (3, None) or "float" not in dtype.lower() \
            or "16" in dtype:
        fail(f"its input is `{name}` {'x'.join('?' if d is None else str(d) for d in dims)} {dtype}")
    by_name = {n: (d, t) for n, d, t in outputs}
    for out, rank, last in (("dets", 3, 5), ("keypoints", 4, 3)):
        if out not in by_name:
            fail(f"it has no output `{out}` (outputs: {', '.join(by_name) or 'none'})")
        d, _ = by_name[out]
        if len(d) != rank or d[-1] not in (last, None):
            fail(f"its output `{out}` has shape {'x'.join('?' if v is None else str(v) for v in d)}")

class ExportedModel(PoseAPI):
    """Shared logic: metadata, thresholds, output unpacking. Subclasses implement `_run`.

    `selection` describes the candidate selection baked into the graph (`score_thr`, `nms_thr`, and for
    mmdeploy files `pre_top_k` / `max_detections`): thresholds can be raised at inference, never lowered.
    """

    device = "cpu"  # pre-processing hands numpy batches here
    backend = ""

    def __init__(self, path: str | Path, metadata: dict[str, Any], input_dims: list[int | None],
                 num_keypoints: int | None = None, selection: dict[str, Any] | None = None,
                 precision: str = "fp32"):
        self.path = Path(path)
        self.metadata = metadata
        self.checkpoint_info = {"name": self.path.name, "path": str(self.path.resolve()),
                                "sha256": metadata.get("checkpoint_sha256")}  # as RTMO.checkpoint_info
        self.precision = "int8" if metadata.get("precision") == "int8" else precision  # see quantize.py
        self.official = "keypoint_names" not in metadata  # an mmdeploy file (maybe quantized by rtmo)
        self.static_batch = input_dims[0] is not None
        if "input_size" in metadata:
            self.input_size: tuple[int, int] = tuple(int(v) for v in metadata["input_size"])
        elif input_dims[2] and input_dims[3]:
            self.input_size = (int(input_dims[3]), int(input_dims[2]))  # graph is NCHW, input_size is (w, h)
        else:
            self.input_size = (640, 640)
            warnings.warn(f"{self.path.name}: no metadata and a dynamic input size; assuming 640x640",
                          stacklevel=3)
        if "keypoint_names" in metadata:
            self._keypoint_info: KeypointInfo | None = KeypointInfo(
                metadata.get("keypoint_set", "custom"), tuple(metadata["keypoint_names"]),
                tuple(tuple(p) for p in metadata["skeleton"]), tuple(metadata["flip_indices"]),
                tuple(metadata["sigmas"]))
        else:  # mmdeploy file: K from the output shape, else from a first run; COCO names when 17
            self._keypoint_info = keypoint_info_for(num_keypoints) if num_keypoints else None
        self.class_names: tuple[str, ...] = tuple(metadata.get("class_names", ("person",)))
        sel = dict(selection or {})
        for key in ("score_thr", "nms_thr"):
            if key in metadata:
                sel[key] = metadata[key]
        self.selection = sel
        self.baked_score_thr: float | None = sel.get("score_thr")
        self.baked_nms_thr: float | None = sel.get("nms_thr")
        # The default score threshold is the graph's own; an unknown one falls back to mmpose's test config.
        self.score_thr = self.baked_score_thr if self.baked_score_thr is not None else _DEFAULT_SCORE_THR

    # -------------------------------------------------------------- backend
    def _run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def run(self, batch: Any) -> tuple[np.ndarray, np.ndarray]:
        """Raw graph outputs (dets (B,N,5), keypoints (B,N,K,3)) for a float32 (B,3,H,W) batch."""
        if hasattr(batch, "detach"):  # a torch tensor, converted without importing torch
            batch = batch.detach().cpu().numpy()
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if batch.ndim != 4 or batch.shape[1] != 3:
            raise ValueError(f"expected a (B,3,H,W) batch, got shape {batch.shape}")
        if (batch.shape[3], batch.shape[2]) != tuple(self.input_size):
            raise ValueError(f"{self.path.name} takes {self.input_size[0]}x{self.input_size[1]} (w x h) "
                             f"inputs, got {batch.shape[3]}x{batch.shape[2]}")
        if self.static_batch and batch.shape[0] != 1:
            # Fixed batch 1: one image at a time, padded to a common N.
            outs = [self._run(batch[i:i + 1]) for i in range(batch.shape[0])]
            n = max(d.shape[1] for d, _ in outs)
            dets = np.zeros((len(outs), n, 5), np.float32)
            kpts = np.zeros((len(outs), n) + outs[0][1].shape[2:], np.float32)
            for i, (d, k) in enumerate(outs):
                dets[i, :d.shape[1]], kpts[i, :k.shape[1]] = d[0], k[0]
            return dets, kpts
        return self._run(batch)

    # -------------------------------------------------------------- the PoseBackend API
    @property
    def keypoint_info(self) -> KeypointInfo:
        if self._keypoint_info is None:  # K only known from an output: learn it from one blank run
            blank = np.zeros((1, 3) + tuple(self.input_size[::-1]), np.float32)
            self._keypoint_info = keypoint_info_for(self.run(blank)[1].shape[2])
        return self._keypoint_info

    def predict_batch(self, batch: Any, threshold: float | None = None,
                      nms_threshold: float | None = None) -> KeypointOutput:
        """The graph's detections as the decode step's `KeypointOutput` (numpy arrays, network-input
        pixels), like `RTMO.predict_batch`; thresholds can be raised over the baked ones, never lowered."""
        thr = self._threshold(threshold, nms_threshold)
        dets, kpts = self.run(batch)
        if self._keypoint_info is None:
            self._keypoint_info = keypoint_info_for(kpts.shape[2])
        # Padding rows have score 0 (ours) or below the graph's threshold (mmdeploy): the strict test
        # against thr >= the baked threshold drops them. Kept rows move to the front, in graph order.
        keep = dets[..., 4] > thr  # (B, N)
        counts = keep.sum(axis=1).astype(np.int64)
        n = int(counts.max(initial=0))
        order = np.argsort(~keep, axis=1, kind="stable")[:, :n]
        dets = np.take_along_axis(dets, order[..., None], axis=1)
        kpts = np.take_along_axis(kpts, order[..., None, None], axis=1)
        valid = np.arange(n)[None, :] < counts[:, None]
        w, h = self.input_size
        boxes = dets[..., :4].copy()
        boxes[..., 0::2] = boxes[..., 0::2].clip(0, w)  # no-op for our graphs; mmdeploy's are unclamped
        boxes[..., 1::2] = boxes[..., 1::2].clip(0, h)

        def real(x: np.ndarray) -> np.ndarray:  # padding rows -> 0
            return np.where(valid.reshape(valid.shape + (1,) * (x.ndim - 2)), x, np.zeros((), x.dtype))

        return KeypointOutput(scores=real(dets[..., 4]), labels=np.zeros(valid.shape, np.int64),
                              pred_bboxes=real(boxes), pred_keypoints=real(kpts[..., :2]),
                              keypoint_scores=real(kpts[..., 2]), num_detections=counts)

    def check_thresholds(self, threshold: float | None, nms_threshold: float | None) -> None:
        self._threshold(threshold, nms_threshold)

    def _threshold(self, threshold: float | None, nms_threshold: float | None) -> float:
        """The score threshold to apply; ValueError for thresholds the graph cannot give."""
        threshold = check_fraction(threshold, "threshold")
        nms_threshold = check_fraction(nms_threshold, "nms_threshold")
        thr = self.score_thr if threshold is None else threshold
        if self.baked_score_thr is not None and thr < self.baked_score_thr:
            raise ValueError(f"threshold {thr} is below the score threshold {self.baked_score_thr} baked "
                             f"into {self.path.name}; re-export with a lower score threshold")
        if nms_threshold is not None:
            if self.baked_nms_thr is None:
                raise ValueError(f"{self.path.name} has NMS inside the graph with an unknown IoU threshold; "
                                 "nms_threshold cannot be changed")
            if abs(nms_threshold - self.baked_nms_thr) > 1e-6:
                raise ValueError(f"{self.path.name} has NMS inside the graph at IoU {self.baked_nms_thr}; "
                                 f"re-export with that NMS threshold ({nms_threshold}) to change it")
        return thr

    def describe_selection(self) -> str:
        s = self.selection
        parts = []
        if "score_thr" in s:
            parts.append(f"score > {s['score_thr']:g}")
        if "nms_thr" in s:
            parts.append(f"NMS IoU > {s['nms_thr']:g}")
        if s.get("pre_top_k"):
            parts.append(f"top {s['pre_top_k']} candidates")
        if s.get("max_detections"):
            parts.append(f"at most {s['max_detections']} kept")
        return ", ".join(parts) or "unknown"

    def __repr__(self) -> str:
        kind = "mmdeploy" if self.official else "rtmo"
        return (f"{type(self).__name__}({str(self.path)!r}, {kind} graph, input_size={self.input_size}, "
                f"precision={self.precision!r}, selection in graph: {self.describe_selection()})")


def check_file(path: str | Path, suffixes: tuple[str, ...]) -> Path:
    p = Path(path)
    if p.is_dir():
        raise ModelFileError(f"{p}: is a directory, not a model file")
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such model file")
    if p.suffix.lower() not in suffixes:
        raise ModelFileError(f"{p}: expected a {' or '.join(suffixes)} file")
    return p


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    line = text.splitlines()[0] if text else type(e).__name__
    return re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", line)[:200]


def graph_selection(path: str | Path) -> dict[str, Any]:
    """The selection an end2end ONNX graph bakes in, read from its NonMaxSuppression and TopK constants
    (mmdeploy's RTMO graph: TopK of the candidates, NMS, TopK of the kept). Empty when not readable."""
    try:
        import onnx
        from onnx import numpy_helper

        proto = onnx.load(str(path), load_external_data=False)
    except Exception:  # no onnx package, or an unreadable file (the session has reported that already)
        return {}
    consts = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    producer = {}
    for node in proto.graph.node:
        for o in node.output:
            producer[o] = node
        if node.op_type == "Constant" and node.attribute and \
                node.attribute[0].type == onnx.AttributeProto.TENSOR:
            consts[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)

    def constants_behind(name: str, depth: int = 0) -> list[float]:
        # mmdeploy writes k as Where(Less(k, n), k, n) over constants and shapes: collect the constants.
        if name in consts:
            return [float(v) for v in np.ravel(consts[name])]
        node = producer.get(name)
        if node is None or depth > 6 or node.op_type in ("Shape", "Gather"):
            return []
        return [v for i in node.input for v in constants_behind(i, depth + 1)]

    sel: dict[str, Any] = {}
    seen_nms = False
    for node in proto.graph.node:
        if node.op_type == "NonMaxSuppression" and len(node.input) >= 5:
            seen_nms = True
            vals = [np.ravel(consts[i]) if i in consts else None for i in node.input[2:5]]
            if vals[1] is not None:
                sel["nms_thr"] = round(float(vals[1][0]), 6)
            if vals[2] is not None:
                sel["score_thr"] = round(float(vals[2][0]), 6)
            if vals[0] is not None and 0 < int(vals[0][0]) < 100_000:
                sel["max_detections"] = int(vals[0][0])
        elif node.op_type == "TopK" and len(node.input) > 1:
            ks = [int(v) for v in constants_behind(node.input[1]) if v > 1]
            if ks:
                key = "max_detections" if seen_nms else "pre_top_k"
                sel[key] = min(ks + ([sel[key]] if key in sel else []))
    return sel

def onnx_props(path: Path) -> dict[str, str]:
    try:
        import onnx

        return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    except Exception:
        return {}
