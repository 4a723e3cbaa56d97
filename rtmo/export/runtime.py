"""Run exported RTMO graphs (ours or the official mmdeploy `end2end.onnx`) with the PyTorch model's API.

Every runtime class exposes what `rtmo.infer.api` needs from a model (`input_size`, `device`,
`keypoint_info`, `class_names`, `predict_tensor`), so `infer`/`predict` reuse the very same letterbox,
batching and back-mapping code as the PyTorch model.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import KeypointInfo, RTMOConfig, keypoint_info_for
from .onnx import INPUT_NAME, read_metadata

_DEFAULT_SCORE_THR = RTMOConfig.score_thr


class ExportedModel:
    """Shared logic: metadata, thresholds, output unpacking. Subclasses implement `_run`."""

    device = torch.device("cpu")  # pre-processing hands tensors here; backends take numpy

    def __init__(self, path: str | Path, metadata: dict[str, Any], graph_input_shape: list[Any]):
        self.path = Path(path)
        self.metadata = metadata
        self.official = not metadata  # an mmdeploy file: no rtmo metadata
        shape = list(graph_input_shape)
        self.static_batch = isinstance(shape[0], int) and shape[0] > 0
        if "input_size" in metadata:
            self.input_size: tuple[int, int] = tuple(int(v) for v in metadata["input_size"])
        elif all(isinstance(v, int) and v > 0 for v in shape[2:4]):
            self.input_size = (int(shape[3]), int(shape[2]))  # graph is NCHW, input_size is (w, h)
        else:
            self.input_size = (640, 640)
            warnings.warn(f"{self.path.name}: no metadata and a dynamic input size; assuming 640x640",
                          stacklevel=3)
        if "keypoint_names" in metadata:
            self.keypoint_info = KeypointInfo(
                metadata.get("keypoint_set", "custom"), tuple(metadata["keypoint_names"]),
                tuple(tuple(p) for p in metadata["skeleton"]), tuple(metadata["flip_indices"]),
                tuple(metadata["sigmas"]))
        else:
            self.keypoint_info = None  # known after the first run (K from the output); COCO when 17
        self.class_names: tuple[str, ...] = tuple(metadata.get("class_names", ("person",)))
        # Thresholds baked into the graph; an official file's are unknown, so its score threshold is
        # only applied on the output (default: mmpose's test config).
        self.baked_score_thr: float | None = metadata.get("score_thr")
        self.baked_nms_thr: float | None = metadata.get("nms_thr")
        self.score_thr = self.baked_score_thr if self.baked_score_thr is not None else _DEFAULT_SCORE_THR
        if not self.official and self.keypoint_info is None:
            raise ValueError(f"{self.path}: rtmo metadata without keypoint names")

    # -------------------------------------------------------------- backend
    def _run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def run(self, batch: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Raw graph outputs (dets (B,N,5), keypoints (B,N,K,3)) for a float32 (B,3,H,W) batch."""
        if isinstance(batch, torch.Tensor):
            batch = batch.detach().cpu().numpy()
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if batch.ndim != 4 or batch.shape[1] != 3:
            raise ValueError(f"expected a (B,3,H,W) batch, got shape {batch.shape}")
        if self.static_batch and batch.shape[0] != 1:
            # Fixed batch 1 (official files): one image at a time, padded to a common N.
            outs = [self._run(batch[i:i + 1]) for i in range(batch.shape[0])]
            n = max(d.shape[1] for d, _ in outs)
            dets = np.zeros((len(outs), n, 5), np.float32)
            kpts = np.zeros((len(outs), n) + outs[0][1].shape[2:], np.float32)
            for i, (d, k) in enumerate(outs):
                dets[i, :d.shape[1]], kpts[i, :k.shape[1]] = d[0], k[0]
            return dets, kpts
        return self._run(batch)

    # -------------------------------------------------------------- model API used by rtmo.infer.api
    def predict_tensor(self, images: torch.Tensor | np.ndarray, score_thr: float | None = None,
                       nms_thr: float | None = None) -> dict[str, list[torch.Tensor]]:
        """Same output as `RTMO.predict_tensor`: per-image lists in network-input pixels."""
        thr = self._check_thresholds(score_thr, nms_thr)
        dets, kpts = self.run(images)
        if self.keypoint_info is None:
            self.keypoint_info = keypoint_info_for(kpts.shape[2])
        w, h = images.shape[3], images.shape[2]
        out: dict[str, list[torch.Tensor]] = {k: [] for k in (
            "scores", "labels", "pred_bboxes", "bbox_scores", "pred_keypoints", "keypoint_scores",
            "keypoints_visible")}
        for b in range(dets.shape[0]):
            # Padding rows have score 0 and thr >= 0, so the strict test drops them.
            keep = dets[b, :, 4] > thr
            d, k = dets[b, keep], kpts[b, keep]
            boxes = d[:, :4].copy()
            boxes[:, 0::2] = boxes[:, 0::2].clip(0, w)  # no-op for our graphs; mmdeploy's are unclamped
            boxes[:, 1::2] = boxes[:, 1::2].clip(0, h)
            scores = torch.from_numpy(np.ascontiguousarray(d[:, 4]))
            vis = torch.from_numpy(np.ascontiguousarray(k[..., 2]))
            out["scores"].append(scores)
            out["bbox_scores"].append(scores)
            out["labels"].append(torch.zeros(len(d), dtype=torch.long))
            out["pred_bboxes"].append(torch.from_numpy(boxes))
            out["pred_keypoints"].append(torch.from_numpy(np.ascontiguousarray(k[..., :2])))
            out["keypoint_scores"].append(vis)
            out["keypoints_visible"].append(vis)
        return out

    def _check_thresholds(self, score_thr: float | None, nms_thr: float | None) -> float:
        thr = self.score_thr if score_thr is None else float(score_thr)
        if self.baked_score_thr is not None and thr < self.baked_score_thr:
            raise ValueError(f"threshold {thr} is below the score threshold {self.baked_score_thr} baked "
                             f"into {self.path.name}; re-export with a lower score_thr")
        if thr < 0:
            raise ValueError(f"threshold must be >= 0, got {thr}")
        if nms_thr is not None:
            if self.baked_nms_thr is None:
                raise ValueError(f"{self.path.name} has NMS inside the graph with an unknown IoU threshold; "
                                 "nms_threshold cannot be changed")
            if abs(float(nms_thr) - self.baked_nms_thr) > 1e-9:
                raise ValueError(f"{self.path.name} has NMS inside the graph at IoU {self.baked_nms_thr}; "
                                 f"re-export with nms_thr={nms_thr} to change it")
        return thr

    def infer(self, image: Any, threshold: float | None = None, nms_threshold: float | None = None) -> Any:
        """Poses in one image (path, BGR ndarray, PIL image) or a list of them -> PoseResult(s)."""
        from ..infer.api import infer

        self._check_thresholds(threshold, nms_threshold)  # fail before decoding anything
        if self.keypoint_info is None:  # official file: learn K before results are built
            self.keypoint_info = keypoint_info_for(self.run(np.zeros((1, 3) + self.input_size[::-1],
                                                                       np.float32))[1].shape[2])
        return infer(self, image, threshold, nms_threshold)

    def predict(self, source: Any, stream: bool = False, **kwargs: Any) -> Iterator[Any] | list[Any]:
        """Results for any source the PyTorch model accepts (image, folder, video, camera, ...)."""
        from ..infer.api import predict

        gen = predict(self, source, **kwargs)
        return gen if stream else list(gen)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, input_size={self.input_size})"


