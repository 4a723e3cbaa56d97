"""Deployment: ONNX export (NMS + DCC in the graph), OpenVINO IR, TensorRT engines, and their runtimes."""

from __future__ import annotations

import io
import tempfile
from pathlib import Path
from typing import Any

from ..utils.fileio import blocking_file

# Imported on first use (PEP 562): opening an exported model (`rtmo.export.runtime`) must not import torch
# through `.onnx`, which traces PyTorch models.
_LAZY = {"export_onnx": "onnx", "check_export_options": "onnx", "read_metadata": "contract",
         "ExportedModel": "contract", "OnnxRuntimeModel": "runtime", "OpenVINOModel": "runtime",
         "TensorRTModel": "tensorrt", "build_engine": "tensorrt", "load_exported": "runtime"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(name)


FORMATS = ("onnx", "openvino", "tensorrt")
SUFFIX = {"onnx": ".onnx", "openvino": ".xml", "tensorrt": ".engine"}


def output_path(output: str | Path | None, format: str, stem: str) -> Path:
    """Where `format` is written: `output` itself when it names a file of the format's suffix, else a
    file `<stem><suffix>` inside the folder `output` (the current folder when None)."""
    if format not in FORMATS:
        raise ValueError(f"unknown export format {format!r}; choose from {', '.join(FORMATS)}")
    suffix = SUFFIX[format]
    if output is None:
        return Path(stem + suffix)
    out = Path(output)
    if out.suffix.lower() == suffix:
        if out.is_dir():
            raise ValueError(f"output {out} is a folder; give a file name ending in {suffix} or a folder")
        return out
    if out.suffix and not out.is_dir():
        raise ValueError(f"output {out}: the {format} format writes a {suffix} file; give a path ending in "
                         f"{suffix} or a folder")
    blocker = blocking_file(out)
    if blocker is not None:
        raise ValueError(f"output {out} is a file, not a folder" if blocker == out
                         else f"output {out}: {blocker} is a file, not a folder")
    return out / (stem + suffix)


def export(model: Any, path: str | Path | None = None, format: str = "onnx", threshold: float | None = None,
           nms_threshold: float | None = None, opset: int = 17, dynamic_batch: bool = True,
           simplify: bool = True, check: bool = True, check_images: list[Any] | None = None,
           half: bool = True, int8: bool = False, calibration: Any = None) -> Path:
    """Write a deployable file of `model` and return its path (see `output_path` for `path`).

    'onnx' -> `.onnx` (`export_onnx`); 'openvino' -> OpenVINO IR `.xml` + `.bin`, converted from the
    checked ONNX graph with the rtmo metadata in its rt_info; 'tensorrt' -> `.engine` (needs tensorrt +
    CUDA; `half` for FP16). `int8` (onnx, openvino): post-training static quantization calibrated on the
    images of `calibration` (a folder or a list of paths), from the verified fp32 graph, with the
    selection / NMS / DCC part kept in float (`rtmo.export.quantize`). Every file is written under a
    temporary name and renamed when complete and verified, so a failure or a kill never leaves a torn file
    under the final name.
    """
    from .onnx import check_export_options, export_onnx
    from .tensorrt import build_engine

    check_export_options(threshold, nms_threshold, opset)
    if int8 and format == "tensorrt":
        raise ValueError("int8 is offered for the onnx and openvino formats (TensorRT: use half=True)")
    if int8:
        from .quantize import calibration_files

        calibration_files(calibration)  # no usable image: refuse before exporting anything
    variant = getattr(model.config, "variant", None) or "custom"
    stem = Path(getattr(model, "checkpoint_info", {}).get("name") or f"rtmo-{variant}").stem
    target = output_path(path, format, stem)
    if format == "onnx" and not int8:
        return export_onnx(model, target, dynamic_batch=dynamic_batch, opset=opset, simplify=simplify,
                           threshold=threshold, nms_threshold=nms_threshold, check=check,
                           check_images=check_images)
    target.parent.mkdir(parents=True, exist_ok=True)
    # The intermediate ONNX file lives in a temporary folder beside the target and always goes away.
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.name}.") as tmp:
        onnx_file = export_onnx(model, Path(tmp) / "model.onnx", dynamic_batch=dynamic_batch, opset=opset,
                                simplify=simplify, threshold=threshold, nms_threshold=nms_threshold,
                                check=check, check_images=check_images)
        if int8:  # the quantizers write their output atomically themselves
            from .quantize import quantize_onnx, quantize_openvino

            quantize = quantize_onnx if format == "onnx" else quantize_openvino
            return quantize(onnx_file, target, calibration)
        if format == "openvino":
            return _write_openvino_ir(onnx_file, target)
        return build_engine(onnx_file, target, half=half)


def _write_openvino_ir(onnx_path: Path, xml: Path) -> Path:
    """OpenVINO IR (`.xml` + `.bin` beside it) of an exported ONNX file, the rtmo metadata in rt_info."""
    try:
        import openvino as ov
    except ImportError:
        raise ImportError('the openvino format needs OpenVINO: pip install "rtmo[openvino]"') from None
    import onnx

    from .files import save_openvino_ir
    from .optimize import optimized_onnx

    meta = {p.key: p.value for p in onnx.load(str(onnx_path), load_external_data=False).metadata_props}
    rewritten = optimized_onnx(onnx_path)  # the IR carries the reassociated DCC (runtimes only see the IR)
    ov_model = ov.convert_model(str(onnx_path) if rewritten is None else io.BytesIO(rewritten))
    for key, value in meta.items():
        ov_model.set_rt_info(value, [key])
    return save_openvino_ir(ov_model, xml)


__all__ = ["export", "export_onnx", "output_path", "read_metadata", "ExportedModel", "OnnxRuntimeModel",
           "OpenVINOModel", "TensorRTModel", "build_engine", "load_exported", "FORMATS"]
