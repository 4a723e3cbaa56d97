"""Every input source -> a stream of `PoseResult`s.

A source (image file, folder, glob, video file, webcam index, RTSP/HTTP URL, .txt list of paths, arrays) is
resolved into `SourceItem`s. A reader thread decodes them (images and video frames alike) into a bounded
queue, so decoding overlaps inference; the consumer batches consecutive frames of one group (all images, or
one video) through the network, then tracks / smooths per video. A broken item inside a larger source is
reported through `on_warning` and skipped; when the source is a single item its failure is an error.
"""

from __future__ import annotations

import glob
import os
import queue
import re
import threading
import time
import urllib.request
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from .api import infer_arrays
from .image import ImageError, decode_image, load_image
from .results import PoseResult

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".jp2", ".pgm", ".ppm", ".pbm")
VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".ts",
              ".gif")
STREAM_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://")


class SourceError(ValueError):
    """A source that cannot be used; the message names it and the problem."""


@dataclass(frozen=True)
class SourceItem:
    """One thing to read: an image (file, URL or array), a video file, a camera or a live stream."""

    kind: str  # "image" | "video" | "camera" | "stream"
    target: Any  # path / URL string, camera index, or an in-memory image
    name: str  # for messages and output names

    @property
    def live(self) -> bool:
        return self.kind in ("camera", "stream")


@dataclass
class SourceInfo:
    """Where a result came from; stored in `PoseResult.extra["source"]` (writers use it)."""

    kind: str
    name: str
    group: int  # results with the same group form one sequence (all images, or one video)
    index: int  # position of the image in the image set, or of the frame in its video
    fps: float | None = None  # of the output sequence (source fps / vid_stride), videos only


# ------------------------------------------------------------------------------------------ resolving

def _is_url(s: str) -> bool:
    return s.lower().startswith(STREAM_SCHEMES)


def _file_item(p: Path) -> SourceItem:
    ext = p.suffix.lower()
    return SourceItem("video" if ext in VIDEO_EXTS else "image", str(p), str(p))


def _expand_path(s: str, base: Path | None = None) -> list[SourceItem]:
    if _is_url(s):
        # A URL to a file is read like the file (every frame, media time); anything else (RTSP, HLS, MJPEG
        # camera) is a live stream.
        ext = Path(s.split("?")[0]).suffix.lower()
        kind = "image" if ext in IMAGE_EXTS else "video" if ext in VIDEO_EXTS else "stream"
        return [SourceItem(kind, s, s)]
    p = Path(s).expanduser()
    if base is not None and not p.is_absolute():
        p = base / p
    if any(c in s for c in "*?["):
        matches = sorted(Path(m) for m in glob.glob(str(p), recursive=True))
        files = [m for m in matches if m.is_file() and m.suffix.lower() in IMAGE_EXTS + VIDEO_EXTS]
        if not files:
            raise SourceError(f"{s}: the pattern matches no image or video file")
        return [_file_item(m) for m in files]
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTS + VIDEO_EXTS)
        if not files:
            raise SourceError(f"{p}: the folder holds no image or video file")
        return [_file_item(f) for f in files]
    if not p.exists():
        raise SourceError(f"{s}: no such file, folder or pattern")
    if p.suffix.lower() == ".txt":
        return _read_list(p)
    return [_file_item(p)]


def _read_list(p: Path) -> list[SourceItem]:
    """A text file of paths/URLs, one a line; blank lines and '#' comments skipped; relative to the file."""
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise SourceError(f"{p}: cannot read the list file ({e})") from None
    items: list[SourceItem] = []
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if _is_url(line):
            items.extend(_expand_path(line))
            continue
        q = Path(line).expanduser()
        q = q if q.is_absolute() else p.parent / q
        # A missing entry is one broken item of many: the reader reports and skips it.
        items.append(_file_item(q) if not q.is_dir() else SourceItem("image", str(q), str(q)))
    if not items:
        raise SourceError(f"{p}: the list file names no path")
    return items


