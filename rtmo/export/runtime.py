"""Run exported RTMO graphs (ours or the official mmdeploy `end2end.onnx`) with the PyTorch model's API.

Every runtime class exposes what `rtmo.infer.api` needs from a model (`input_size`, `device`,
`keypoint_info`, `class_names`, `predict_tensor`), so `infer`/`predict` reuse the very same letterbox,
batching and back-mapping code as the PyTorch model. Nothing here imports torch (a deployment install runs
without it); only `TensorRTModel` uses torch, for its CUDA buffers.

The graph contract (ours and mmdeploy's):
    input      `input`     float32 (B, 3, H, W), BGR 0..255, letterboxed with pad value 114
    output     `dets`      float32 (B, N, 5): x1, y1, x2, y2, score
    output     `keypoints` float32 (B, N, K, 3): x, y in input pixels, visibility score
Rows past an image's own count are padding (score 0, or below the graph's score threshold).
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..config import KeypointInfo, RTMOConfig, keypoint_info_for
from ..ops.checks import check_fraction

INPUT_NAME = "input"
OUTPUT_NAMES = ("dets", "keypoints")
METADATA_PREFIX = "rtmo."
CONTRACT = ("expected an RTMO end2end graph: input `input` Bx3xHxW float32; outputs `dets` BxNx5 and "
            "`keypoints` BxNxKx3 (a file from `rtmo export` or mmdeploy)")
PRECISIONS = ("fp32", "bf16", "fp16")
BACKENDS = ("onnxruntime", "openvino", "tensorrt")
TENSORRT_SUFFIXES = (".engine", ".plan", ".trt")
_DEFAULT_SCORE_THR = RTMOConfig.score_thr
_OUTPUT_KEYS = ("scores", "labels", "pred_bboxes", "bbox_scores", "pred_keypoints", "keypoint_scores",
                "keypoints_visible")


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


def physical_cores() -> int:
    """Physical cores this process may run on: hyper-threads share one core's vector units, so a matmul
    pool wider than the physical cores only adds contention."""
    logical = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        text = Path("/proc/cpuinfo").read_text()
        cores = {m for m in re.findall(r"physical id\s*:\s*(\d+)\s*\n(?:.*\n)*?core id\s*:\s*(\d+)", text)}
        per_core = (text.count("processor\t:") // len(cores)) if cores else 1
    except OSError:
        per_core = 1
    return max(1, logical // max(per_core, 1))


def _dims(shape: Any) -> list[int | None]:
    """Static dimensions as ints, dynamic ones (names, -1, 0, None) as None."""
    return [int(d) if isinstance(d, (int, np.integer)) and int(d) > 0 else None for d in shape]


def _check_contract(path: Path, inputs: list[tuple[str, list[int | None], str]],
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


class ExportedModel:
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
            self.keypoint_info: KeypointInfo | None = KeypointInfo(
                metadata.get("keypoint_set", "custom"), tuple(metadata["keypoint_names"]),
                tuple(tuple(p) for p in metadata["skeleton"]), tuple(metadata["flip_indices"]),
                tuple(metadata["sigmas"]))
        else:  # mmdeploy file: K from the output shape, else from a first run; COCO names when 17
            self.keypoint_info = keypoint_info_for(num_keypoints) if num_keypoints else None
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

    # -------------------------------------------------------------- model API used by rtmo.infer.api
    def predict_tensor(self, images: Any, threshold: float | None = None,
                       nms_threshold: float | None = None) -> dict[str, list[np.ndarray]]:
        """Same keys as `RTMO.predict_tensor` (per-image lists in network-input pixels), as numpy arrays."""
        thr = self._check_thresholds(threshold, nms_threshold)
        dets, kpts = self.run(images)
        if self.keypoint_info is None:
            self.keypoint_info = keypoint_info_for(kpts.shape[2])
        w, h = self.input_size
        out: dict[str, list[np.ndarray]] = {k: [] for k in _OUTPUT_KEYS}
        for b in range(dets.shape[0]):
            # Padding rows have score 0 (ours) or below the graph's threshold (mmdeploy): the strict
            # test against thr >= the baked threshold drops them.
            keep = dets[b, :, 4] > thr
            d, k = dets[b, keep], kpts[b, keep]
            boxes = d[:, :4].copy()
            boxes[:, 0::2] = boxes[:, 0::2].clip(0, w)  # no-op for our graphs; mmdeploy's are unclamped
            boxes[:, 1::2] = boxes[:, 1::2].clip(0, h)
            scores = np.ascontiguousarray(d[:, 4])
            vis = np.ascontiguousarray(k[..., 2])
            out["scores"].append(scores)
            out["bbox_scores"].append(scores)
            out["labels"].append(np.zeros(len(d), dtype=np.int64))
            out["pred_bboxes"].append(boxes)
            out["pred_keypoints"].append(np.ascontiguousarray(k[..., :2]))
            out["keypoint_scores"].append(vis)
            out["keypoints_visible"].append(vis)
        return out

    def _check_thresholds(self, threshold: float | None, nms_threshold: float | None) -> float:
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

    def infer(self, image: Any, threshold: float | None = None, nms_threshold: float | None = None) -> Any:
        """Poses in one image (path, BGR ndarray, PIL image) or a list of them -> PoseResult(s)."""
        from ..infer.api import infer

        self._check_thresholds(threshold, nms_threshold)  # fail before decoding anything
        self._learn_keypoints()
        return infer(self, image, threshold, nms_threshold)

    def predict(self, source: Any, stream: bool = False, **kwargs: Any) -> Iterator[Any] | list[Any]:
        """Results for any source the PyTorch model accepts (image, folder, video, camera, ...)."""
        from ..infer.sources import stream_results

        self._learn_keypoints()
        gen = stream_results(self, source, **kwargs)
        return gen if stream else list(gen)

    def _learn_keypoints(self) -> None:
        if self.keypoint_info is None:  # K only known from an output: learn it before results are built
            blank = np.zeros((1, 3) + tuple(self.input_size[::-1]), np.float32)
            self.keypoint_info = keypoint_info_for(self.run(blank)[1].shape[2])

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


def _check_file(path: str | Path, suffixes: tuple[str, ...]) -> Path:
    p = Path(path)
    if p.is_dir():
        raise ModelFileError(f"{p}: is a directory, not a model file")
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such model file")
    if p.suffix.lower() not in suffixes:
        raise ModelFileError(f"{p}: expected a {' or '.join(suffixes)} file")
    return p


def _first_line(e: BaseException) -> str:
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


# ------------------------------------------------------------------------------------- ONNX Runtime
# ONNX Runtime's intra-op threads spin after each run waiting for more work; the decoding and letterbox
# between runs (and any other process or torch pool) then compete with them for the same cores. Measured
# with bench/bench_peers.py (RTMO-s 640, 2 threads, alternating rounds, a shared 2-core machine): end to
# end 408 ms without spinning vs 617 ms with it (rtmlib, which keeps ORT's default spinning: 633 ms).
SPINNING_DEFAULT = False


def _ort_providers(device: Any) -> list[Any]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    spec = "" if device is None else str(device).strip().lower()
    if spec in ("", "auto"):  # the device rule: CUDA when available, else CPU
        return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
    if spec == "cpu":
        return ["CPUExecutionProvider"]
    m = re.fullmatch(r"(?:cuda:?)?(\d*)", spec) if spec.startswith("cuda") or spec.isdigit() else None
    if m is None:
        raise ValueError(f"device {device!r}: ONNX Runtime takes 'cpu', 'cuda' or 'cuda:N'")
    if "CUDAExecutionProvider" not in available:
        raise ValueError(f"device {device!r}: this onnxruntime has no CUDA provider "
                         "(install onnxruntime-gpu)")
    return [("CUDAExecutionProvider", {"device_id": int(m.group(1) or 0)}), "CPUExecutionProvider"]


class OnnxRuntimeModel(ExportedModel):
    """An exported RTMO graph on ONNX Runtime (device None: CUDA when available, else CPU).

    `num_threads`: intra-op threads (default: the physical cores); `spinning`: let idle pool threads
    spin (default SPINNING_DEFAULT)."""

    backend = "onnxruntime"

    def __init__(self, path: str | Path, providers: list[Any] | None = None, num_threads: int | None = None,
                 device: Any = None, spinning: bool | None = None):
        import onnxruntime as ort

        path = _check_file(path, (".onnx",))
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(num_threads) if num_threads else physical_cores()
        opts.inter_op_num_threads = 1
        spin = SPINNING_DEFAULT if spinning is None else spinning
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        self.num_threads = opts.intra_op_num_threads
        providers = providers or _ort_providers(device)
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=providers)
        except Exception as e:  # invalid protobuf, unknown ops, truncated file ...
            raise ModelFileError(f"{path}: not a readable ONNX model ({_first_line(e)}); "
                                 f"{CONTRACT}") from None
        self.device = "cuda" if "CUDAExecutionProvider" in self.session.get_providers() else "cpu"
        ins = [(i.name, _dims(i.shape), i.type) for i in self.session.get_inputs()]
        outs = [(o.name, _dims(o.shape), o.type) for o in self.session.get_outputs()]
        _check_contract(path, ins, outs)
        meta = read_metadata(dict(self.session.get_modelmeta().custom_metadata_map))
        kpt_dims = dict((n, d) for n, d, _ in outs)["keypoints"]
        selection = {} if "score_thr" in meta else graph_selection(path)
        super().__init__(path, meta, ins[0][1], kpt_dims[2], selection)
        self._input_name = ins[0][0]
        self._output_names = list(OUTPUT_NAMES)

    def _run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        dets, kpts = self.session.run(self._output_names, {self._input_name: batch})
        return dets, kpts


# ------------------------------------------------------------------------------------- OpenVINO
_OV_PRECISION = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}


class OpenVINOModel(ExportedModel):
    """An exported RTMO graph on OpenVINO: the .onnx read directly, or an OpenVINO IR .xml (+ .bin).

    `precision`: 'fp32' (default, also on CPUs with bf16 units), 'bf16' or 'fp16' (INFERENCE_PRECISION_HINT;
    refused when the device lacks it). An INT8 IR (see `rtmo.export.quantize`) runs as quantized."""

    backend = "openvino"

    def __init__(self, path: str | Path, device: Any = None, num_threads: int | None = None,
                 precision: str = "fp32"):
        try:
            import openvino as ov
        except ImportError as e:
            raise ImportError("OpenVINOModel needs the `openvino` package: pip install openvino") from e
        path = _check_file(path, (".onnx", ".xml"))
        if precision not in _OV_PRECISION:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        ov_device = "CPU" if device is None else str(device).upper()
        if ov_device.startswith("CUDA"):
            raise ValueError("OpenVINO does not run on CUDA devices; use device='cpu' (or 'GPU' for Intel "
                             "GPUs), or backend='onnxruntime' / 'tensorrt' on NVIDIA GPUs")
        if path.suffix.lower() == ".xml" and not path.with_suffix(".bin").is_file():
            raise ModelFileError(f"{path}: its weights file {path.with_suffix('.bin').name} is missing "
                                 "(an OpenVINO IR is an .xml and a .bin side by side)")
        core = ov.Core()
        try:
            model = core.read_model(str(path))
        except Exception as e:
            raise ModelFileError(f"{path}: not a readable model ({_first_line(e)}); {CONTRACT}") from None
        ins = [(i.get_any_name(), _dims(_ov_dims(i)), str(i.get_element_type())) for i in model.inputs]
        outs = [(o.get_any_name(), _dims(_ov_dims(o)), str(o.get_element_type())) for o in model.outputs]
        _check_contract(path, ins, outs)
        selection = _strict_nms_iou(model)
        config: dict[str, Any] = {"INFERENCE_NUM_THREADS": int(num_threads)} if num_threads else {}
        if ov_device.startswith("CPU"):
            caps = core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
            need = {"bf16": "BF16", "fp16": "FP16"}.get(precision)
            if need and need not in caps:
                raise ValueError(f"precision {precision!r}: this CPU has no {need} support in OpenVINO "
                                 f"(capabilities: {', '.join(caps)})")
            # Explicit, also for fp32: on CPUs with AMX/AVX512-BF16 OpenVINO would otherwise pick bf16.
            config["INFERENCE_PRECISION_HINT"] = _OV_PRECISION[precision]
        elif precision != "fp32":
            config["INFERENCE_PRECISION_HINT"] = _OV_PRECISION[precision]
        self.compiled = core.compile_model(model, ov_device, config)
        self.request = self.compiled.create_infer_request()
        if path.suffix.lower() == ".onnx":
            meta = read_metadata(_onnx_props(path))
            selection = selection if "score_thr" in meta else {**selection, **graph_selection(path)}
        else:
            meta = _ir_metadata(model)
        kpt_dims = dict((n, d) for n, d, _ in outs)["keypoints"]
        super().__init__(path, meta, ins[0][1], kpt_dims[2], {} if "score_thr" in meta else selection,
                         precision)
        self.num_threads = num_threads
        ports = {o.get_any_name(): o for o in self.compiled.outputs}
        self._outputs = [ports[n] for n in OUTPUT_NAMES]

    def _run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        res = self.request.infer({0: batch})
        return res[self._outputs[0]].copy(), res[self._outputs[1]].copy()


def _ov_dims(port: Any) -> list[int | None]:
    return [d.get_length() if d.is_static else None for d in port.get_partial_shape()]


def _onnx_props(path: Path) -> dict[str, str]:
    try:
        import onnx

        return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    except Exception:
        return {}


def _strict_nms_iou(model: Any) -> dict[str, Any]:
    """OpenVINO's NonMaxSuppression suppresses at IoU >= threshold, ONNX Runtime's and mmpose's at IoU >
    threshold (checked on an IoU of exactly 0.5 in the tests). For float32 IoUs, `>= nextafter(thr)` is
    `> thr`, so the threshold constant is nudged up by one ulp in the loaded model (the file is untouched).
    Returns the NMS settings found (score / IoU thresholds), for files without metadata."""
    import openvino as ov

    found: dict[str, Any] = {}
    for op in model.get_ops():
        if not op.get_type_name().startswith("NonMaxSuppression") or op.get_input_size() < 4:
            continue
        src = op.input_value(3).get_node()
        if src.get_type_name() != "Constant":
            continue
        thr = np.asarray(src.get_data(), dtype=np.float32)
        found["nms_thr"] = round(float(thr.ravel()[0]), 6)
        if op.get_input_size() > 4 and op.input_value(4).get_node().get_type_name() == "Constant":
            found["score_thr"] = round(float(np.ravel(op.input_value(4).get_node().get_data())[0]), 6)
        nudged = np.array(np.nextafter(thr, np.float32(np.inf)), dtype=np.float32).reshape(thr.shape)
        op.input(3).replace_source_output(ov.op.Constant(nudged).output(0))
    model.validate_nodes_and_infer_types()
    return found


def _ir_metadata(model: Any) -> dict[str, Any]:
    """Our metadata as stored in an IR's rt_info (by `rtmo export --format openvino`)."""
    try:
        info = model.get_rt_info()
        props = {k: str(model.get_rt_info([k]).astype(str)) for k in info
                 if str(k).startswith(METADATA_PREFIX)}
        return read_metadata(props)
    except Exception:  # IR without our metadata: behave as an official file
        return {}


