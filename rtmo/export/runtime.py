"""Run exported RTMO graphs (ours or the official mmdeploy `end2end.onnx`) with the PyTorch model's API:
ONNX Runtime and OpenVINO here, TensorRT in `rtmo.export.tensorrt`, and `load_exported` to open any of
them. Each runtime is an `ExportedModel` (`rtmo.export.contract`): a `rtmo.infer.backend.PoseBackend`
whose `predict_batch` returns the decode step's `KeypointOutput` as numpy arrays, so `infer`/`predict`
reuse the very same letterbox, batching and back-mapping code as the PyTorch model. Nothing here imports
torch (a deployment install runs without it).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from ..config import PRECISIONS
from .contract import (
    CONTRACT,
    INPUT_NAME,
    METADATA_PREFIX,
    OUTPUT_NAMES,
    ExportedModel,
    ModelFileError,
    check_contract,
    check_file,
    first_line,
    graph_dims,
    graph_selection,
    onnx_props,
    read_metadata,
)
from .optimize import optimized_onnx, reassociate_bin_products
from .tensorrt import TENSORRT_SUFFIXES, TensorRTModel, build_engine

BACKENDS = ("onnxruntime", "openvino", "tensorrt")


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
    spin (default SPINNING_DEFAULT); `optimize`: open the graph with `rtmo.export.optimize`'s rewrites
    (the DCC's reassociated bin products; equal up to float rounding), False runs the file as it is."""

    backend = "onnxruntime"

    def __init__(self, path: str | Path, providers: list[Any] | None = None, num_threads: int | None = None,
                 device: Any = None, spinning: bool | None = None, optimize: bool = True):
        import onnxruntime as ort

        path = check_file(path, (".onnx",))
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(num_threads) if num_threads else physical_cores()
        opts.inter_op_num_threads = 1
        spin = SPINNING_DEFAULT if spinning is None else spinning
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        self.num_threads = opts.intra_op_num_threads
        providers = providers or _ort_providers(device)
        try:
            source = optimized_onnx(path) if optimize else None
            self.session = ort.InferenceSession(str(path) if source is None else source, opts,
                                                providers=providers)
        except Exception as e:  # invalid protobuf, unknown ops, truncated file ...
            raise ModelFileError(f"{path}: not a readable ONNX model ({first_line(e)}); "
                                 f"{CONTRACT}") from None
        self.device = "cuda" if "CUDAExecutionProvider" in self.session.get_providers() else "cpu"
        ins = [(i.name, graph_dims(i.shape), i.type) for i in self.session.get_inputs()]
        outs = [(o.name, graph_dims(o.shape), o.type) for o in self.session.get_outputs()]
        check_contract(path, ins, outs)
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


def split_at_decoder(path: Path, optimize: bool = True) -> tuple[Any, Any, list[str]] | None:
    """An rtmo-exported ONNX graph cut in two: the network (`input` -> head maps, priors, canvas size) and
    the decoder (-> `dets`, `keypoints`), as ONNX models, and the names of the tensors between them.

    Reduced precision then runs only the network at bf16/fp16 while selection, NMS and DCC stay in float32,
    as the torch model does: OpenVINO's whole-graph bf16 moves keypoints by about 1 px (the DCC's bin
    softmax is sensitive), the cut one by a few hundredths, for ~5 % more time. None for graphs without
    rtmo's `/decoder/` scope (mmdeploy's) or without the `onnx` package. `optimize`: the decoder with
    `reassociate_bin_products` applied."""
    try:
        import onnx
        from onnx.utils import Extractor
    except ImportError:
        return None
    model = onnx.load(str(path))
    if optimize:
        reassociate_bin_products(model)
    graph = model.graph
    fixed = {i.name for i in graph.initializer} | {o for n in graph.node if n.op_type == "Constant"
                                                   for o in n.output}
    producer = {o: n for n in graph.node for o in n.output}

    def in_decoder(node: Any) -> bool:
        return node.name.startswith("/decoder/")

    between: list[str] = []
    for node in graph.node:
        if in_decoder(node):
            for name in node.input:
                if name and name not in fixed and name not in between and not (
                        name in producer and in_decoder(producer[name])):
                    between.append(name)
    if not between:
        return None
    cut = Extractor(onnx.shape_inference.infer_shapes(model))  # the cut needs the tensors' types
    return (cut.extract_model([graph.input[0].name], between), cut.extract_model(between, list(OUTPUT_NAMES)),
            between)


