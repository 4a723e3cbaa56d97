"""`rtmo predict` outputs survive stops and failures: SIGTERM and Ctrl-C give valid partial results, SIGKILL
leaves every record written so far, a full disk is one clear error and never a torn file, a run that fails
early leaves nothing, ids never collide. The CLI runs in subprocesses, as a user types it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from rtmo.infer.writers import ImageIds, OutputError, PredictionWriter, write_bytes_atomic

from .conftest import DATA, fixture_checkpoint

REPO = Path(__file__).resolve().parents[1]


def _env() -> dict:
    e = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONPATH": str(REPO)}
    e.pop("RTMO_DEBUG", None)
    return e


def rtmo(*args, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rtmo", *map(str, args)], capture_output=True, text=True,
                          env=_env(), cwd=REPO, timeout=timeout)


def start(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "rtmo", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env(), cwd=REPO)


@pytest.fixture(scope="module")
def model() -> Path:
    return fixture_checkpoint("t")


@pytest.fixture(scope="module")
def many(tmp_path_factory) -> Path:
    """80 small copies of a real COCO photo (non-numeric names): a run that lasts a few seconds."""
    src = DATA / "coco" / "000000000785.jpg"
    if not src.exists():
        pytest.skip(f"{src} not found")
    img = cv2.resize(cv2.imread(str(src)), (160, 107))
    d = tmp_path_factory.mktemp("many")
    for i in range(80):
        cv2.imwrite(str(d / f"img{i:03d}.jpg"), img)
    return d


def _wait_for_lines(path: Path, proc: subprocess.Popen, n: int = 1, timeout: float = 60) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if path.exists() and path.read_text().count("\n") >= n:
            return
        if proc.poll() is not None:
            pytest.fail(f"the run ended before writing records: {proc.stderr.read()}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail("no record written in time")


def test_sigterm_leaves_valid_partial_results(model, many, tmp_path):
    out = tmp_path / "out"
    p = start("predict", many, "-m", model, "--save-json", "--threshold", "0.0", "-q", "-o", out)
    _wait_for_lines(out / "predictions.jsonl", p, 3)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    assert "Traceback" not in err and "interrupted" in err
    recs = json.loads((out / "predictions.json").read_text())  # a complete JSON array, not a torn one
    names = {Path(r["file_name"]).name for r in recs}
    assert 1 <= len(names) < 80  # some images, not all: it really stopped mid-way
    assert not (out / "predictions.jsonl").exists()  # folded into the array
    assert not list(out.glob(".*tmp"))


def test_sigkill_keeps_every_record_written(model, many, tmp_path):
    out = tmp_path / "out"
    p = start("predict", many, "-m", model, "--save-json", "--threshold", "0.0", "-q", "-o", out)
    _wait_for_lines(out / "predictions.jsonl", p, 3)
    p.kill()
    p.communicate(timeout=60)
    lines = (out / "predictions.jsonl").read_text().splitlines()
    # each image's lines are one flushed write; only a write cut by the kill itself can be torn
    recs = [json.loads(line) for line in lines[:-1]] + _maybe_json(lines[-1])
    assert len(recs) >= 3 and all(r["file_name"].endswith(".jpg") and len(r["keypoints"]) == 51 for r in recs)
    assert not (out / "predictions.json").exists()  # no torn final file


def _maybe_json(line: str) -> list:
    try:
        return [json.loads(line)]
    except ValueError:
        return []


def test_early_failure_leaves_nothing(model, many, tmp_path):
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({"images": [{"id": 1, "file_name": "other.jpg"}]}))
    out = tmp_path / "out"
    r = rtmo("predict", many / "img000.jpg", "-m", model, "--save-json", "--ann", ann, "-o", out)
    assert r.returncode == 2 and "img000.jpg" in r.stderr and "not listed" in r.stderr
    assert not out.exists()


def test_output_path_checked_before_the_model_loads(tmp_path, many):
    f = tmp_path / "afile"
    f.write_text("x")
    for target, expect in ((f, "is a file"), (f / "sub", "is a file")):
        r = rtmo("predict", many / "img000.jpg", "-m", "rtmo-x-never-loaded", "--save", "-o", target)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and expect in lines[0] and "afile" in lines[0], r.stderr
    assert f.read_text() == "x"


def test_no_input_processed_is_an_error(model, tmp_path):
    d = tmp_path / "bad"
    d.mkdir()
    for name in ("a.jpg", "b.png"):
        (d / name).write_bytes(b"not an image")
    r = rtmo("predict", d, "-m", model, "--save-json", "-o", tmp_path / "out")
    assert r.returncode == 2, r.stderr
    assert "no image or frame could be processed" in r.stderr.splitlines()[-1]
    assert not (tmp_path / "out" / "predictions.json").exists()


def test_ids_never_collide_and_records_name_their_file(model, many, tmp_path):
    d = tmp_path / "mixed"
    d.mkdir()
    for name in ("1.jpg", "a.jpg", "b.jpg"):  # a.jpg is image 1 of the set, the stem of 1.jpg is 1 too
        (d / name).write_bytes((many / "img000.jpg").read_bytes())
    r = rtmo("predict", d, "-m", model, "--save-json", "--threshold", "0.0", "-q", "-o", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    recs = json.loads((tmp_path / "out" / "predictions.json").read_text())
    by_file: dict[str, set] = {}
    for rec in recs:
        by_file.setdefault(Path(rec["file_name"]).name, set()).add(rec["image_id"])
    assert set(by_file) == {"1.jpg", "a.jpg", "b.jpg"} and all(len(v) == 1 for v in by_file.values())
    ids = [next(iter(v)) for v in by_file.values()]
    assert len(set(ids)) == 3 and by_file["1.jpg"] == {1}


def test_image_ids_skip_reserved_stems():
    ids = ImageIds(names=["x/a.jpg", "x/1.jpg", "x/2.jpg"])
    assert [ids("x/a.jpg", 0), ids("x/1.jpg", 1), ids("x/2.jpg", 2)] == [0, 1, 2]
    ids = ImageIds(names=["x/0.jpg", "y/a.jpg", "y/0.jpg"])  # duplicate stem in two folders
    got = [ids("x/0.jpg", 0), ids("y/a.jpg", 1), ids("y/0.jpg", 2)]
    assert len(set(got)) == 3 and got[0] == 0


# ---------------------------------------------------------------------------------- full disk

def _full_disk(monkeypatch) -> None:
    """Every atomic write goes to /dev/full, which fails each write with ENOSPC, as a full disk does."""
    if not Path("/dev/full").exists():
        pytest.skip("/dev/full not available")
    import rtmo.utils.fileio as fileio

    def full(path, mode="r", *args, **kwargs):  # the one atomic writer opens its temporary file here
        return open("/dev/full", mode, *args, **kwargs) if "w" in mode else open(path, mode, *args, **kwargs)

    monkeypatch.setattr(fileio, "open", full, raising=False)


def _result(path: str):
    from rtmo.config import COCO_KEYPOINTS
    from rtmo.infer.results import PoseResult
    from rtmo.infer.sources import SourceInfo

    r = PoseResult(boxes=np.array([[1, 2, 30, 40]], np.float32), scores=np.array([0.9], np.float32),
                   class_ids=np.zeros(1, np.int64), keypoints=np.ones((1, 17, 2), np.float32),
                   keypoint_scores=np.ones((1, 17), np.float32), image_shape=(50, 60),
                   keypoint_info=COCO_KEYPOINTS, path=path)
    r.extra["source"] = SourceInfo("image", path, -1, 0)
    r.extra["image"] = np.zeros((50, 60, 3), np.uint8)
    return r


def test_full_disk_is_one_clear_error_and_no_torn_file(tmp_path, monkeypatch):
    _full_disk(monkeypatch)
    w = PredictionWriter(tmp_path, save=True, save_json=True)
    with pytest.raises(OutputError, match=r"a\.jpg: cannot write \(No space left on device\)"):
        w.add(_result("a.jpg"))
    assert not (tmp_path / "a.jpg").exists() and not list(tmp_path.glob(".*"))
    with pytest.raises(OutputError, match="predictions.json: cannot write"):
        write_bytes_atomic(tmp_path / "predictions.json", b"[]")
    assert not (tmp_path / "predictions.json").exists()


def test_full_disk_cli_on_a_tiny_tmpfs(model, many, tmp_path):
    """The CLI writing drawn images into a 150 kB tmpfs (needs root and mount; skipped otherwise)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=150k", "tmpfs", str(mnt)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        big = tmp_path / "big"
        big.mkdir()
        img = cv2.imread(str(DATA / "coco" / "000000000785.jpg"))
        rng = np.random.default_rng(0)
        for i in range(4):  # noise compresses badly: ~1 MB per drawn image, the second cannot fit
            noisy = np.clip(img.astype(np.int16) + rng.integers(-60, 60, img.shape), 0, 255).astype(np.uint8)
            cv2.imwrite(str(big / f"n{i}.png"), noisy)
        r = rtmo("predict", big, "-m", model, "--save", "--save-json", "-q", "-o", mnt)
        lines = [ln for ln in r.stderr.splitlines() if ln.startswith("rtmo: error")]
        assert r.returncode == 2 and len(lines) == 1 and "No space left on device" in lines[0], r.stderr
        assert "Traceback" not in r.stderr
        assert not list(mnt.glob(".*tmp"))  # no temp file left
        for p in mnt.glob("*.png"):  # whatever is there is whole
            assert cv2.imread(str(p)) is not None
        if (mnt / "predictions.json").exists():
            json.loads((mnt / "predictions.json").read_text())
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)



def test_live_stream_video_survives_sigkill(tmp_path):
    """Drawn cameras/streams go to Matroska: killed mid-write (no chance to finalise), the file still plays
    up to its last frames. (A file source's .mp4 is finalised on Ctrl-C/SIGTERM; SIGKILL leaves it without
    its index, which is why live sources, usually ended by stopping the process, do not use it.)"""
    out = tmp_path / "cam.mkv"
    code = ("import time, numpy as np; from pathlib import Path; from rtmo.infer.writers import VideoSink\n"
            f"s = VideoSink(Path({str(out)!r}), 25.0, (160, 120))\n"
            "rng = np.random.default_rng(0)\n"
            "for i in range(100000):\n"
            "    s.write(rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)); time.sleep(0.002)\n")
    p = subprocess.Popen([sys.executable, "-c", code], env=_env(), cwd=REPO)
    t0 = time.monotonic()
    while not (out.exists() and out.stat().st_size > 300_000):
        assert p.poll() is None and time.monotonic() - t0 < 60, "writer ended or stalled"
        time.sleep(0.05)
    p.kill()
    p.wait(timeout=30)
    cap = cv2.VideoCapture(str(out))
    frames = 0
    while cap.read()[0]:
        frames += 1
    assert frames >= 5
