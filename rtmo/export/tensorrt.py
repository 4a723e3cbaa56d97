"""TensorRT: engines built from an exported ONNX file, and `TensorRTModel` to run them. The only exported
backend that uses torch (for its CUDA buffers and streams), imported when an engine is built or opened."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from .contract import (
    OUTPUT_NAMES,
    ExportedModel,
    ModelFileError,
    check_contract,
    check_file,
    graph_dims,
    graph_selection,
    onnx_props,
    read_metadata,
)
from .files import install

TENSORRT_SUFFIXES = (".engine", ".plan", ".trt")


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

    Both land through `rtmo.export.files.install` (written whole under a temporary name, then renamed)."""
    trt = _require_tensorrt()
    onnx_path, engine_path = check_file(onnx_path, (".onnx",)), Path(engine_path)
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
    meta = read_metadata(onnx_props(onnx_path))
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
    meta.setdefault("input_size", [int(w), int(h)])
    meta["precision"] = "fp16" if half and builder.platform_has_fast_fp16 else "fp32"
    install([(engine_path.with_suffix(".json"), json.dumps(meta).encode()), (engine_path, bytes(serialized))])
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

        path = check_file(path, TENSORRT_SUFFIXES)
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
        check_contract(path, [(n, graph_dims(self.engine.get_tensor_shape(n)), "float32") for n in inputs],
                        [(n, graph_dims(self.engine.get_tensor_shape(n)), "float32") for n in outputs])
        self._input, self._outputs = inputs[0], list(OUTPUT_NAMES)
        self._allocator = _make_output_allocator(trt, torch, self._cuda)
        for n in outputs:
            self.context.set_output_allocator(n, self._allocator)
        kdims = graph_dims(self.engine.get_tensor_shape("keypoints"))
        in_dims = graph_dims(self.engine.get_tensor_shape(self._input))
        super().__init__(path, meta, in_dims, kdims[2], selection, precision)

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
