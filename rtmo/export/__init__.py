"""Deployment: ONNX export (NMS + DCC in the graph) and runtimes (ONNX Runtime, OpenVINO, TensorRT)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

# Imported on first use (PEP 562): `import rtmo.export.runtime` must not pull torch in through `.onnx`.
_LAZY = {"export_onnx": "onnx", "read_metadata": "runtime", "OnnxRuntimeModel": "runtime",
         "OpenVINOModel": "runtime", "TensorRTModel": "runtime", "build_engine": "runtime",
         "load_exported": "runtime"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(name)


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
    from .onnx import export_onnx
    from .runtime import build_engine

    half = kwargs.pop("half", True)
    out = export_onnx(model, onnx_path, **kwargs)
    if format == "tensorrt":
        return build_engine(out, out.with_suffix(".engine"), half=half)
    return out


__all__ = ["export", "export_onnx", "read_metadata", "OnnxRuntimeModel", "OpenVINOModel", "TensorRTModel",
           "build_engine", "load_exported", "FORMATS"]


def add_export_parser(subparsers: Any) -> Any:
    """`rtmo export MODEL [-o out.onnx] [--format onnx|openvino|tensorrt]`; sets `func`."""
    p = subparsers.add_parser("export", help="export a model to ONNX (NMS and DCC inside the graph)")
    p.add_argument("model", help="checkpoint path or official model name")
    p.add_argument("-o", "--output", default=None, help="output file (default rtmo-<variant>.onnx)")
    p.add_argument("--format", default="onnx", choices=FORMATS)
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--static-batch", action="store_true", help="fixed batch 1 instead of a dynamic batch")
    p.add_argument("--dynamic-hw", action="store_true", help="dynamic input height and width")
    p.add_argument("--score-thr", type=float, default=None, help="baked-in score threshold (default: config)")
    p.add_argument("--nms-thr", type=float, default=None, help="baked-in NMS IoU threshold (default: config)")
    p.add_argument("--no-simplify", action="store_true")
    p.add_argument("--no-check", action="store_true", help="skip the ONNX Runtime vs PyTorch check")
    p.add_argument("--check-images", nargs="*", default=None, help="images for the check")
    p.add_argument("--fp32", action="store_true", help="TensorRT: no fp16")
    p.set_defaults(func=run_export_cli)
    return p


def run_export_cli(args: Any) -> int:
    from ..zoo import ModelManager

    model = ModelManager.get(args.model, device="cpu")
    kwargs: dict[str, Any] = dict(
        dynamic_batch=not args.static_batch, dynamic_hw=args.dynamic_hw, opset=args.opset,
        simplify=not args.no_simplify, score_thr=args.score_thr, nms_thr=args.nms_thr,
        check=not args.no_check, check_images=args.check_images)
    if args.format == "tensorrt":
        kwargs["half"] = not args.fp32
    out = export(model, args.output, args.format, **kwargs)
    print(f"wrote {out}")
    return 0