# ------------------------------------------------------------------------------------- TensorRT
def _require_tensorrt() -> Any:
    try:
        import tensorrt as trt
    except ImportError as e:
        raise ImportError("TensorRT support needs the `tensorrt` package and an NVIDIA GPU "
                          "(pip install tensorrt); it is not installed here") from e
    import torch  # CUDA buffers and streams for TensorRT come from torch

    if not torch.cuda.is_available():
        raise RuntimeError("TensorRT needs a CUDA device, and torch sees none (a CPU-only torch build "
                           "or no NVIDIA GPU)")
    return trt


def build_engine(onnx_path: str | Path, engine_path: str | Path, half: bool = True,
                 max_batch: int = 8, workspace_gib: float = 4.0) -> Path:
    """Build a TensorRT engine from an exported ONNX file; the rtmo metadata goes to `<engine>.json`.

    The engine is written to a temporary file beside the target and renamed when complete."""
    trt = _require_tensorrt()
    onnx_path, engine_path = _check_file(onnx_path, (".onnx",)), Path(engine_path)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0 if int(trt.__version__.split(".")[0]) >= 10 else \
        1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    if half and builder.platform_has_fast_fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    inp = network.get_input(0)
    _, c, h, w = inp.shape
    meta = read_metadata(_onnx_props(onnx_path))
    if "score_thr" not in meta:  # an mmdeploy file: keep what its graph bakes in
        meta["selection"] = graph_selection(onnx_path)
    if h < 0 or w < 0:
        w, h = meta.get("input_size", (640, 640))
    profile = builder.create_optimization_profile()
    profile.set_shape(inp.name, (1, c, h, w), (1, c, h, w), (max_batch if inp.shape[0] < 0 else 1, c, h, w))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path}")
    engine_path.parent.mkdir(parents=True, exist_ok=True)
    meta.setdefault("input_size", [int(w), int(h)])
    meta["precision"] = "fp16" if half and builder.platform_has_fast_fp16 else "fp32"
    for target, data in ((engine_path, bytes(serialized)),
                         (engine_path.with_suffix(".json"), json.dumps(meta).encode())):
        tmp = target.with_name(f".{target.name}.part")
        tmp.write_bytes(data)
        os.replace(tmp, target)
    return engine_path


