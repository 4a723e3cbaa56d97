"""Write prediction outputs: drawn images / videos, one COCO results JSON per image set, JSON lines per video.

Nothing existing is ever overwritten (inputs included): a name already taken gets `_1`, `_2`, ... appended.
Nothing is lost or torn when a run is stopped: every image's records go to `predictions.jsonl` (one COCO
record a line, flushed) as soon as they exist; `close()` assembles `predictions.json` from them atomically
(temp file + rename) and removes the lines file. A run killed with SIGKILL leaves `predictions.jsonl`
(every record written before the kill, one flushed write per image, so at most the last line can be torn);
drawn images are written atomically too. Drawn videos of files are
`.mp4` (finalised on close, which Ctrl-C and SIGTERM reach; SIGKILL leaves it unplayable, there is no moov
atom yet); live sources (cameras, streams), which are usually ended by stopping the process, are written as
Matroska `.mkv`, which stays playable up to the last frame written whatever ends the process.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import cv2
import numpy as np

from ..utils.fileio import atomic_write_bytes, blocking_file
from .draw import draw_result
from .results import PoseResult
from .sources import SourceInfo

IMAGE_OUT_EXTS = (".jpg", ".jpeg", ".png", ".bmp")


class OutputError(ValueError):
    """An output that cannot be written (full disk, read-only folder, a file where a folder should be);
    the message names the path and the reason."""


def unique_path(path: str | os.PathLike, taken: set[Path] | None = None) -> Path:
    """`path`, or `stem_1.ext`, `stem_2.ext`, ... : the first that neither exists nor is in `taken`
    (which is updated), so outputs never replace an input or an earlier output."""
    p = Path(path)
    taken = set() if taken is None else taken
    cand, n = p, 0
    while cand.exists() or cand.resolve() in taken:
        n += 1
        cand = p.with_name(f"{p.stem}_{n}{p.suffix}")
    taken.add(cand.resolve())
    return cand


def check_output_dir(path: str | os.PathLike, what: str = "--output") -> Path:
    """`path` as a usable output folder (created later, when the first file is written): refuses a path
    that is a file, or lies below a file, with one line naming it."""
    p = Path(path)
    blocker = blocking_file(p)
    if blocker == p:
        raise OutputError(f"{what} {p}: is a file, not a folder")
    if blocker is not None:
        raise OutputError(f"{what} {p}: {blocker} is a file, not a folder")
    return p


def check_output_file(path: str | os.PathLike, what: str = "output file") -> Path:
    """`path` as a file to be written: refuses a folder, or a path below a file, with one line."""
    p = Path(path)
    if p.is_dir():
        raise OutputError(f"{what} {p}: is a folder, not a file")
    blocker = blocking_file(p.parent)
    if blocker is not None:
        raise OutputError(f"{what} {p}: {blocker} is a file, not a folder")
    return p


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write `data` to a temp file in `path`'s folder, then rename: a crash or a full disk never leaves a
    torn file under the final name. Raises `OutputError` naming the path."""
    try:
        atomic_write_bytes(path, data)
    except OSError as e:
        raise OutputError(f"{path}: cannot write ({e.strerror or e})") from None


def _safe_stem(name: str) -> str:
    """A file stem for a source name: the file stem, or the URL / camera name with odd characters replaced."""
    stem = Path(name).stem if not re.match(r"^[a-z]+://", name) else name.split("://", 1)[1]
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._") or "stream"


class ImageIds:
    """COCO `image_id` for an image: from the annotation file's `file_name` when one is given; else the file
    stem when it is a number (COCO names files by id); else the running index of the image in the set.

    Ids never collide: an id already given out, or (when `names`, every image of the set, are known up
    front) the numeric stem of another image of the set, is skipped for the next free number."""

    def __init__(self, ann_file: str | os.PathLike | None = None,
                 names: Sequence[str | None] | None = None) -> None:
        self.by_name: dict[str, int] = {}
        self.used: set[int] = set()
        if ann_file is not None:
            try:
                data = json.loads(Path(ann_file).read_text())
                self.by_name = {Path(im["file_name"]).name: int(im["id"]) for im in data["images"]}
            except RecursionError:
                raise ValueError(f"{ann_file}: JSON nested too deeply to be a COCO annotation file") from None
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise ValueError(f"{ann_file}: not a COCO annotation file with images/file_name/id "
                                 f"({' '.join(str(e).split())[:200]})") from None
        stems = [Path(n).stem for n in names or () if isinstance(n, str)]
        self.reserved = {int(s) for s in stems if s.isdigit()}

    def __call__(self, path: str | None, index: int) -> int:
        name = Path(path).name if path else None
        if self.by_name:
            if name not in self.by_name:
                raise ValueError(f"{path or f'image {index}'}: not listed in the annotation file's images")
            return self.by_name[name]
        stem = Path(path).stem if path else ""
        if stem.isdigit() and int(stem) not in self.used:
            image_id = int(stem)
        else:
            image_id = index
            while image_id in self.used or image_id in self.reserved:
                image_id += 1
        self.used.add(image_id)
        return image_id