def _load_onnx_metadata(path: Path) -> dict[str, Any]:
    import onnx

    return read_metadata(onnx.load(str(path), load_external_data=False))


def _check_file(path: str | Path, suffixes: tuple[str, ...]) -> Path:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such model file")
    if p.suffix.lower() not in suffixes:
        raise ValueError(f"{p}: expected a {' or '.join(suffixes)} file")
    return p


class OnnxRuntimeModel(ExportedModel):
    """An exported RTMO graph on ONNX Runtime. `providers` defaults to CUDA when available, else CPU."""

    def __init__(self, path: str | Path, providers: list[Any] | None = None, num_threads: int | None = None):
        import onnxruntime as ort

        path = _check_file(path, (".onnx",))
        opts = ort.SessionOptions()
        if num_threads:
            opts.intra_op_num_threads = int(num_threads)
            opts.inter_op_num_threads = 1
        if providers is None:
            available = ort.get_available_providers()
            providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        self.session = ort.InferenceSession(str(path), opts, providers=providers)
        inp = self.session.get_inputs()[0]
        meta = read_metadata(dict(self.session.get_modelmeta().custom_metadata_map))
        super().__init__(path, meta, inp.shape)
        self._input_name = inp.name

    def _run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        dets, kpts = self.session.run(None, {self._input_name: batch})[:2]
        return dets, kpts


