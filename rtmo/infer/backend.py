"""What a model is to the inference code: the `PoseBackend` protocol, which the PyTorch `RTMO` and every
exported runtime (ONNX Runtime, OpenVINO, TensorRT) implement, and `PoseAPI`, the one implementation of
`infer` / `predict` written against it (both inherit it).

numpy only (no torch): exported runtimes use it where torch is not installed."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..config import KeypointInfo
from ..ops.checks import check_fraction
from ..outputs import KeypointOutput
from .api import infer
from .results import PoseResult
from .sources import stream_results


@runtime_checkable
class PoseBackend(Protocol):
    """A pose model as `rtmo.infer` uses it. `ModelManager.get` returns one for every supported file."""

    @property
    def input_size(self) -> tuple[int, int]:
        """The network input (width, height); images are letterboxed to it."""
        ...

    @property
    def keypoint_info(self) -> KeypointInfo:
        ...

    @property
    def class_names(self) -> tuple[str, ...]:
        ...

    def predict_batch(self, batch: np.ndarray, threshold: float | None = None,
                      nms_threshold: float | None = None) -> KeypointOutput:
        """Detections of a float32 (B, 3, H, W) BGR 0..255 letterboxed batch (`rtmo.infer.api.preprocess`)
        in network-input pixels, boxes clamped to the canvas. Thresholds in [0, 1]; None: the model's."""
        ...

    def infer(self, image: Any, threshold: float | None = None, nms_threshold: float | None = None
              ) -> PoseResult | list[PoseResult]:
        ...

    def predict(self, source: Any, stream: bool = False, **kwargs: Any
                ) -> Iterator[PoseResult] | list[PoseResult]:
        ...


class PoseAPI:
    """`infer` and `predict` for any `PoseBackend` (mixed into `RTMO` and `ExportedModel`)."""

    def check_thresholds(self, threshold: float | None, nms_threshold: float | None) -> None:
        """Raise ValueError for thresholds this model cannot apply, before any image is decoded."""
        check_fraction(threshold, "threshold")
        check_fraction(nms_threshold, "nms_threshold")

    def infer(self, image: Any, threshold: float | None = None, nms_threshold: float | None = None
              ) -> PoseResult | list[PoseResult]:
        """Poses in one image (path, URL, BGR ndarray or PIL image) or a list of them (one batched
        forward). Returns a `PoseResult` for one image, a list of them for a list."""
        self.check_thresholds(threshold, nms_threshold)
        return infer(self, image, threshold, nms_threshold)

    def predict(self, source: Any, stream: bool = False, **kwargs: Any
                ) -> Iterator[PoseResult] | list[PoseResult]:
        """Results for any source (image, folder, glob, video, camera index, URL, list file); keyword
        arguments as `rtmo.infer.sources.stream_results`. `stream=True` gives a lazy iterator."""
        gen = stream_results(self, source, **kwargs)
        return gen if stream else list(gen)
