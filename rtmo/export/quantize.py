"""INT8 exported files by post-training static quantization with calibration images (no torch).

    quantize_onnx(onnx_path, out_path, calibration_images)      ONNX Runtime, QDQ format
    quantize_openvino(onnx_path, out_xml, calibration_images)    OpenVINO IR via NNCF

What is quantized: the network (backbone, neck, head convolutions and the weight matmuls of the neck's
encoder), i.e. every op before the graph's NonMaxSuppression. What stays float: the attention products
and softmax of the encoder, the score threshold / NMS / ranking, and the whole DCC (its 1-D heatmaps and
softmax turn small errors into pixel jumps), so selection and keypoint decoding run exactly as in fp32 on
slightly different maps. Calibration images go through the same letterbox as inference; use a few dozen
images like the deployment's. The result keeps the rtmo metadata (plus `precision: int8`) and opens with
`ModelManager.get(out)` like any exported file. Files are written under a temporary name in the target
folder and renamed when complete (`rtmo.utils.fileio.atomic_path`, `rtmo.export.files`).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..utils.fileio import atomic_path
from .contract import METADATA_PREFIX
from .files import save_openvino_ir
from .optimize import optimized_onnx
from .runtime import OnnxRuntimeModel

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def calibration_files(images: str | os.PathLike | Iterable[str | os.PathLike], limit: int = 300
                      ) -> list[Path]:
    """Image files from a folder (sorted) or a list of paths; at most `limit`; ValueError when none."""
    if isinstance(images, (str, os.PathLike)):
        root = Path(images)
        if root.is_dir():
            files = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        elif root.is_file():
            files = [root]
        else:
            raise FileNotFoundError(f"calibration images: {root}: no such file or folder")
    else:
        files = [Path(p) for p in images]
    if not files:
        raise ValueError(f"calibration images: no image files ({', '.join(IMAGE_SUFFIXES)}) in {images}")
    return files[:limit]


def calibration_batches(files: list[Path], input_size: tuple[int, int]) -> Iterator[np.ndarray]:
    """(1, 3, H, W) float32 batches letterboxed exactly as `infer` does."""
    from ..infer.api import preprocess
    from ..infer.image import load_image

    for f in files:
        yield preprocess([load_image(f)[0]], input_size)[0]


def _split_at_nms(proto: Any) -> tuple[list[Any], list[Any]]:
    nodes = list(proto.graph.node)
    cut = next((i for i, n in enumerate(nodes) if n.op_type == "NonMaxSuppression"), None)
    if cut is None:
        raise ValueError("the graph has no NonMaxSuppression op; expected an RTMO end2end graph")
    return nodes[:cut], nodes[cut:]


def _drop_ort_quantization_advice(record: logging.LogRecord) -> bool:
    """A logging filter: False for records that onnxruntime.quantization's own modules log."""
    return "onnxruntime/quantization/" not in Path(record.pathname).as_posix()