class OpenVINOModel(ExportedModel):
    """An exported RTMO graph on OpenVINO (reads the .onnx directly, or an OpenVINO IR .xml)."""

    def __init__(self, path: str | Path, device: str = "CPU", num_threads: int | None = None):
        try:
            import openvino as ov
        except ImportError as e:
            raise ImportError("OpenVINOModel needs the `openvino` package: pip install openvino") from e
        path = _check_file(path, (".onnx", ".xml"))
        core = ov.Core()
        model = core.read_model(str(path))
        _strict_nms_iou(model)
        config: dict[str, Any] = {"INFERENCE_NUM_THREADS": int(num_threads)} if num_threads else {}
        if device.upper().startswith("CPU"):
            config["INFERENCE_PRECISION_HINT"] = "f32"  # keep fp32 even on CPUs with bf16 support
        self.compiled = core.compile_model(model, device, config)
        self.request = self.compiled.create_infer_request()
        meta = _load_onnx_metadata(path) if path.suffix == ".onnx" else _ir_metadata(model)
        shape = [d.get_length() if d.is_static else None for d in model.inputs[0].get_partial_shape()]
        super().__init__(path, meta, shape)

    def _run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        res = self.request.infer({0: batch})
        return res[self.compiled.output(0)].copy(), res[self.compiled.output(1)].copy()


def _strict_nms_iou(model: Any) -> None:
    """OpenVINO's NonMaxSuppression suppresses at IoU >= threshold, ONNX Runtime's and mmpose's at IoU >
    threshold (checked on an IoU of exactly 0.5 in the tests). For float32 IoUs, `>= nextafter(thr)` is
    `> thr`, so the threshold constant is nudged up by one ulp in the loaded model (the file is untouched).
    """
    import openvino as ov

    for op in model.get_ops():
        if op.get_type_name() != "NonMaxSuppression" or op.get_input_size() < 4:
            continue
        src = op.input_value(3).get_node()
        if src.get_type_name() != "Constant":
            continue
        thr = np.asarray(src.get_data(), dtype=np.float32)
        nudged = np.array(np.nextafter(thr, np.float32(np.inf)), dtype=np.float32).reshape(thr.shape)
        op.input(3).replace_source_output(ov.op.Constant(nudged).output(0))
    model.validate_nodes_and_infer_types()


def _ir_metadata(model: Any) -> dict[str, Any]:
    try:
        return read_metadata({k: str(model.get_rt_info([k]).astype(str)) for k in model.get_rt_info()})
    except Exception:  # IR without our metadata: behave as an official file
        return {}


# ------------------------------------------------------------------------------------- TensorRT
def _require_tensorrt() -> Any:
    try:
        import tensorrt as trt
    except ImportError as e:
        raise ImportError("TensorRT support needs the `tensorrt` package and an NVIDIA GPU "
                          "(pip install tensorrt); it is not installed here") from e
    if not torch.cuda.is_available():
        raise RuntimeError("TensorRT needs a CUDA device, and torch sees none (a CPU-only torch build "
                           "or no NVIDIA GPU)")
    return trt