def resolve_source(source: Any) -> list[SourceItem]:
    """The items a source stands for, in order. Raises `SourceError` for a missing or empty source."""
    if isinstance(source, SourceItem):
        return [source]
    if isinstance(source, bool):
        raise SourceError(f"unsupported source {source!r}")
    if isinstance(source, (int, np.integer)):
        if source < 0:  # OpenCV crashes (not fails) on some negative indices: refuse before it sees one
            raise SourceError(f"camera index must be >= 0, got {source}")
        return [SourceItem("camera", int(source), f"camera{source}")]
    if isinstance(source, os.PathLike):
        source = os.fspath(source)
    if isinstance(source, str):
        if not source.strip():
            raise SourceError("empty source")
        if source.strip().isdigit():
            return [SourceItem("camera", int(source), f"camera{source.strip()}")]
        if re.fullmatch(r"-\d+", source.strip()) and not Path(source).exists():
            raise SourceError(f"camera index must be >= 0, got {source.strip()}")
        return _expand_path(source)
    if isinstance(source, np.ndarray) or (hasattr(source, "convert") and hasattr(source, "size")):
        return [SourceItem("image", source, "image0")]
    if isinstance(source, (list, tuple)):
        items: list[SourceItem] = []
        for i, s in enumerate(source):
            if isinstance(s, np.ndarray) or hasattr(s, "convert"):
                items.append(SourceItem("image", s, f"image{i}"))
            else:
                items.extend(resolve_source(s))
        if not items:
            raise SourceError("empty list of sources")
        return items
    raise SourceError(f"unsupported source type {type(source).__name__}; pass a path, folder, glob, video, "
                      "camera index, URL, .txt list, image array or a list of these")


# ------------------------------------------------------------------------------------------ reading

@dataclass
class _Frame:
    image: np.ndarray
    path: str | None
    info: SourceInfo
    timestamp: float | None


@dataclass
class _Problem:
    error: Exception


_END = object()


# A still image fetched from a URL: the whole download must finish within this many seconds (a server
# that trickles bytes would otherwise keep a per-read timeout from ever firing) and stay under this size.
URL_IMAGE_TIMEOUT = 30.0
URL_IMAGE_MAX_BYTES = 256 * 2**20


def _read_url_image(url: str, timeout: float | None = None, max_bytes: int | None = None) -> np.ndarray:
    timeout = URL_IMAGE_TIMEOUT if timeout is None else timeout
    max_bytes = URL_IMAGE_MAX_BYTES if max_bytes is None else max_bytes
    deadline = time.monotonic() + timeout
    chunks, size = [], 0
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 - the user asked for this URL
            while True:
                if time.monotonic() > deadline:
                    raise ImageError(f"{url}: download did not finish within {timeout:g} s")
                chunk = r.read1(65536) if hasattr(r, "read1") else r.read(65536)
                if not chunk:
                    break
                size += len(chunk)
                if size > max_bytes:
                    raise ImageError(f"{url}: larger than {max_bytes:,} bytes, not an image to download")
                chunks.append(chunk)
    except (OSError, ValueError) as e:  # URLError, timeouts, resets, malformed URLs / responses
        if isinstance(e, ImageError):
            raise
        raise ImageError(f"{url}: cannot download ({' '.join(str(e).split())})") from None
    return decode_image(b"".join(chunks), url)  # the one decoder: EXIF, truncation, trailing data


