"""Input sources: resolving every kind, the threaded frame reader, and `model.predict(stream=True)`."""

from __future__ import annotations

import functools
import http.server
import shutil
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from rtmo.infer.image import ImageError
from rtmo.infer.sources import FrameReader, SourceError, SourceItem, _Frame, resolve_source

from .conftest import DATA, fixture_model

VIDEO = DATA / "video" / "demo.mp4"


@pytest.fixture()
def folder(tmp_path) -> Path:
    for name in ("b.jpg", "a.png", "c.mp4", "notes.md"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "d.jpg").write_bytes(b"x")
    return tmp_path


def _kinds(items: list[SourceItem]) -> list[tuple[str, str]]:
    return [(i.kind, Path(str(i.target)).name) for i in items]


def test_resolve_folder_glob_and_file(folder):
    # A folder: its images and videos, sorted, not recursive, other files ignored.
    assert _kinds(resolve_source(folder)) == [("image", "a.png"), ("image", "b.jpg"), ("video", "c.mp4")]
    assert _kinds(resolve_source(str(folder / "**" / "*.jpg"))) == [("image", "b.jpg"), ("image", "d.jpg")]
    assert _kinds(resolve_source(folder / "c.mp4")) == [("video", "c.mp4")]


def test_resolve_list_file(folder):
    lst = folder / "list.txt"
    lst.write_text("# my images\nb.jpg\n\n  sub/d.jpg  \nrtsp://cam.local/live\n/abs/missing.jpg\n")
    items = resolve_source(lst)
    # relative to the list file; a missing entry stays in the list (the reader reports and skips it)
    assert [str(i.target) for i in items] == [str(folder / "b.jpg"), str(folder / "sub" / "d.jpg"),
                                              "rtsp://cam.local/live", "/abs/missing.jpg"]
    assert [i.kind for i in items] == ["image", "image", "stream", "image"]


def test_resolve_cameras_urls_arrays():
    assert resolve_source(0) == [SourceItem("camera", 0, "camera0")]
    assert resolve_source("1")[0].target == 1 and resolve_source("1")[0].live
    assert resolve_source("rtsp://h/x")[0].kind == "stream"
    assert resolve_source("https://h/v.m3u8")[0].kind == "stream"
    assert resolve_source("https://h/pic.jpg?sig=1")[0].kind == "image"
    assert resolve_source("http://h/clip.mp4")[0].kind == "video"  # a file over HTTP: not live
    arr = np.zeros((4, 4, 3), np.uint8)
    assert [i.kind for i in resolve_source([arr, arr])] == ["image", "image"]


@pytest.mark.parametrize("bad, match", [("missing.jpg", "no such file"), ("empty_dir", "no image or video"),
                                        ("*.nothing", "matches no"), ("", "empty source")])
def test_resolve_errors(tmp_path, bad, match):
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(SourceError, match=match):
        resolve_source(str(tmp_path / bad) if bad else bad)
    with pytest.raises(SourceError, match="unsupported source type"):
        resolve_source(3.5)


def _video_frames(n: int) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(VIDEO))
    frames = [cap.read()[1] for _ in range(n)]
    cap.release()
    return frames


def test_frame_reader_video_stride_and_cap():
    if not VIDEO.exists():
        pytest.skip(f"{VIDEO} not found")
    fps = cv2.VideoCapture(str(VIDEO)).get(cv2.CAP_PROP_FPS)
    truth = _video_frames(5)
    item = resolve_source(VIDEO)
    frames = list(FrameReader(item))
    assert [f.info.index for f in frames] == [0, 1, 2, 3, 4]
    assert [f.timestamp for f in frames] == pytest.approx([i / fps for i in range(5)])
    assert all(np.array_equal(f.image, t) for f, t in zip(frames, truth))  # decoded exactly as cv2 does
    strided = list(FrameReader(item, vid_stride=2))
    assert [f.info.index for f in strided] == [0, 2, 4] and strided[0].info.fps == pytest.approx(fps / 2)
    assert [f.info.index for f in FrameReader(item, vid_stride=2, max_frames=2)] == [0, 2]


def test_frame_reader_queue_is_bounded_and_thread_stops():
    """Decoding runs ahead of the consumer by at most the queue size, and stops when the consumer does."""
    if not VIDEO.exists():
        pytest.skip(f"{VIDEO} not found")
    reader = FrameReader(resolve_source(VIDEO), queue_size=2)
    it = iter(reader)
    first = next(it)
    assert isinstance(first, _Frame) and reader._thread is not threading.current_thread()
    time.sleep(0.3)  # let the reader thread fill what it can
    assert reader._q.qsize() <= 2
    it.close()  # the consumer stops early (a generator closed mid-video)
    assert not reader._thread.is_alive()


