"""`infer` on images: load -> letterbox -> batched forward -> back to image pixels.

numpy and OpenCV only: the same code serves the PyTorch model and the exported runtimes, and the latter
must run where torch is not installed."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ..ops.checks import check_fraction
from ..ops.letterbox import letterbox, to_image_coords
from ..outputs import KeypointOutput
from .image import load_image
from .results import PoseResult

if TYPE_CHECKING:
    from .backend import PoseBackend


def preprocess(images: list[np.ndarray], input_size: tuple[int, int]
               ) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
    """BGR uint8 images -> float32 (B,3,H,W) 0..255 numpy batch and per-image (centre, scale).

    Every model's `predict_batch` takes this array (the PyTorch model moves it to its device)."""
    canvases, metas = [], []
    for img in images:
        canvas, center, scale = letterbox(img, input_size)
        canvases.append(canvas)
        metas.append((center, scale))
    # Contiguous NCHW: a channels-last view would route convolutions through other kernels (other bits).
    batch = np.ascontiguousarray(np.stack(canvases).transpose(0, 3, 1, 2), dtype=np.float32)
    return batch, metas


def postprocess(out: KeypointOutput, metas: list[tuple[np.ndarray, np.ndarray]],
                shapes: list[tuple[int, int]], input_size: tuple[int, int], model: PoseBackend,
                paths: list[str | None] | None = None) -> list[PoseResult]:
    """A batch's `KeypointOutput` (network-input pixels) -> one `PoseResult` per image, in image pixels."""
    results = []
    for b, ((center, scale), det) in enumerate(zip(metas, out.numpy().per_image())):
        boxes = to_image_coords(det["pred_bboxes"].reshape(-1, 2, 2), center, scale, input_size)
        boxes = boxes.reshape(-1, 4)
        kpts = to_image_coords(det["pred_keypoints"], center, scale, input_size)
        results.append(PoseResult(
            boxes=boxes, scores=det["scores"], class_ids=det["labels"].astype(np.int64), keypoints=kpts,
            keypoint_scores=det["keypoint_scores"], image_shape=shapes[b],
            keypoint_info=model.keypoint_info, class_names=model.class_names,
            path=None if paths is None else paths[b],
        ))
    return results


def infer_arrays(model: PoseBackend, images: list[np.ndarray], threshold: float | None = None,
                 nms_threshold: float | None = None, paths: list[str | None] | None = None
                 ) -> list[PoseResult]:
    """Batched inference on already-decoded BGR uint8 images."""
    threshold = check_fraction(threshold, "threshold")
    nms_threshold = check_fraction(nms_threshold, "nms_threshold")
    if not images:
        return []
    input_size = tuple(model.input_size)
    batch, metas = preprocess(images, input_size)
    out = model.predict_batch(batch, threshold, nms_threshold)
    return postprocess(out, metas, [im.shape[:2] for im in images], input_size, model, paths)


def infer(model: PoseBackend, image: Any, threshold: float | None = None, nms_threshold: float | None = None
          ) -> PoseResult | list[PoseResult]:
    """Poses in one image (path, URL, BGR ndarray or PIL image) or a list of them: `model.infer`."""
    check_fraction(threshold, "threshold")  # before decoding anything
    check_fraction(nms_threshold, "nms_threshold")
    single = not isinstance(image, (list, tuple))
    items = [image] if single else list(image)
    loaded = [load_image(x) for x in items]
    results = infer_arrays(model, [a for a, _ in loaded], threshold, nms_threshold, [p for _, p in loaded])
    for r, (array, _) in zip(results, loaded):  # the decoded source, for result.plot() / .save()
        r.image = array
    return results[0] if single else results

