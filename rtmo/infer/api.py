"""`infer` on images: load -> letterbox -> batched forward -> back to image pixels.

numpy and OpenCV only: the same code serves the PyTorch model and the exported runtimes, and the latter
must run where torch is not installed."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..ops.checks import check_fraction
from ..ops.letterbox import letterbox, to_image_coords
from .image import load_image
from .results import PoseResult


def preprocess(images: list[np.ndarray], input_size: tuple[int, int]
               ) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
    """BGR uint8 images -> float32 (B,3,H,W) 0..255 numpy batch and per-image (centre, scale).

    Every model's `predict_tensor` takes this array (the PyTorch model moves it to its device)."""
    canvases, metas = [], []
    for img in images:
        canvas, center, scale = letterbox(img, input_size)
        canvases.append(canvas)
        metas.append((center, scale))
    # Contiguous NCHW: a channels-last view would route convolutions through other kernels (other bits).
    batch = np.ascontiguousarray(np.stack(canvases).transpose(0, 3, 1, 2), dtype=np.float32)
    return batch, metas


def _array(x: Any) -> np.ndarray:
    """A model output (torch tensor on any device, or numpy array) as a numpy array."""
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


def postprocess(out: dict[str, list[Any]], metas: list[tuple[np.ndarray, np.ndarray]],
                shapes: list[tuple[int, int]], input_size: tuple[int, int], model: Any,
                paths: list[str | None] | None = None) -> list[PoseResult]:
    results = []
    for b, (center, scale) in enumerate(metas):
        boxes = _array(out["pred_bboxes"][b])
        kpts = _array(out["pred_keypoints"][b])
        boxes = to_image_coords(boxes.reshape(-1, 2, 2), center, scale, input_size).reshape(-1, 4)
        kpts = to_image_coords(kpts, center, scale, input_size)
        results.append(PoseResult(
            boxes=boxes, scores=_array(out["scores"][b]),
            class_ids=_array(out["labels"][b]).astype(np.int64), keypoints=kpts,
            keypoint_scores=_array(out["keypoint_scores"][b]), image_shape=shapes[b],
            keypoint_info=model.keypoint_info, class_names=model.class_names,
            path=None if paths is None else paths[b],
        ))
    return results


def infer_arrays(model: Any, images: list[np.ndarray], threshold: float | None = None,
                 nms_threshold: float | None = None, paths: list[str | None] | None = None
                 ) -> list[PoseResult]:
    """Batched inference on already-decoded BGR uint8 images."""
    threshold = check_fraction(threshold, "threshold")
    nms_threshold = check_fraction(nms_threshold, "nms_threshold")
    if not images:
        return []
    input_size = tuple(model.input_size)
    batch, metas = preprocess(images, input_size)
    out = model.predict_tensor(batch, threshold, nms_threshold)
    return postprocess(out, metas, [im.shape[:2] for im in images], input_size, model, paths)


def infer(model: Any, image: Any, threshold: float | None = None, nms_threshold: float | None = None
          ) -> PoseResult | list[PoseResult]:
    check_fraction(threshold, "threshold")  # before decoding anything
    check_fraction(nms_threshold, "nms_threshold")
    single = not isinstance(image, (list, tuple))
    items = [image] if single else list(image)
    loaded = [load_image(x) for x in items]
    results = infer_arrays(model, [a for a, _ in loaded], threshold, nms_threshold, [p for _, p in loaded])
    for r, (array, _) in zip(results, loaded):  # the decoded source, for result.plot() / .save()
        r.image = array
    return results[0] if single else results

