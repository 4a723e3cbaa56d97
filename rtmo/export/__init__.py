"""Deployment: ONNX export (NMS + DCC in the graph) and runtimes (ONNX Runtime, OpenVINO, TensorRT)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .onnx import export_onnx, read_metadata
from .runtime import OnnxRuntimeModel, OpenVINOModel, TensorRTModel, build_engine, load_exported

FORMATS = ("onnx", "openvino", "tensorrt")


def export(model: Any, path: str | Path | None = None, format: str = "onnx", **kwargs: Any) -> Path:
    """`RTMO.export`: write a deployable file and return its path.

    format 'onnx' -> `<path>.onnx` (see `export_onnx` for kwargs); 'openvino' -> the same ONNX file (OpenVINO
    reads it directly); 'tensorrt' -> ONNX then `<path>.engine` (needs tensorrt + CUDA; kwarg `half`).
    """
    if format not in FORMATS:
        raise ValueError(f"unknown export format {format!r}; choose from {FORMATS}")
    if path is None:
        variant = getattr(model.config, "variant", None) or "custom"
        path = Path(f"rtmo-{variant}.onnx")
    path = Path(path)
    onnx_path = path if path.suffix == ".onnx" else path.with_suffix(".onnx")
    half = kwargs.pop("half", True)
    out = export_onnx(model, onnx_path, **kwargs)
    if format == "tensorrt":
        return build_engine(out, out.with_suffix(".engine"), half=half)
    return out


__all__ = ["export", "export_onnx", "read_metadata", "OnnxRuntimeModel", "OpenVINOModel", "TensorRTModel",
           "build_engine", "load_exported", "FORMATS"]