class TensorRTModel(ExportedModel):
    """A TensorRT engine from `build_engine`. Outputs have data-dependent shapes (NMS), so they are
    allocated on demand through an output allocator (TensorRT >= 8.6 / 10 API). Uses torch for CUDA
    memory (the only exported backend that does)."""

    backend = "tensorrt"
    device = "cuda"

    def __init__(self, path: str | Path, device: Any = None):
        trt = _require_tensorrt()
        import torch

        path = _check_file(path, TENSORRT_SUFFIXES)
        side = path.with_suffix(".json")
        meta = json.loads(side.read_text()) if side.exists() else {}
        selection = meta.pop("selection", {})
        precision = meta.pop("precision", "fp16")
        self._torch = torch
        self._cuda = torch.device("cuda" if device in (None, "", "auto") else device)
        if self._cuda.type != "cuda":
            raise ValueError(f"device {device!r}: a TensorRT engine runs on a CUDA device")
        with torch.cuda.device(self._cuda):
            runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
            self.engine = runtime.deserialize_cuda_engine(path.read_bytes())
            if self.engine is None:
                raise ModelFileError(f"{path}: not a TensorRT engine for this TensorRT version / GPU "
                                     "(engines are tied to both: rebuild it with `rtmo export --format "
                                     "tensorrt` here)")
            self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if n not in inputs]
        _check_contract(path, [(n, _dims(self.engine.get_tensor_shape(n)), "float32") for n in inputs],
                        [(n, _dims(self.engine.get_tensor_shape(n)), "float32") for n in outputs])
        self._input, self._outputs = inputs[0], list(OUTPUT_NAMES)
        self._allocator = _make_output_allocator(trt, torch, self._cuda)
        for n in outputs:
            self.context.set_output_allocator(n, self._allocator)
        kdims = _dims(self.engine.get_tensor_shape("keypoints"))
        super().__init__(path, meta, _dims(self.engine.get_tensor_shape(self._input)), kdims[2], selection,
                         precision)

    def _run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        torch = self._torch
        x = torch.from_numpy(batch).to(self._cuda)
        self.context.set_input_shape(self._input, tuple(x.shape))
        self.context.set_tensor_address(self._input, x.data_ptr())
        stream = torch.cuda.current_stream(self._cuda)
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed")
        stream.synchronize()
        return self._allocator.result("dets"), self._allocator.result("keypoints")