def coco_records(result: PoseResult, image_id: int, category_id: int = 1) -> list[dict]:
    """COCO keypoint results (flat x, y, score triples; box xywh) for one image — `COCO.loadRes` format."""
    return result.to_coco(image_id, category_id)  # the one definition of the record format


class VideoSink:
    """An mp4v video file at the source's fps and frame size, opened on the first frame (an `.mkv` path
    gives a Matroska file, which stays playable when the process is killed)."""

    def __init__(self, path: Path, fps: float, size: tuple[int, int]) -> None:
        self.path, self.fps, self.size = path, fps, size
        self.writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
        if not self.writer.isOpened():
            raise OutputError(f"{path}: cannot open a video writer (mp4v, {size[0]}x{size[1]} @ {fps:g} fps)")
        self.frames = 0

    def write(self, frame: np.ndarray) -> None:
        if (frame.shape[1], frame.shape[0]) != self.size:  # a stream that changed resolution mid-way
            frame = cv2.resize(frame, self.size)
        self.writer.write(frame)
        self.frames += 1

    def close(self) -> None:
        self.writer.release()
        # OpenCV reports no write error: a video that did not reach the disk shows as a missing/empty file
        if not self.path.is_file() or self.path.stat().st_size == 0:
            raise OutputError(f"{self.path}: the video could not be written (disk full or not writable?)")


