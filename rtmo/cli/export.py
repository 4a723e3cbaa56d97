"""`rtmo export -m MODEL [-o OUT] [--format onnx|openvino|tensorrt]`: a verified exported model."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def add_export(sub: Any) -> argparse.ArgumentParser:
    """`rtmo export -m MODEL [-o OUT] [--format onnx|openvino|tensorrt]`; sets `func`."""
    from ..export import FORMATS

    p = sub.add_parser(
        "export", help="export a model to ONNX / OpenVINO / TensorRT (NMS and DCC inside the graph)",
        description="Export MODEL with selection (threshold, NMS) and the DCC inside the graph. The file is "
                    "verified (ONNX Runtime against PyTorch on a test image) before it gets its name.")
    p.add_argument("-m", "--model", default="rtmo-s-coco",
                   help="registry name or checkpoint path (default: %(default)s)")
    p.add_argument("-o", "--output", default=None,
                   help="output file (.onnx / .xml / .engine for the format) or a folder, where "
                        "<model name>.<ext> is written (default: the current folder)")
    p.add_argument("--format", default="onnx", choices=FORMATS,
                   help="onnx (ONNX Runtime, OpenVINO, TensorRT read it), openvino (IR .xml + .bin), "
                        "tensorrt (.engine, needs a GPU)")
    p.add_argument("--threshold", type=float, default=None,
                   help="person score threshold baked into the graph (default: the model's, 0.1)")
    p.add_argument("--nms-threshold", type=float, default=None,
                   help="NMS IoU threshold baked into the graph (default: the model's, 0.65)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default: %(default)s)")
    p.add_argument("--static-batch", action="store_true", help="fixed batch 1 instead of a dynamic batch")
    p.add_argument("--no-simplify", action="store_true", help="skip onnxslim even when installed")
    p.add_argument("--no-check", action="store_true", help="skip the ONNX Runtime vs PyTorch check")
    p.add_argument("--check-images", nargs="*", default=None, help="images for the check")
    p.add_argument("--fp32", action="store_true", help="TensorRT: no FP16")
    p.add_argument("--int8", action="store_true", help="onnx / openvino: INT8 by post-training static "
                   "quantization (needs --calibration; openvino needs rtmo[quantize]); selection, NMS and "
                   "DCC stay in float")
    p.add_argument("--calibration", default=None, metavar="DIR",
                   help="with --int8: a folder of images like the ones the model will see (100-300)")
    p.add_argument("--device", default="cpu", help="device the PyTorch model runs on for the check "
                   "(default: %(default)s)")
    p.add_argument("--quiet", "-q", action="store_true", help="print nothing but the written path")
    p.set_defaults(func=run_export_cli)
    return p


def run_export_cli(args: argparse.Namespace) -> int:
    from ..export import export, output_path
    from ..export.onnx import check_export_options
    from ..hub.zoo import ModelManager

    # Every option is checked before the model is loaded or anything is written.
    check_export_options(args.threshold, args.nms_threshold, args.opset)
    if args.output is not None:
        output_path(args.output, args.format, "model")
    if args.int8 and args.calibration is None:
        raise ValueError("--int8 needs --calibration DIR (images to calibrate the INT8 ranges on)")
    if args.calibration is not None and not args.int8:
        raise ValueError("--calibration is used with --int8")
    if args.int8:
        if args.format == "tensorrt":
            raise ValueError("--int8 is offered for --format onnx and openvino")
        from ..export.quantize import calibration_files

        calibration_files(args.calibration)
    model = ModelManager.get(args.model, device=args.device, progress=not args.quiet)
    if not args.quiet:
        print(f"exporting {args.model} to {args.format}" + ("" if args.no_check else " (then verifying)"),
              file=sys.stderr)
    out = export(model, args.output, args.format, threshold=args.threshold, nms_threshold=args.nms_threshold,
                 opset=args.opset, dynamic_batch=not args.static_batch, simplify=not args.no_simplify,
                 check=not args.no_check, check_images=args.check_images, half=not args.fp32,
                 int8=args.int8, calibration=args.calibration)
    print(out)
    return 0