def _make_output_allocator(trt: Any, torch: Any, device: Any) -> Any:
    class _Allocator(trt.IOutputAllocator):
        def __init__(self) -> None:
            super().__init__()
            self.buffers: dict[str, Any] = {}
            self.shapes: dict[str, tuple[int, ...]] = {}

        def reallocate_output(self, name: str, memory: int, size: int, alignment: int) -> int:
            buf = self.buffers.get(name)
            if buf is None or buf.numel() < size:
                buf = self.buffers[name] = torch.empty(max(size, 1), dtype=torch.uint8, device=device)
            return buf.data_ptr()

        def reallocate_output_async(self, name: str, memory: int, size: int, alignment: int,
                                    stream: Any = None) -> int:  # the TensorRT >= 10 name
            return self.reallocate_output(name, memory, size, alignment)

        def notify_shape(self, name: str, shape: Any) -> None:
            self.shapes[name] = tuple(shape)

        def result(self, name: str) -> np.ndarray:
            shape = self.shapes[name]
            n = int(np.prod(shape))
            return self.buffers[name][:n * 4].view(torch.float32)[:n].reshape(shape).cpu().numpy()

    return _Allocator()


# ------------------------------------------------------------------------------------- opening
def backend_for(path: str | Path) -> str:
    suffix = Path(path).suffix.lower()
    return "tensorrt" if suffix in TENSORRT_SUFFIXES else "openvino" if suffix == ".xml" else "onnxruntime"