class OpenVINOModel(ExportedModel):
    """An exported RTMO graph on OpenVINO: the .onnx read directly, or an OpenVINO IR .xml (+ .bin).

    `precision`: 'fp32' (default, also on CPUs with bf16 units), 'bf16' or 'fp16' (INFERENCE_PRECISION_HINT;
    refused when the device lacks it). For rtmo's own .onnx files reduced precision covers the network only,
    the decoder (selection, NMS, DCC) stays float32 (`split_at_decoder`); IR files and mmdeploy's graphs run
    whole at that precision. An INT8 IR (see `rtmo.export.quantize`) runs as quantized. `optimize`: .onnx
    files are opened with `rtmo.export.optimize`'s rewrites (as on ONNX Runtime)."""

    backend = "openvino"

    def __init__(self, path: str | Path, device: Any = None, num_threads: int | None = None,
                 precision: str = "fp32", optimize: bool = True):
        try:
            import openvino as ov
        except ImportError as e:
            raise ImportError("OpenVINOModel needs the `openvino` package: pip install openvino") from e
        path = check_file(path, (".onnx", ".xml"))
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
            source = optimized_onnx(path) if optimize and path.suffix.lower() == ".onnx" else None
            model = core.read_model(str(path) if source is None else source)
        except Exception as e:
            raise ModelFileError(f"{path}: not a readable model ({first_line(e)}); {CONTRACT}") from None
        ins = [(i.get_any_name(), graph_dims(_ov_dims(i)), str(i.get_element_type())) for i in model.inputs]
        outs = [(o.get_any_name(), graph_dims(_ov_dims(o)), str(o.get_element_type())) for o in model.outputs]
        check_contract(path, ins, outs)
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
        parts = (split_at_decoder(path, optimize) if precision != "fp32" and path.suffix.lower() == ".onnx"
                 else None)
        self._decoder = None
        if parts is None:
            self.compiled = core.compile_model(model, ov_device, config)
        else:
            network, decoder, self._between = parts
            self.compiled = core.compile_model(core.read_model(network.SerializeToString()), ov_device,
                                               config)
            self._decoder = core.compile_model(core.read_model(decoder.SerializeToString()), ov_device,
                                               {**config, "INFERENCE_PRECISION_HINT": "f32"})
            self._decoder_request = self._decoder.create_infer_request()
            self._decoder_outputs = [self._decoder.output(n) for n in OUTPUT_NAMES]
        self.request = self.compiled.create_infer_request()
        if self._decoder is not None:
            self._between_ports = [(n, self.compiled.output(n)) for n in self._between]
        if path.suffix.lower() == ".onnx":
            meta = read_metadata(onnx_props(path))
            selection = selection if "score_thr" in meta else {**selection, **graph_selection(path)}
        else:
            meta = _ir_metadata(model)
        kpt_dims = dict((n, d) for n, d, _ in outs)["keypoints"]
        super().__init__(path, meta, ins[0][1], kpt_dims[2], {} if "score_thr" in meta else selection,
                         precision)
        self.num_threads = num_threads
        if self._decoder is None:
            ports = {o.get_any_name(): o for o in self.compiled.outputs}
            self._outputs = [ports[n] for n in OUTPUT_NAMES]

    def _run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        res = self.request.infer({0: batch})
        if self._decoder is None:
            return res[self._outputs[0]].copy(), res[self._outputs[1]].copy()
        out = self._decoder_request.infer({n: res[port] for n, port in self._between_ports})
        return out[self._decoder_outputs[0]].copy(), out[self._decoder_outputs[1]].copy()


def _ov_dims(port: Any) -> list[int | None]:
    return [d.get_length() if d.is_static else None for d in port.get_partial_shape()]

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
