"""`rtmo export` as a user types it: the default self-check passes on the fixtures, bad options are refused
before any work, and the final name never holds a torn or unverified file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import rtmo.export.onnx as onnx_export
from rtmo.export import export, output_path
from rtmo.export.onnx import compare_outputs, export_onnx
from rtmo.export.runtime import OnnxRuntimeModel, OpenVINOModel
from rtmo.outputs import KeypointOutput

from .conftest import DATA, fixture_checkpoint, fixture_dir, fixture_model

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")


def official_like() -> Path:
    return next((fixture_dir("t") / "official_like").glob("*.pth"))


def rtmo_cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rtmo", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_default_export_of_the_published_file_verifies_and_prints_only_the_path(tmp_path):
    proc = rtmo_cli("export", "-m", str(official_like()), "-o", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    out = Path(proc.stdout.strip())
    assert proc.stdout.strip().count("\n") == 0 and out.suffix == ".onnx" and out.parent == tmp_path
    assert out.is_file() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    # the file runs and finds what mmpose found on a fixture photo
    ref = np.load(fixture_dir("t") / "img_000000197388.npz")
    res = OnnxRuntimeModel(out).infer(str(DATA / "coco" / "000000197388.jpg"))
    assert len(res) == len(ref["bbox_scores"])
    np.testing.assert_allclose(np.sort(res.scores), np.sort(ref["bbox_scores"]), atol=2e-4)


def test_openvino_format_writes_an_ir_that_opens(tmp_path):
    proc = rtmo_cli("export", "-m", str(fixture_checkpoint("t")), "--format", "openvino",
                    "-o", str(tmp_path / "ir" / "t.xml"), "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(tmp_path / "ir" / "t.xml")
    assert sorted(p.name for p in (tmp_path / "ir").iterdir()) == ["t.bin", "t.xml"]
    ov_model = OpenVINOModel(tmp_path / "ir" / "t.xml")
    assert ov_model.input_size == (416, 416) and ov_model.keypoint_info.name == "coco"
    image = str(DATA / "coco" / "000000040083.jpg")
    got, ref = ov_model.infer(image), fixture_model("t").infer(image)
    assert len(got) == len(ref) > 0
    np.testing.assert_allclose(np.sort(got.scores), np.sort(ref.scores), atol=2e-4)
    # the IR carries the DCC rewrite that the runtimes apply to .onnx files (rtmo.export.optimize)
    assert "/reassoc/" in (tmp_path / "ir" / "t.xml").read_text()


@pytest.mark.parametrize("args, words", [
    (["--threshold", "-1"], "threshold must be a number in [0, 1)"),
    (["--nms-threshold", "2"], "nms_threshold must be a number in (0, 1]"),
    (["--opset", "99"], "opset must be between 11"),
    (["-o", "model.bin"], "writes a .onnx file"),
    (["--format", "openvino", "-o", "model.onnx"], "writes a .xml file"),
    (["--dynamic-hw"], "unrecognized arguments: --dynamic-hw"),
])
def test_bad_options_get_one_line_before_any_work(tmp_path, args, words):
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "rtmo", "export", "-m", str(fixture_checkpoint("t")), *args],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2 and proc.stdout == ""
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and not ln.startswith("usage:")
             and not ln.startswith("  ")]
    assert len(lines) == 1 and words in lines[0] and "Traceback" not in proc.stderr, proc.stderr
    assert list(tmp_path.iterdir()) == []
    assert time.monotonic() - start < 60  # refused before loading/exporting (an export takes longer)


def test_output_path_rules(tmp_path):
    assert output_path(None, "onnx", "m") == Path("m.onnx")
    assert output_path(tmp_path, "openvino", "m") == tmp_path / "m.xml"
    assert output_path(tmp_path / "new_dir", "onnx", "m") == tmp_path / "new_dir" / "m.onnx"
    assert output_path(tmp_path / "x.engine", "tensorrt", "m") == tmp_path / "x.engine"
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        output_path(tmp_path / "afile", "onnx", "m")


@pytest.fixture()
def previous(tmp_path) -> Path:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"the user's previous export")
    return path


def test_failed_self_check_keeps_the_previous_file(previous, monkeypatch):
    def fail(*a, **k):
        raise RuntimeError("ONNX check failed: detections differ")

    monkeypatch.setattr(onnx_export, "check_onnx", fail)
    with pytest.raises(RuntimeError, match="check failed"):
        export_onnx(fixture_model("t"), previous, simplify=False)
    assert previous.read_bytes() == b"the user's previous export"
    assert [p.name for p in previous.parent.iterdir()] == ["model.onnx"]  # no temporary left


def test_full_disk_keeps_the_previous_file(previous, monkeypatch):
    import onnx

    def no_space(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(onnx, "save", no_space)
    with pytest.raises(OSError, match="No space"):
        export(fixture_model("t"), previous, simplify=False, check=False)
    assert previous.read_bytes() == b"the user's previous export"
    assert [p.name for p in previous.parent.iterdir()] == ["model.onnx"]


def test_kill_during_export_never_leaves_a_torn_file(previous):
    """kill -9 while the exporter writes: the final name keeps the previous bytes."""
    proc = subprocess.Popen([sys.executable, "-m", "rtmo", "export", "-m", str(fixture_checkpoint("t")),
                             "-o", str(previous), "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        temps = [p for p in previous.parent.iterdir() if p.name.startswith(".model.onnx.")]
        if temps and temps[0].stat().st_size > 0:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "export finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert previous.read_bytes() == b"the user's previous export"


def _fake_out(boxes: list[list[float]], scores: list[float]) -> KeypointOutput:
    b = torch.tensor(boxes)
    s = torch.tensor(scores)
    k = b[:, None, :2].repeat(1, 17, 1)
    return KeypointOutput.from_per_image({"scores": [s], "labels": [torch.zeros(len(s), dtype=torch.long)],
                                          "keypoint_scores": [torch.ones(len(s), 17)], "pred_bboxes": [b],
                                          "pred_keypoints": [k]})


def test_self_check_pairs_detections_by_position():
    """Near-equal scores may come out in either order from two backends (it failed that way on the s
    fixture: "box 5.43e+02 px"); a real difference must still fail."""
    ref = _fake_out([[0, 0, 10, 10], [100, 100, 150, 180]], [0.50000, 0.49999])
    swapped = _fake_out([[100, 100, 150, 180], [0, 0, 10, 10]], [0.49999, 0.50000])
    assert compare_outputs(ref, swapped)["box_px"] == 0.0
    moved = _fake_out([[100, 100, 150, 180], [0, 0, 10, 12]], [0.49999, 0.50000])
    with pytest.raises(RuntimeError, match="detections differ"):
        compare_outputs(ref, moved)


def test_int8_export_through_the_cli_opens_with_model_manager(tmp_path):
    """`rtmo export --int8 --calibration DIR`: a quantized graph (QDQ nodes) that the public API opens; its
    detections are checked for accuracy in test_precision (random weights make pixels no measure here)."""
    import onnx

    from rtmo import ModelManager

    out = tmp_path / "t8.onnx"
    proc = rtmo_cli("export", "-m", str(fixture_checkpoint("t")), "--int8", "--calibration",
                    str(DATA / "coco"), "-o", str(out), "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(out)
    assert "pre-process" not in proc.stderr, proc.stderr  # onnxruntime.quantization's advice stays quiet
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "NonMaxSuppression"} <= ops
    res = ModelManager.get(out).infer(str(DATA / "coco" / "000000040083.jpg"))
    assert res.keypoints.shape[1:] == (17, 2)
    bad = rtmo_cli("export", "-m", str(fixture_checkpoint("t")), "--int8", "--calibration",
                   str(tmp_path / "none"), "-o", str(tmp_path / "x.onnx"))
    assert bad.returncode == 2 and "no such file or folder" in bad.stderr
    assert not (tmp_path / "x.onnx").exists()