def build_engine(onnx_path: str | Path, engine_path: str | Path, half: bool = True,
                 max_batch: int = 8, workspace_gib: float = 4.0) -> Path:
    """Build a TensorRT engine from an exported ONNX file; the rtmo metadata goes to `<engine>.json`."""
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
    meta = _load_onnx_metadata(onnx_path)
    if h < 0 or w < 0:
        w, h = meta.get("input_size", (640, 640))
    profile = builder.create_optimization_profile()
    profile.set_shape(inp.name, (1, c, h, w), (1, c, h, w), (max_batch if inp.shape[0] < 0 else 1, c, h, w))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path}")
    engine_path.parent.mkdir(parents=True, exist_ok=True)
    engine_path.write_bytes(bytes(serialized))
    meta.setdefault("input_size", [int(w), int(h)])
    engine_path.with_suffix(".json").write_text(json.dumps(meta))
    return engine_path


class TensorRTModel(ExportedModel):
    """A TensorRT engine from `build_engine`. Outputs have data-dependent shapes (NMS), so they are
    allocated on demand through an output allocator (TensorRT >= 8.6 / 10 API)."""

    def __init__(self, path: str | Path):
        trt = _require_tensorrt()
        path = _check_file(path, (".engine", ".plan", ".trt"))
        side = path.with_suffix(".json")
        meta = json.loads(side.read_text()) if side.exists() else {}
        self._trt = trt
        self.engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise RuntimeError(f"{path}: not a TensorRT engine for this TensorRT version / GPU")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self._input = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
        self._outputs = [n for n in names if n != self._input]
        self._allocator = _make_output_allocator(trt)
        for n in self._outputs:
            self.context.set_output_allocator(n, self._allocator)
        super().__init__(path, meta, list(self.engine.get_tensor_shape(self._input)))

    def _run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = torch.from_numpy(batch).cuda()
        self.context.set_input_shape(self._input, tuple(x.shape))
        self.context.set_tensor_address(self._input, x.data_ptr())
        stream = torch.cuda.current_stream()
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed")
        stream.synchronize()
        outs = {n: self._allocator.result(n) for n in self._outputs}
        return outs.get("dets", outs[self._outputs[0]]), outs.get("keypoints", outs[self._outputs[1]])


def _make_output_allocator(trt: Any) -> Any:
    class _Allocator(trt.IOutputAllocator):
        def __init__(self) -> None:
            super().__init__()
            self.buffers: dict[str, torch.Tensor] = {}
            self.shapes: dict[str, tuple[int, ...]] = {}

        def reallocate_output(self, name: str, memory: int, size: int, alignment: int) -> int:
            buf = self.buffers.get(name)
            if buf is None or buf.numel() < size:
                buf = self.buffers[name] = torch.empty(max(size, 1), dtype=torch.uint8, device="cuda")
            return buf.data_ptr()

        def notify_shape(self, name: str, shape: Any) -> None:
            self.shapes[name] = tuple(shape)

        def result(self, name: str) -> np.ndarray:
            shape = self.shapes[name]
            n = int(np.prod(shape))
            return self.buffers[name][:n * 4].view(torch.float32)[:n].reshape(shape).cpu().numpy()

    return _Allocator()


def load_exported(path: str | Path, backend: str | None = None, **kwargs: Any) -> ExportedModel:
    """Open an exported model; `backend` in {'onnxruntime', 'openvino', 'tensorrt'}, by suffix if None."""
    p = Path(path)
    backend = backend or ("tensorrt" if p.suffix in (".engine", ".plan", ".trt") else
                          "openvino" if p.suffix == ".xml" else "onnxruntime")
    classes = {"onnxruntime": OnnxRuntimeModel, "openvino": OpenVINOModel, "tensorrt": TensorRTModel}
    if backend not in classes:
        raise ValueError(f"unknown backend {backend!r}; choose from {sorted(classes)}")
    return classes[backend](p, **kwargs)


__all__ = ["ExportedModel", "OnnxRuntimeModel", "OpenVINOModel", "TensorRTModel", "build_engine",
           "load_exported", "INPUT_NAME"]
