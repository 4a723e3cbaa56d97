"""Exported models wherever a model is accepted, without torch where the backend does not need it.

Truth: mmpose's outputs for the RTMO-t fixture weights (`img_<stem>.npz`) and mmdeploy 1.3.1's own
`end2end.onnx` for the same weights, both made outside this project. Tolerances are the fixture README's
fp32-runtime ones: ONNX Runtime's convolutions round differently from PyTorch's (~1e-5 relative), boxes
within 0.05 px, keypoints median within 5e-3 px (single keypoints can jump: the DCC's 1-D heatmaps of
random weights are near one-hot), scores within 1e-4 (measured 1.8e-5).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rtmo import ModelManager

from .conftest import DATA, fixture_checkpoint, fixture_dir, fixture_model

ROOT = Path(__file__).resolve().parents[1]
CONTRACT_WORDS = "expected an RTMO end2end graph"


def _mmdeploy() -> Path:
    p = fixture_dir("t") / "mmdeploy" / "end2end.onnx"
    if not p.is_file():
        pytest.skip(f"mmdeploy fixture missing: {p}")
    return p


def _image(stem: str) -> Path:
    found = sorted(DATA.glob(f"*/{stem}.jpg"))
    if not found:
        pytest.skip(f"image {stem} missing under {DATA}")
    return found[0]


def _rtmo(*args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rtmo", *args], capture_output=True, text=True, timeout=300,
                          cwd=cwd, env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})


# A child interpreter in which `import torch` fails, as on a deployment install without it.
NO_TORCH = "import sys; sys.modules['torch'] = None; "


def _no_torch(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", NO_TORCH + code], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})


@pytest.fixture(scope="module")
def mmdeploy_model():
    return ModelManager.get(_mmdeploy())


@pytest.mark.parametrize("stem", ["000000000785", "103319"])
def test_mmdeploy_file_reproduces_mmpose(mmdeploy_model, stem):
    """mmdeploy's graph keeps at most 50 detections (its keep_top_k): 785 has 162 at threshold 0.1 in
    mmpose, so the first 50 must match; 103319 has 39, all of which must match."""
    ref = np.load(fixture_dir("t") / f"img_{stem}.npz")
    r = mmdeploy_model.infer(str(_image(stem)))
    n = min(len(ref["bbox_scores"]), 50)
    assert len(r) == n and (stem != "000000000785" or n == 50)
    np.testing.assert_allclose(r.boxes, ref["bboxes"][:n], rtol=0, atol=0.05)
    np.testing.assert_allclose(r.scores, ref["bbox_scores"][:n], rtol=0, atol=1e-4)
    np.testing.assert_allclose(r.keypoint_scores, ref["keypoint_scores"][:n], rtol=0, atol=1e-4)
    dev = np.abs(r.keypoints - ref["keypoints"][:n]).max(-1)
    assert np.median(dev) <= 5e-3, np.median(dev)


def test_mmdeploy_selection_is_stated(mmdeploy_model):
    text = repr(mmdeploy_model)
    # Read from the graph's NonMaxSuppression / TopK constants (not the mmdeploy config's defaults).
    assert "mmdeploy" in text and "score > 0.1" in text and "IoU > 0.65" in text and "at most 50 kept" in text
    assert mmdeploy_model.selection == {"score_thr": 0.1, "nms_thr": 0.65, "pre_top_k": 2000,
                                        "max_detections": 50}


def test_opening_reassociates_the_dcc_products_of_foreign_and_own_graphs(mmdeploy_model, tmp_path):
    """`rtmo.export.optimize` rewrites both DCC bin products of mmdeploy's graph and of rtmo's export (2 each,
    then nothing is left to rewrite; the result passes the ONNX checker). Boxes and scores do not go
    through the DCC: equal to the bit against the file run as it is. Keypoints: the same expectation over
    bins at float rounding, which the random fixture weights' sharp heatmaps amplify on a few keypoints
    (measured over the 4 cases: max 0.019 px, mean 1.4e-4 px; bounds 0.05 / 1e-3 px)."""
    import onnx

    from rtmo.export.onnx import export_onnx
    from rtmo.export.optimize import reassociate_bin_products
    from rtmo.export.runtime import OnnxRuntimeModel

    torch_model = ModelManager.get(fixture_checkpoint("t"), device="cpu", input_size=(256, 256))
    ours = export_onnx(torch_model, tmp_path / "t256.onnx", simplify=False, check=False)
    for path in (_mmdeploy(), ours):
        graph = onnx.load(str(path))
        assert reassociate_bin_products(graph) == 2
        onnx.checker.check_model(graph)
        assert reassociate_bin_products(graph) == 0
        plain, opt = OnnxRuntimeModel(path, optimize=False), OnnxRuntimeModel(path)
        for stem in ("000000000785", "103319"):
            a, b = plain.infer(str(_image(stem))), opt.infer(str(_image(stem)))
            assert len(a) == len(b) > 0
            assert np.array_equal(a.boxes, b.boxes) and np.array_equal(a.scores, b.scores)
            dev = np.abs(a.keypoints - b.keypoints)
            assert dev.max() < 0.05 and dev.mean() < 1e-3, (path.name, stem, dev.max(), dev.mean())


def test_mmdeploy_file_on_openvino_onnx_and_ir(mmdeploy_model, tmp_path):
    ov = pytest.importorskip("openvino")
    img = str(_image("103319"))
    ref = mmdeploy_model.infer(img)
    xml = tmp_path / "end2end.xml"
    # compress_to_fp16=False: save_model stores fp16 weights by default, which changes detections.
    ov.save_model(ov.convert_model(str(_mmdeploy())), str(xml), compress_to_fp16=False)
    for m in (ModelManager.get(_mmdeploy(), backend="openvino"), ModelManager.get(xml)):
        assert type(m).__name__ == "OpenVINOModel" and m.selection["nms_thr"] == 0.65
        r = m.infer(img)
        assert len(r) == len(ref)
        np.testing.assert_allclose(r.boxes, ref.boxes, rtol=0, atol=0.05)
    (tmp_path / "end2end.bin").unlink()
    with pytest.raises(ValueError, match="end2end.bin"):
        ModelManager.get(xml)


def _foreign_files(tmp_path: Path) -> list[Path]:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "tiny",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    tiny = tmp_path / "tiny.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tiny))
    noise = tmp_path / "noise.onnx"
    noise.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    cut = tmp_path / "truncated.onnx"
    cut.write_bytes(_mmdeploy().read_bytes()[:200_000])
    return [tiny, noise, cut]


def test_foreign_or_corrupt_onnx_names_the_contract(tmp_path):
    for p in _foreign_files(tmp_path):
        with pytest.raises(ValueError, match=CONTRACT_WORDS) as e:
            ModelManager.get(p)
        assert str(p) in str(e.value) and "\n" not in str(e.value)
    tiny = tmp_path / "tiny.onnx"
    res = _rtmo("predict", str(_image("103319")), "--model", str(tiny), "-o", str(tmp_path / "out"))
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rtmo: error:") and CONTRACT_WORDS in lines[0]
    assert "input `input` Bx3xHxW float32" in lines[0] and "`keypoints` BxNxKx3" in lines[0]
    assert "Traceback" not in res.stderr and not (tmp_path / "out").exists()


def test_torch_free_runtime_gives_the_same_detections(mmdeploy_model, tmp_path):
    img = str(_image("103319"))
    code = (f"import json, rtmo; m = rtmo.ModelManager.get({str(_mmdeploy())!r}); r = m.infer({img!r}); "
            "assert sys.modules.get('torch') is None; import numpy as np; "
            "from rtmo.outputs import KeypointOutput; "
            "o = m.predict_batch(np.zeros((2, 3, 416, 416), np.float32)); "
            "assert isinstance(o, KeypointOutput) and isinstance(o.pred_keypoints, np.ndarray); "
            "print(json.dumps({'boxes': r.boxes.tolist(), 'kpts': r.keypoints.tolist(), "
            "'scores': r.scores.tolist()}))")
    res = _no_torch(code)
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout.strip().splitlines()[-1])
    ref = mmdeploy_model.infer(img)  # this process has torch: same file, same code, same numbers
    assert len(got["boxes"]) == len(ref) == 39
    np.testing.assert_array_equal(np.array(got["boxes"], np.float32), ref.boxes)
    np.testing.assert_array_equal(np.array(got["kpts"], np.float32), ref.keypoints)
    # The CLI as typed, drawing and JSON included, in the same torch-less interpreter.
    out = tmp_path / "pred"
    code = ("from rtmo.cli import main; "
            f"rc = main(['predict', {img!r}, '--model', {str(_mmdeploy())!r}, '-o', {str(out)!r}, '--save', "
            "'--save-json', '-q']); assert sys.modules.get('torch') is None; sys.exit(rc)")
    res = _no_torch(code)
    assert res.returncode == 0, res.stderr
    records = json.loads((out / "predictions.json").read_text())
    assert len(records) == 39 and (out / "103319.jpg").is_file()


def test_cli_predict_val_benchmark_with_onnx(tmp_path):
    onnx_path = str(_mmdeploy())
    img = _image("103319")
    res = _rtmo("predict", str(img), "--model", onnx_path, "-o", str(tmp_path / "p"), "--save-json",
                "--threshold", "0.5", "-q")
    assert res.returncode == 0, res.stderr
    records = json.loads((tmp_path / "p" / "predictions.json").read_text())
    ref = np.load(fixture_dir("t") / "img_103319.npz")["bbox_scores"]
    assert len(records) == int((ref > 0.5).sum()) > 0
    ann = DATA / "coco" / "test_coco.json"
    res = _rtmo("val", str(ann), "--model", onnx_path, "--images", str(DATA / "coco"), "-o",
                str(tmp_path / "val"))
    assert res.returncode == 0, res.stderr
    metrics = json.loads((tmp_path / "val" / "metrics.json").read_text())
    assert all(math.isfinite(v) for v in metrics.values())
    res = _rtmo("benchmark", "--model", onnx_path, "--runs", "2", "--warmup", "0", "--batch-sizes", "1",
                "--images", str(img), "--threshold", "0.2", "-o", str(tmp_path / "b"))
    assert res.returncode == 0, res.stderr
    bench = json.loads((tmp_path / "b" / "benchmark.json").read_text())
    assert bench["backend"] == "onnxruntime" and bench["rows"][0]["detections"] == int((ref > 0.2).sum())


@pytest.mark.parametrize("bad", ["0.5", float("nan"), 1.5, -0.1, True])
def test_api_thresholds_are_validated(mmdeploy_model, bad):
    img = str(_image("103319"))
    torch_model = fixture_model("t")
    for m in (mmdeploy_model, torch_model):
        with pytest.raises(ValueError, match="^threshold"):
            m.infer(img, threshold=bad)
        with pytest.raises(ValueError, match="^nms_threshold"):
            m.infer(img, nms_threshold=bad)
        with pytest.raises(ValueError, match="^threshold"):
            m.predict_batch(np.zeros((1, 3, 416, 416), np.float32), threshold=bad)


@pytest.mark.parametrize("size", [(100, 100), (416, 8192), (0, 416), (-32, 416), "416", (416.0, 416)])
def test_input_size_is_validated(size):
    with pytest.raises(ValueError, match="input_size"):
        ModelManager.get(fixture_checkpoint("t"), input_size=size)


def test_torch_checkpoint_follows_the_device_rule():
    from rtmo.utils.device import resolve_device

    m = ModelManager.get(fixture_checkpoint("t"), input_size=(320, 320))
    assert m.device == resolve_device(None) and m.input_size == (320, 320)
    with pytest.raises(ValueError, match="backend 'onnxruntime'"):
        ModelManager.get(fixture_checkpoint("t"), backend="onnxruntime")
    with pytest.raises(ValueError, match="exported for 416x416"):
        ModelManager.get(_mmdeploy(), input_size=(320, 320))
    with pytest.raises(ValueError, match="unknown backend"):
        ModelManager.get(_mmdeploy(), backend="tflite")


def test_our_export_without_torch_matches_the_torch_model(tmp_path):
    """rtmo's own export (RTMO-t fixture at 256x256 to keep it quick) run by `rtmo predict` in an
    interpreter without torch finds the same people as the PyTorch model (fp32 tolerances of
    test_export: same count, boxes within 2e-2 image px)."""
    from rtmo.export.onnx import export_onnx

    model = ModelManager.get(fixture_checkpoint("t"), device="cpu", input_size=(256, 256))
    path = export_onnx(model, tmp_path / "rtmo-t-256.onnx", simplify=False, check=False)
    img = str(_image("000000000785"))
    ref = model.infer(img)
    out = tmp_path / "pred"
    code = ("from rtmo.cli import main; "
            f"rc = main(['predict', {img!r}, '--model', {str(path)!r}, '-o', {str(out)!r}, '--save-json', "
            "'-q']); assert sys.modules.get('torch') is None; sys.exit(rc)")
    res = _no_torch(code)
    assert res.returncode == 0, res.stderr
    records = json.loads((out / "predictions.json").read_text())
    assert len(records) == len(ref) > 10
    got = np.array(sorted(r["bbox"] for r in records))  # COCO xywh
    xywh = np.concatenate([ref.boxes[:, :2], ref.boxes[:, 2:] - ref.boxes[:, :2]], 1)
    want = np.array(sorted(xywh.tolist()))
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-2)