def load_exported(path: str | Path, backend: str | None = None, num_threads: int | None = None,
                  device: Any = None, precision: str = "fp32", **kwargs: Any) -> ExportedModel:
    """Open an exported model: `backend` in BACKENDS (by suffix when None: .onnx -> onnxruntime,
    .xml -> openvino, .engine -> tensorrt); `precision` 'fp32' | 'bf16' | 'fp16' (see each backend)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    p = Path(path)
    backend = backend or backend_for(p)
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
    if backend == "onnxruntime":
        if precision != "fp32":
            raise ValueError(f"precision {precision!r}: ONNX Runtime runs the file's own precision (fp32, or "
                             "an INT8 file from rtmo export --int8); use backend='openvino' for bf16/fp16")
        return OnnxRuntimeModel(p, num_threads=num_threads, device=device, **kwargs)
    if backend == "openvino":
        return OpenVINOModel(p, device=device, num_threads=num_threads, precision=precision, **kwargs)
    if p.suffix.lower() not in TENSORRT_SUFFIXES:
        raise ValueError(f"{p}: TensorRT runs engines (.engine); build one with `rtmo export --format "
                         "tensorrt` (fp16) and open that")
    model = TensorRTModel(p, device=device)
    if precision != "fp32" and precision != model.precision:
        raise ValueError(f"precision {precision!r}: {p.name} was built as {model.precision}; rebuild it")
    return model


__all__ = ["ExportedModel", "OnnxRuntimeModel", "OpenVINOModel", "TensorRTModel", "ModelFileError",
           "build_engine", "load_exported", "graph_selection", "read_metadata", "INPUT_NAME", "OUTPUT_NAMES",
           "CONTRACT", "BACKENDS", "PRECISIONS"]