class PredictionWriter:
    """Everything `rtmo predict` writes into `out_dir`, fed one `PoseResult` at a time (from
    `stream_results(..., keep_images=save)`); `close()` finishes the files and returns their paths.

    - `save`: drawn images `<stem>.<ext>`, drawn videos `<stem>.mp4` (`.mkv` for cameras and streams);
    - `save_json`: `predictions.json` (COCO results, each record also carrying `file_name`) for the images,
      written incrementally to `predictions.jsonl` during the run; `<stem>.jsonl` for each video/stream,
      one record per frame: source, frame_index, timestamp, image_shape, detections (with track_id).

    `image_names` (the image paths of the set, in order) lets image ids be chosen without collisions.
    The output folder is created when the first file is written: a run that fails early leaves nothing.
    Write failures raise `OutputError`.
    """

    def __init__(self, out_dir: str | os.PathLike, save: bool = False, save_json: bool = False,
                 kpt_threshold: float = 0.3, ann_file: str | os.PathLike | None = None,
                 inputs: Sequence[str | os.PathLike] = (),
                 image_names: Sequence[str | None] | None = None) -> None:
        self.out_dir = check_output_dir(out_dir) if (save or save_json) else Path(out_dir)
        self.save, self.save_json, self.kpt_threshold = save, save_json, kpt_threshold
        self.image_ids = ImageIds(ann_file, image_names)
        self.taken: set[Path] = {Path(p).resolve() for p in inputs}
        self.records: list[dict] = []
        self.n_images = 0  # images whose results were recorded
        self.written: list[Path] = []
        self._group: int | None = None
        self._video: VideoSink | None = None
        self._jsonl: TextIO | None = None
        self._pred_lines: TextIO | None = None
        self._pred_lines_path: Path | None = None

    def _path(self, name: str) -> Path:
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            why = e.strerror or e
            raise OutputError(f"{self.out_dir}: cannot create the output folder ({why})") from None
        p = unique_path(self.out_dir / name, self.taken)
        self.written.append(p)
        return p

    def _open(self, name: str) -> tuple[Path, TextIO]:
        p = self._path(name)
        try:
            return p, p.open("w", encoding="utf-8")
        except OSError as e:
            raise OutputError(f"{p}: cannot write ({e.strerror or e})") from None

    @staticmethod
    def _write_lines(f: TextIO, objs: Sequence[Any], path: Path) -> None:
        """One JSON line per object, written and flushed together (one image's records, one frame)."""
        try:
            f.write("".join(json.dumps(obj) + "\n" for obj in objs))
            f.flush()  # a run may be stopped at any time: keep every line written
        except OSError as e:
            raise OutputError(f"{path}: cannot write ({e.strerror or e})") from None

    def _end_sequence(self) -> None:
        video, jsonl = self._video, self._jsonl
        self._video = self._jsonl = None
        try:
            if video is not None:
                video.close()
        finally:
            if jsonl is not None:
                _close_file(jsonl)

    def add(self, result: PoseResult, image: np.ndarray | None = None) -> np.ndarray | None:
        """Record one result; returns the drawn frame when `save` is on (for display too)."""
        info: SourceInfo | None = result.extra.get("source")
        if info is None:  # a result made outside stream_results: treat it as a still image
            info = SourceInfo("image", result.path or f"image{self.n_images}", -1, self.n_images)
        image = result.extra.get("image") if image is None else image
        drawn = None
        if self.save or image is not None:
            if image is None:
                raise ValueError("saving drawn outputs needs the frames: stream with keep_images=True")
            drawn = draw_result(image, result, self.kpt_threshold)
        if info.group != self._group:
            self._end_sequence()
            self._group = info.group
        if info.kind == "image":
            records = None
            if self.save_json:  # the id first: an image the --ann file does not list fails before any write
                records = coco_records(result, self.image_ids(result.path, info.index))
                for r in records:
                    r["file_name"] = result.path or info.name
            if self.save:
                name = result.path or info.name
                ext = Path(name).suffix.lower()
                ext = ext if ext in IMAGE_OUT_EXTS else ".jpg"
                path = self._path(_safe_stem(name) + ext)
                ok, buf = cv2.imencode(ext, drawn)
                if not ok:
                    raise OutputError(f"{path}: cannot encode the drawn image")
                write_bytes_atomic(path, buf.tobytes())
            if records is not None:
                # in memory first: a stop while the lines are written still finds the image in the array
                self.records.extend(records)
                if self._pred_lines is None:
                    self._pred_lines_path, self._pred_lines = self._open("predictions.jsonl")
                self._write_lines(self._pred_lines, records, self._pred_lines_path)
            self.n_images += 1
        else:
            stem = _safe_stem(info.name)
            if self.save:
                if self._video is None:
                    h, w = drawn.shape[:2]
                    ext = ".mkv" if info.kind in ("camera", "stream") else ".mp4"
                    self._video = VideoSink(self._path(stem + ext), info.fps or 30.0, (w, h))
                self._video.write(drawn)
            if self.save_json:
                if self._jsonl is None:
                    path, self._jsonl = self._open(stem + ".jsonl")
                    self._jsonl_path = path
                self._write_lines(self._jsonl, [frame_record(result, info)], self._jsonl_path)
        return drawn

    def close(self) -> list[Path]:
        """Finish every file: the video and JSON-lines files, then `predictions.json` (atomically, from
        the records of every image processed; the lines file is removed once the array is in place)."""
        try:
            self._end_sequence()
        finally:
            if self._pred_lines is not None:
                lines, self._pred_lines = self._pred_lines, None
                _close_file(lines)
                path = self._path("predictions.json")
                write_bytes_atomic(path, json.dumps(self.records).encode())
                if self._pred_lines_path is not None:
                    with contextlib.suppress(OSError):
                        self._pred_lines_path.unlink()
                    self.written.remove(self._pred_lines_path)
                    self._pred_lines_path = None
        return list(self.written)


def _close_file(f: TextIO) -> None:
    try:
        f.close()
    except OSError as e:
        raise OutputError(f"{f.name}: cannot write ({e.strerror or e})") from None


def frame_record(result: PoseResult, info: SourceInfo | None = None) -> dict[str, Any]:
    """The JSON-lines record of one video frame."""
    ts = None if result.timestamp is None else round(float(result.timestamp), 6)
    rec: dict[str, Any] = {"source": info.name if info else result.path, "frame_index": result.frame_index,
                           "timestamp": ts}
    d = result.to_dict()
    rec["image_shape"] = d["image_shape"]
    rec["detections"] = d["detections"]
    return rec
