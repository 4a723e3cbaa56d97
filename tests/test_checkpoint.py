"""The one checkpoint reader: the published mmpose format loads, nothing in a file ever runs.

The published RTMO files (mmengine meta with numpy-1.x arrays, legacy non-zip serialization) are
represented by the fixture's `official_like/` copy, made outside this project the way the official files
were; its tensors are those of the fixture `.pth`, so mmpose's `.npz` outputs apply to it.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

from rtmo import ModelManager
from rtmo.hub.zoo import read_checkpoint
from rtmo.utils.checkpoint import CheckpointError, load_checkpoint

from .conftest import DATA, fixture_checkpoint, fixture_dir
from .test_parity import assert_keypoints_match


def official_like() -> Path:
    files = sorted((fixture_dir("t") / "official_like").glob("*.pth"))
    if not files:
        pytest.skip("official_like fixture missing")
    return files[0]


def test_published_format_is_what_the_fixture_readme_says():
    """Guard the fixture itself: legacy serialization and numpy-1 array globals, or this test proves
    nothing about the published files."""
    data = official_like().read_bytes()
    assert not data.startswith(b"PK")  # legacy, not zip
    assert b"numpy.core.multiarray" in data[:200_000] and b"_reconstruct" in data[:200_000]


def test_official_like_loads_and_reproduces_mmpose():
    model = ModelManager.get(official_like(), device="cpu")
    ref_sd, _ = read_checkpoint(fixture_checkpoint("t"))
    ours = model.state_dict()
    assert set(ours) == set(ref_sd)
    assert all(torch.equal(ours[k], ref_sd[k]) for k in ref_sd)
    assert model.input_size == (416, 416)  # from the cfg text in the published meta
    # mmpose's own outputs for these tensors (the parity tolerances, see test_parity).
    for stem in ("000000197388", "103319"):
        image = next(DATA.glob(f"*/{stem}.jpg"))
        ref = np.load(fixture_dir("t") / f"img_{stem}.npz")
        res = model.infer(str(image))
        assert len(res) == len(ref["bbox_scores"]) > 0
        np.testing.assert_allclose(res.scores, ref["bbox_scores"], atol=1e-5)
        np.testing.assert_allclose(res.boxes, ref["bboxes"], atol=1e-3)
        assert_keypoints_match(res.keypoints, ref["keypoints"])


def test_official_like_meta_arrays_are_numpy():
    meta = load_checkpoint(official_like())["meta"]
    sigmas = meta["dataset_meta"]["sigmas"]
    assert isinstance(sigmas, np.ndarray) and sigmas.shape == (17,)
    np.testing.assert_allclose(sigmas[:2], [0.026, 0.025], atol=1e-7)


def test_cli_predict_with_the_published_file(tmp_path):
    image = next(DATA.glob("coco/000000197388.jpg"))
    ref = np.load(fixture_dir("t") / "img_000000197388.npz")
    proc = subprocess.run([sys.executable, "-m", "rtmo", "predict", str(image), "--model",
                           str(official_like()), "--save-json", "-o", str(tmp_path / "run"), "--quiet",
                           "--device", "cpu"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    records = json.loads(next((tmp_path / "run").glob("*.json")).read_text())
    assert len(records) == len(ref["bbox_scores"])
    got = np.array(sorted(r["score"] for r in records))
    np.testing.assert_allclose(got, np.sort(ref["bbox_scores"]), atol=1e-5)


def _weights() -> OrderedDict:
    return OrderedDict(w=torch.arange(6, dtype=torch.float32).reshape(2, 3), b=torch.ones(3))


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_numpy2_meta_and_both_serializations_load(tmp_path, zip_format):
    """What numpy 2 writes (numpy._core names, dtype classes), in either torch serialization."""
    obj = {"meta": {"sigmas": np.array([0.1, 0.2], np.float32), "epoch": np.int64(3),
                    "colors": np.array([[255, 0, 0]], np.uint8)}, "state_dict": _weights()}
    path = tmp_path / "ckpt.pth"
    torch.save(obj, path, _use_new_zipfile_serialization=zip_format)
    got = load_checkpoint(path)
    assert torch.equal(got["state_dict"]["w"], obj["state_dict"]["w"])
    np.testing.assert_array_equal(got["meta"]["sigmas"], obj["meta"]["sigmas"])
    assert got["meta"]["sigmas"].dtype == np.float32 and got["meta"]["colors"].dtype == np.uint8
    assert int(got["meta"]["epoch"]) == 3


class _RunsCode:
    """Unpickling this would call os.system: the classic malicious pickle."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class Custom:  # a plain class: harmless here, but a class is not tensor or array data
    pass


def _write(kind: str, obj, path: Path) -> None:
    if kind == "raw":
        with open(path, "wb") as f:
            pickle.dump(obj, f, protocol=2)
    else:
        torch.save(obj, path, _use_new_zipfile_serialization=(kind == "zip"))


@pytest.mark.parametrize("kind", ["zip", "legacy", "raw"])
def test_malicious_pickles_are_refused_and_run_nothing(tmp_path, kind):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    # meta first: a raw pickle of tensors would be refused at torch.storage._load_from_bytes before
    # the payload is reached, which is right but would not show that the payload is refused too.
    _write(kind, {"meta": {"x": _RunsCode(marker)}, "state_dict": _weights()}, path)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    msg = str(e.value)
    assert "refused" in msg and ("posix.system" in msg or "os.system" in msg or "nt.system" in msg), msg
    assert "never runs code" in msg and "weights_only" not in msg and "corrupt" not in msg
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="refused"):  # every public path uses the same reader
        ModelManager.get(path)


@pytest.mark.parametrize("kind", ["zip", "legacy"])
def test_a_class_reference_is_refused_by_name(tmp_path, kind):
    path = tmp_path / "cls.pth"
    _write(kind, {"state_dict": _weights(), "meta": {"obj": Custom()}}, path)
    with pytest.raises(CheckpointError, match=r"references [\w.]*Custom, which is not tensor or array data"):
        load_checkpoint(path)


def test_cli_refuses_a_malicious_checkpoint_in_one_line(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    _write("legacy", {"state_dict": _weights(), "meta": {"x": _RunsCode(marker)}}, path)
    image = next(DATA.glob("coco/*.jpg"))
    proc = subprocess.run([sys.executable, "-m", "rtmo", "predict", str(image), "--model", str(path),
                           "-o", str(tmp_path / "run"), "--quiet"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "refused" in lines[0] and "Traceback" not in proc.stderr, proc.stderr
    assert not marker.exists()


def test_truncated_legacy_file_is_corrupt_not_refused(tmp_path):
    data = official_like().read_bytes()
    path = tmp_path / "cut.pth"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(path)


@pytest.mark.parametrize("size", [[0, 0], [-32, 64], [100, 100], [100000, 64]])
def test_input_size_in_meta_is_validated(tmp_path, size):
    state, _ = read_checkpoint(fixture_checkpoint("t"))
    path = tmp_path / "bad_meta.pth"
    torch.save({"meta": {"input_size": size}, "state_dict": state}, path)
    with pytest.raises(CheckpointError, match="checkpoint meta: input_size must be two multiples of 32"):
        ModelManager.get(path, device="cpu")
