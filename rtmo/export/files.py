"""Putting finished export files in place: each lands through `rtmo.utils.fileio.atomic_path`, and a
format made of several files (OpenVINO .xml + .bin, TensorRT .engine + .json) has its main file, the one a
loader opens, removed first and placed last, so a kill in between leaves no main file, never an old one
beside new weights or metadata."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from ..utils.fileio import atomic_path


def install(files: list[tuple[Path, Path | bytes]]) -> None:
    """(final path, finished file or bytes) pairs, the main file last; a finished file is moved."""
    Path(files[-1][0]).unlink(missing_ok=True)
    for final, src in files:
        with atomic_path(final) as tmp:
            if isinstance(src, bytes):
                tmp.write_bytes(src)
            else:
                os.replace(src, tmp)


def save_openvino_ir(ov_model: Any, xml: str | os.PathLike) -> Path:
    """Write an OpenVINO model as IR `xml` + `.bin` beside it (float32 weights: fp16 ones would move
    results)."""
    import openvino as ov

    xml = Path(xml)
    xml.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=xml.parent, prefix=f".{xml.name}.") as tmp:
        written = Path(tmp) / "model.xml"
        ov.save_model(ov_model, str(written), compress_to_fp16=False)
        install([(xml.with_suffix(".bin"), written.with_suffix(".bin")), (xml, written)])
    return xml