@dataclass
class FrameReader:
    """Decodes `items` in a background thread into a bounded queue; iterate to get frames in order.

    `vid_stride` keeps every n-th video frame, `max_frames` caps the frames taken from each video or stream.
    Live sources drop frames while the queue is full (the newest frame matters, not a growing backlog);
    files never drop. Iterating yields `_Frame` or `_Problem` objects.
    """

    items: list[SourceItem]
    vid_stride: int = 1
    max_frames: int | None = None
    queue_size: int = 8
    _q: queue.Queue = field(init=False, repr=False)
    _stop: threading.Event = field(init=False, repr=False)
    _thread: threading.Thread | None = field(init=False, default=None, repr=False)

    def __post_init__(self) -> None:
        if self.vid_stride < 1:
            raise SourceError(f"vid_stride must be >= 1, got {self.vid_stride}")
        if self.max_frames is not None and self.max_frames < 1:
            raise SourceError(f"max_frames must be >= 1, got {self.max_frames}")
        self._q = queue.Queue(maxsize=max(1, self.queue_size))
        self._stop = threading.Event()

    def _put(self, obj: Any, drop_if_full: bool = False) -> bool:
        while not self._stop.is_set():
            try:
                self._q.put(obj, timeout=0.1)
                return True
            except queue.Full:
                if drop_if_full:
                    return False
        return False

    def _run(self) -> None:
        try:
            image_index = 0
            for group, item in enumerate(self.items):
                if self._stop.is_set():
                    break
                if item.kind == "image":
                    try:
                        if isinstance(item.target, str) and _is_url(item.target):
                            img, path = _read_url_image(item.target), item.target
                        else:
                            img, path = load_image(item.target)
                    except (ImageError, OSError) as e:
                        err = e if isinstance(e, ImageError) else ImageError(f"{item.name}: {e}")
                        self._put(_Problem(err))
                        image_index += 1
                        continue
                    # All images form group -1: consecutive images are batched together.
                    self._put(_Frame(img, path, SourceInfo("image", item.name, -1, image_index), None))
                    image_index += 1
                else:
                    self._read_video(item, group)
        except Exception as e:  # noqa: BLE001 - handed to the consumer, which re-raises it
            self._put(_Problem(e))
        finally:
            self._put(_END)

    def _read_video(self, item: SourceItem, group: int) -> None:
        if isinstance(item.target, str) and _is_url(item.target):
            # a network source that stops answering fails after this long instead of blocking forever
            ms = int(URL_IMAGE_TIMEOUT * 1000)
            cap = cv2.VideoCapture(item.target, cv2.CAP_ANY,
                                   [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms])
        else:
            cap = cv2.VideoCapture(item.target)
        try:
            if not cap.isOpened():
                what = {"camera": "camera", "stream": "stream"}.get(item.kind, "video")
                self._put(_Problem(SourceError(f"{item.name}: cannot open {what}")))
                return
            fps = cap.get(cv2.CAP_PROP_FPS) or 0.0
            fps = fps if 0 < fps < 1000 else None
            out_fps = fps / self.vid_stride if fps else None
            t0, read, taken = time.monotonic(), 0, 0
            while not self._stop.is_set():
                ok, frame = cap.read()
                if not ok or frame is None:
                    break
                index = read
                read += 1
                if index % self.vid_stride:
                    continue
                # Files: media time from the frame index (exact, unlike CAP_PROP_POS_MSEC on some backends);
                # live sources: seconds since opening.
                ts = index / fps if (fps and not item.live) else time.monotonic() - t0
                info = SourceInfo(item.kind, item.name, group, index, out_fps)
                if self._put(_Frame(frame, item.name if item.kind == "video" else None, info, ts),
                             drop_if_full=item.live):
                    taken += 1
                if self.max_frames is not None and taken >= self.max_frames:
                    break
            if read == 0 and not self._stop.is_set():
                self._put(_Problem(SourceError(f"{item.name}: no frame could be decoded (broken or empty "
                                               "video)")))
        finally:
            cap.release()

    def __iter__(self) -> Iterator[Any]:
        self._thread = threading.Thread(target=self._run, name="rtmo-reader", daemon=True)
        self._thread.start()
        try:
            while True:
                obj = self._q.get()
                if obj is _END:
                    return
                yield obj
        finally:
            self.close()

    def close(self) -> None:
        self._stop.set()
        while True:  # unblock a producer waiting on a full queue
            try:
                self._q.get_nowait()
            except queue.Empty:
                break
        if self._thread is not None:
            self._thread.join(timeout=5)


def expected_frames(item: SourceItem, vid_stride: int = 1, max_frames: int | None = None) -> int | None:
    """How many results a video file will give (for the progress bar); None when unknown."""
    if item.kind != "video":
        return 1 if item.kind == "image" else None
    cap = cv2.VideoCapture(item.target)
    n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0) if cap.isOpened() else 0
    cap.release()
    if n <= 0:
        return None
    n = (n + vid_stride - 1) // vid_stride
    return min(n, max_frames) if max_frames else n