def quantize_onnx(onnx_path: str | os.PathLike, out_path: str | os.PathLike,
                  calibration_images: str | os.PathLike | Iterable[str | os.PathLike],
                  per_channel: bool = True, limit: int = 300) -> Path:
    """INT8 ONNX (QDQ: QuantizeLinear/DequantizeLinear pairs around Conv/MatMul, which ONNX Runtime's CPU
    runs as int8 kernels) from an exported fp32 file and calibration images (MinMax ranges, per-channel
    weights). Activations are uint8, weights int8: the U8S8 form ONNX Runtime's x86 kernels are built
    for. Measured on the trained RTMO-t (bench/precision_accuracy.py): U8S8 0.72x the fp32 time at the
    same AP, S8S8 1.5x slower than fp32. Returns `out_path`."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    src, out = Path(onnx_path), Path(out_path)
    if out.suffix.lower() != ".onnx":
        raise ValueError(f"{out}: the INT8 ONNX output must end in .onnx")
    if out.resolve() == src.resolve():
        raise ValueError(f"{out}: would overwrite the fp32 input; choose another output name")
    fp32 = OnnxRuntimeModel(src, device="cpu")  # checks the contract, gives the input size
    files = calibration_files(calibration_images, limit)
    proto = onnx.load(str(src))
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < 13:  # per-channel DequantizeLinear (its `axis`) needs opset 13; mmdeploy writes 11
        from onnx import version_converter

        proto = version_converter.convert_version(proto, 13)
    network, _ = _split_at_nms(proto)
    weights = {i.name for i in proto.graph.initializer}
    keep_float = {n.name for n in proto.graph.node} - {
        n.name for n in network
        if n.op_type == "Conv" or (n.op_type == "MatMul" and any(i in weights for i in n.input))}

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = calibration_batches(files, fp32.input_size)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.it, None)
            return None if batch is None else {"input": batch}

    # The fp32 graph (maybe converted to opset 13) is quantize_static's input file: a scratch folder beside.
    with atomic_path(out) as tmp, tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as work:
        tmp_src = Path(work) / "fp32.onnx"
        onnx.save(proto, str(tmp_src))
        # quantize_static logs advice on the root logger ("consider pre-processing", i.e. shape inference
        # and folding, which the exported graph already went through); keep it off the user's terminal.
        root = logging.getLogger()
        root.addFilter(_drop_ort_quantization_advice)
        try:
            quantize_static(str(tmp_src), str(tmp), Reader(), quant_format=QuantFormat.QDQ,
                            op_types_to_quantize=["Conv", "MatMul"], nodes_to_exclude=sorted(keep_float),
                            per_channel=per_channel, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8)
        finally:
            root.removeFilter(_drop_ort_quantization_advice)
        q = onnx.load(str(tmp))
        del q.metadata_props[:]
        for p in proto.metadata_props:
            q.metadata_props.add(key=p.key, value=p.value)
        q.metadata_props.add(key=METADATA_PREFIX + "precision", value=json.dumps("int8"))
        q.metadata_props.add(key=METADATA_PREFIX + "calibration_images", value=json.dumps(len(files)))
        onnx.save(q, str(tmp))
    return out


def quantize_openvino(onnx_path: str | os.PathLike, out_xml: str | os.PathLike,
                      calibration_images: str | os.PathLike | Iterable[str | os.PathLike],
                      limit: int = 300) -> Path:
    """INT8 OpenVINO IR (`out_xml` + `.bin`) quantized by NNCF from an exported fp32 ONNX file and
    calibration images; everything from the NMS on, and the attention softmax, are left in float
    (NNCF ignored scope). Returns `out_xml`."""
    try:
        import nncf
        import openvino as ov
    except ImportError as e:
        raise ImportError("OpenVINO INT8 needs `openvino` and `nncf`: pip install \"rtmo[quantize]\"") from e
    import onnx

    nncf.set_log_level(logging.WARNING)  # its INFO lines list every op it leaves in float
    src, out = Path(onnx_path), Path(out_xml)
    if out.suffix.lower() != ".xml":
        raise ValueError(f"{out}: the OpenVINO IR output must end in .xml (the weights go to .bin beside it)")
    fp32 = OnnxRuntimeModel(src, device="cpu")
    files = calibration_files(calibration_images, limit)
    rewritten = optimized_onnx(src)  # the IR carries the reassociated DCC, as the fp32 runtimes run it
    model = ov.Core().read_model(str(src) if rewritten is None else rewritten)
    ops = model.get_ordered_ops()
    cut = next((i for i, op in enumerate(ops) if op.get_type_name().startswith("NonMaxSuppression")), None)
    if cut is None:
        raise ValueError(f"{src}: the graph has no NonMaxSuppression op; expected an RTMO end2end graph")
    after_nms = [op.get_friendly_name() for op in ops[cut:]]
    scope = nncf.IgnoredScope(names=after_nms, types=["Softmax"], validate=False)
    data = nncf.Dataset(list(calibration_batches(files, fp32.input_size)))
    # MIXED: asymmetric activation ranges. Most activations are SiLU outputs (>= -0.28), which a symmetric
    # range spends half its codes on; measured on the trained RTMO-t of bench/precision_accuracy.py
    # (4 images): keypoint p95 from fp32 56 -> 20 px, AP 0.329 -> 0.369 (fp32 0.402).
    quantized = nncf.quantize(model, data, subset_size=len(files), ignored_scope=scope,
                              preset=nncf.QuantizationPreset.MIXED)
    props = {p.key: p.value for p in onnx.load(str(src), load_external_data=False).metadata_props}
    props[METADATA_PREFIX + "precision"] = json.dumps("int8")
    for k, v in props.items():
        if k.startswith(METADATA_PREFIX):
            quantized.set_rt_info(v, k)
    return save_openvino_ir(quantized, out)


__all__ = ["quantize_onnx", "quantize_openvino", "calibration_files", "calibration_batches"]
