"""Write prediction outputs: drawn images / videos, one COCO results JSON per image set, JSON lines per video.

Nothing existing is ever overwritten (inputs included): a name already taken gets `_1`, `_2`, ... appended.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import cv2
import numpy as np

from .draw import draw_result
from .results import PoseResult
from .sources import SourceInfo


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


def _safe_stem(name: str) -> str:
    """A file stem for a source name: the file stem, or the URL / camera name with odd characters replaced."""
    stem = Path(name).stem if not re.match(r"^[a-z]+://", name) else name.split("://", 1)[1]
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._") or "stream"


class ImageIds:
    """COCO `image_id` for an image: from the annotation file's `file_name` when one is given, else the file
    stem when it is a number (COCO names files by id), else the running index of the image in the set."""

    def __init__(self, ann_file: str | os.PathLike | None = None) -> None:
        self.by_name: dict[str, int] = {}
        if ann_file is not None:
            try:
                data = json.loads(Path(ann_file).read_text())
                self.by_name = {Path(im["file_name"]).name: int(im["id"]) for im in data["images"]}
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise ValueError(f"{ann_file}: not a COCO annotation file with images/file_name/id ({e})"
                                 ) from None

    def __call__(self, path: str | None, index: int) -> int:
        name = Path(path).name if path else None
        if self.by_name:
            if name not in self.by_name:
                raise ValueError(f"{path or f'image {index}'}: not listed in the annotation file's images")
            return self.by_name[name]
        stem = Path(path).stem if path else ""
        return int(stem) if stem.isdigit() else index


def coco_records(result: PoseResult, image_id: int, category_id: int = 1) -> list[dict]:
    """COCO keypoint results (flat x, y, score triples; box xywh) for one image — `COCO.loadRes` format."""
    from ..evaluate import pose_result_to_coco  # one definition of the record format, shared with `val`

    return pose_result_to_coco(result, image_id, category_id)


class VideoSink:
    """An mp4v video file at the source's fps and frame size, opened on the first frame."""

    def __init__(self, path: Path, fps: float, size: tuple[int, int]) -> None:
        self.path, self.fps, self.size = path, fps, size
        self.writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
        if not self.writer.isOpened():
            raise OSError(f"{path}: cannot open a video writer (mp4v, {size[0]}x{size[1]} @ {fps:g} fps)")
        self.frames = 0

    def write(self, frame: np.ndarray) -> None:
        if (frame.shape[1], frame.shape[0]) != self.size:  # a stream that changed resolution mid-way
            frame = cv2.resize(frame, self.size)
        self.writer.write(frame)
        self.frames += 1

    def close(self) -> None:
        self.writer.release()


class PredictionWriter:
    """Everything `rtmo predict` writes into `out_dir`, fed one `PoseResult` at a time (from
    `stream_results(..., keep_images=save)`); `close()` finishes the files and returns their paths.

    - `save`: drawn images `<stem>.<ext>`, drawn videos `<stem>.mp4` (source fps and size, mp4v);
    - `save_json`: `predictions.json` (COCO results) for the images, `<stem>.jsonl` for each video/stream,
      one record per frame: source, frame_index, timestamp, image_shape, detections (with track_id).
    """

    def __init__(self, out_dir: str | os.PathLike, save: bool = False, save_json: bool = False,
                 kpt_threshold: float = 0.3, ann_file: str | os.PathLike | None = None,
                 inputs: Sequence[str | os.PathLike] = ()) -> None:
        self.out_dir = Path(out_dir)
        self.save, self.save_json, self.kpt_threshold = save, save_json, kpt_threshold
        self.image_ids = ImageIds(ann_file)
        self.taken: set[Path] = {Path(p).resolve() for p in inputs}
        self.records: list[dict] = []
        self.n_images = 0
        self.written: list[Path] = []
        self._group: int | None = None
        self._video: VideoSink | None = None
        self._jsonl: TextIO | None = None
        if save or save_json:
            self.out_dir.mkdir(parents=True, exist_ok=True)

    def _path(self, name: str) -> Path:
        p = unique_path(self.out_dir / name, self.taken)
        self.written.append(p)
        return p

    def _end_sequence(self) -> None:
        if self._video is not None:
            self._video.close()
            self._video = None
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None

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
            self.n_images += 1
            if self.save:
                name = result.path or info.name
                ext = Path(name).suffix.lower()
                ext = ext if ext in (".jpg", ".jpeg", ".png", ".bmp") else ".jpg"
                cv2.imwrite(str(self._path(_safe_stem(name) + ext)), drawn)
            if self.save_json:
                self.records.extend(coco_records(result, self.image_ids(result.path, info.index)))
        else:
            stem = _safe_stem(info.name)
            if self.save:
                if self._video is None:
                    h, w = drawn.shape[:2]
                    self._video = VideoSink(self._path(stem + ".mp4"), info.fps or 30.0, (w, h))
                self._video.write(drawn)
            if self.save_json:
                if self._jsonl is None:
                    self._jsonl = self._path(stem + ".jsonl").open("w")
                self._jsonl.write(json.dumps(frame_record(result, info)) + "\n")
                self._jsonl.flush()  # a live stream may be stopped at any time: keep every line written
        return drawn

    def close(self) -> list[Path]:
        self._end_sequence()
        if self.save_json and self.n_images:
            path = self._path("predictions.json")
            path.write_text(json.dumps(self.records))
        return list(self.written)


def frame_record(result: PoseResult, info: SourceInfo | None = None) -> dict[str, Any]:
    """The JSON-lines record of one video frame."""
    ts = None if result.timestamp is None else round(float(result.timestamp), 6)
    rec: dict[str, Any] = {"source": info.name if info else result.path, "frame_index": result.frame_index,
                           "timestamp": ts}
    d = result.to_dict()
    rec["image_shape"] = d["image_shape"]
    rec["detections"] = d["detections"]
    return rec