# ------------------------------------------------------------------------------------------ results

def _warn(message: str) -> None:
    warnings.warn(message, stacklevel=3)


def stream_results(model: Any, source: Any, *, batch_size: int = 1, threshold: float | None = None,
                   nms_threshold: float | None = None, vid_stride: int = 1, max_frames: int | None = None,
                   track: bool = False, smooth: bool = False, keep_images: bool = False,
                   progress: bool = False, queue_size: int = 8,
                   on_warning: Callable[[str], None] | None = None) -> Iterator[PoseResult]:
    """One `PoseResult` per image / frame of `source`, in order, with `path`, `frame_index` (position in
    the image set, or frame number in the video) and `timestamp` (video media time in seconds, seconds
    since opening for live sources, None for still images) filled; `extra["source"]` is a `SourceInfo`.

    Images and file-video frames go through the network `batch_size` at a time; live sources one frame at a
    time (batching would only add latency). `track` gives stable `track_ids` per video (one tracker per
    video, one for the image set); `smooth` (implies `track`) One-Euro-filters tracked keypoints.
    `keep_images` stores the decoded BGR frame in `extra["image"]` (for drawing). Broken items of a larger
    source are reported through `on_warning` (default: `warnings.warn`) and skipped.
    """
    if batch_size < 1:
        raise SourceError(f"batch_size must be >= 1, got {batch_size}")
    items = resolve_source(source)
    warn = on_warning or _warn
    strict = len(items) == 1  # a lone item that fails is the user's error, not a skippable one
    track = track or smooth
    bar, bar_started = None, False

    def start_bar() -> Any:
        # Made on the first result, so an error on the first item prints no half-drawn bar; none for a lone
        # image.
        if not progress or (len(items) == 1 and items[0].kind == "image"):
            return None
        from tqdm import tqdm

        totals = [expected_frames(it, vid_stride, max_frames) for it in items]
        total = None if any(t is None for t in totals) else sum(totals)
        unit = "img" if all(it.kind == "image" for it in items) else "frame"
        return tqdm(total=total, unit=unit, dynamic_ncols=True, leave=True)

    tracker = smoother = None
    skipped = 0
    current_group: int | None = None
    batch: list[_Frame] = []

    def run_batch(frames: list[_Frame]) -> list[PoseResult]:
        nonlocal tracker, smoother, skipped
        results = infer_arrays(model, [f.image for f in frames], threshold, nms_threshold,
                               [f.path for f in frames])
        out = []
        for f, r in zip(frames, results):
            r.frame_index, r.timestamp = f.info.index, f.timestamp
            r.extra["source"] = f.info
            if keep_images:
                r.extra["image"] = f.image
            if track:
                r = tracker.update(r)
                if smoother is not None:
                    r = smoother.update(r)
            out.append(r)
        if bar is not None:
            bar.update(len(frames) + skipped)
            skipped = 0
        return out

    reader = FrameReader(items, vid_stride, max_frames, queue_size)
    try:
        for obj in reader:
            if progress and not bar_started and not isinstance(obj, _Problem):
                bar, bar_started = start_bar(), True
            if isinstance(obj, _Problem):
                if strict or not isinstance(obj.error, (ImageError, SourceError)):
                    raise obj.error
                warn(f"skipped {obj.error}")
                skipped += isinstance(obj.error, ImageError)  # counted in the bar's total
                continue
            group = obj.info.group
            if group != current_group:  # a new video (or the image set): flush, fresh tracker
                if batch:
                    yield from run_batch(batch)
                    batch = []
                current_group = group
                if track:
                    from .track import Tracker

                    tracker = Tracker()
                    if smooth:
                        from .smooth import PoseSmoother

                        smoother = PoseSmoother(fps=obj.info.fps or 30.0)
            batch.append(obj)
            if obj.info.kind in ("camera", "stream") or len(batch) >= batch_size:
                yield from run_batch(batch)
                batch = []
        if batch:
            yield from run_batch(batch)
    finally:
        reader.close()
        if bar is not None:
            bar.close()