def test_http_image_url():
    """An image URL is downloaded and decoded like the file (a local HTTP server stands in for the web)."""
    img = DATA / "coco" / "000000000785.jpg"
    if not img.exists():
        pytest.skip(f"{img} not found")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(img.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}/"
        out = list(FrameReader(resolve_source([base + img.name, base + "missing.jpg"])))
    finally:
        server.shutdown()
    assert np.array_equal(out[0].image, cv2.imread(str(img))) and out[0].path == base + img.name
    assert isinstance(out[1].error, ImageError) and "missing.jpg" in str(out[1].error)


def test_frame_reader_reports_broken_items(tmp_path):
    img = DATA / "coco" / "000000000785.jpg"
    if not img.exists():
        pytest.skip(f"{img} not found")
    (tmp_path / "bad.mp4").write_bytes(b"\x00" * 1000)
    shutil.copy(img, tmp_path / "good.jpg")
    (tmp_path / "zero.jpg").write_bytes(b"")
    out = list(FrameReader(resolve_source(tmp_path)))
    assert [type(o).__name__ for o in out] == ["_Problem", "_Frame", "_Problem"]  # bad.mp4, good, zero
    assert isinstance(out[0].error, SourceError) and "bad.mp4" in str(out[0].error)
    assert isinstance(out[2].error, ImageError) and "zero.jpg" in str(out[2].error)
    assert out[1].info.index == 0 and out[1].path.endswith("good.jpg")


def test_predict_stream_matches_infer_and_skips_broken(tmp_path):
    images = sorted((DATA / "crowdpose").glob("*.jpg"))
    if len(images) < 2:
        pytest.skip(f"crowdpose images not found in {DATA / 'crowdpose'}")
    model = fixture_model("t")
    for p in images:
        shutil.copy(p, tmp_path / p.name)
    (tmp_path / "0_broken.png").write_bytes(b"\x89PNG nonsense")
    messages: list[str] = []
    gen = model.predict(tmp_path, stream=True, batch_size=2, on_warning=messages.append)
    assert not isinstance(gen, list)
    results = list(gen)
    assert len(messages) == 1 and "0_broken.png" in messages[0]
    assert [Path(r.path).name for r in results] == [p.name for p in images]
    assert [r.frame_index for r in results] == [1, 2]  # position in the folder, the broken file being 0
    assert all(r.timestamp is None for r in results)  # still images have no time
    for r, p in zip(results, images):
        ref = model.infer(str(p))  # one image per forward: same detections (see test_cli for tolerances)
        assert len(r) == len(ref)
        np.testing.assert_allclose(r.boxes, ref.boxes, atol=2e-3)


def test_predict_single_broken_source_raises(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"nope")
    model = fixture_model("t")
    with pytest.raises(ImageError, match="bad.jpg"):
        model.predict(bad)
    (tmp_path / "v.mp4").write_bytes(b"\x00" * 100)
    with pytest.raises(SourceError, match="cannot open video"):
        model.predict(tmp_path / "v.mp4")


def test_predict_video_tracked_frames():
    if not VIDEO.exists():
        pytest.skip(f"{VIDEO} not found")
    model = fixture_model("t")
    results = model.predict(VIDEO, max_frames=3, track=True, threshold=0.5, keep_images=True)
    assert [r.frame_index for r in results] == [0, 1, 2]
    assert all(r.path == str(VIDEO) and r.timestamp is not None for r in results)
    assert all(r.track_ids is not None and len(r.track_ids) == len(r) for r in results)
    assert np.array_equal(results[1].extra["image"], _video_frames(2)[1])


class _Trickle(http.server.BaseHTTPRequestHandler):
    """Answers 200 with a huge Content-Length, then one byte every 50 ms (for at most 20 s)."""

    def do_GET(self):  # noqa: N802 - http.server's name
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", "100000000")
        self.end_headers()
        try:
            for _ in range(400):
                self.wfile.write(b"\xff")
                self.wfile.flush()
                time.sleep(0.05)
        except OSError:  # the client gave up: expected
            pass

    def log_message(self, *args):
        pass


def test_trickling_server_is_bounded(monkeypatch):
    """A server that keeps sending a byte now and then never trips a per-read timeout; the whole download
    is bounded (1 s here, 30 s by default)."""
    import rtmo.infer.sources as src

    monkeypatch.setattr(src, "URL_IMAGE_TIMEOUT", 1.0)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Trickle)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/slow.jpg"
        t0 = time.monotonic()
        with pytest.raises(ImageError, match=r"slow\.jpg: download did not finish within 1 s"):
            src._read_url_image(url)
        assert time.monotonic() - t0 < 5
    finally:
        server.shutdown()


@pytest.mark.parametrize("bad", [-1, "-1", np.int64(-3)])
def test_negative_camera_index_rejected_before_opencv(bad):
    with pytest.raises(SourceError, match="camera index must be >= 0"):
        resolve_source(bad)
