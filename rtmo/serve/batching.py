"""Dynamic batching: concurrent requests grouped into one forward pass, run by one worker thread.

Requests are queued; the worker takes the first one, then keeps collecting until it holds `max_batch`
images or `timeout_ms` has passed since that first one arrived, and runs them as one batch through
`infer_arrays` (letterbox every image to the model's input size, one forward pass, back to image pixels).
Only requests with the same thresholds can share a pass (`predict_batch` takes one threshold for the
batch), so a collected batch is split by (threshold, nms_threshold).

One thread owns the model: backends need not be thread-safe and a second thread would only compete for the
same cores. The queue is bounded: when it is full `submit` raises `Overloaded` at once (the HTTP layer
answers 503) instead of letting latency grow without bound.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import Counter
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..infer.api import infer_arrays
from ..infer.results import PoseResult


class Overloaded(RuntimeError):
    """The request queue is full."""


class BatcherClosed(RuntimeError):
    """The batcher is shutting down and takes no new requests."""


@dataclass
class _Job:
    image: np.ndarray
    threshold: float | None
    nms_threshold: float | None
    future: Future = field(default_factory=Future)
    queued: float = field(default_factory=time.perf_counter)


_STOP = object()


class DynamicBatcher:
    """`submit(image) -> Future[PoseResult]`, results identical (to float rounding) to `infer` one by one."""

    def __init__(self, model: Any, max_batch: int = 8, timeout_ms: float = 10.0, max_queue: int = 256
                 ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if timeout_ms < 0:
            raise ValueError(f"timeout_ms must be >= 0, got {timeout_ms}")
        self.model = model
        self.max_batch, self.timeout_s = max_batch, timeout_ms / 1000.0
        self._queue: queue.Queue = queue.Queue(maxsize=max_queue)
        self._closed = False
        self._lock = threading.Lock()
        self.batch_sizes: Counter[int] = Counter()  # forward passes by number of images
        self.images = 0
        self.pending = 0  # submitted, not answered yet (queued, being collected or running)
        self._thread = threading.Thread(target=self._run, name="rtmo-batcher", daemon=True)
        self._thread.start()

    # ---------------------------------------------------------------------- client side
    def submit(self, image: np.ndarray, threshold: float | None = None, nms_threshold: float | None = None
               ) -> Future:
        """Queue one BGR uint8 image; the future gets its `PoseResult` or the exception inference raised."""
        job = _Job(image, threshold, nms_threshold)
        with self._lock:  # no job may slip in behind the stop marker
            if self._closed:
                raise BatcherClosed("the server is shutting down")
            try:
                self._queue.put_nowait(job)
            except queue.Full:
                raise Overloaded(f"server busy: {self._queue.maxsize} requests already queued") from None
            self.pending += 1
        job.future.add_done_callback(self._done)
        return job.future

    def _done(self, _: Future) -> None:
        with self._lock:
            self.pending -= 1

    def close(self, wait: bool = True) -> None:
        """Take no new requests; the worker finishes everything already queued, then stops."""
        with self._lock:  # after this no submit gets in: every job queued so far precedes the stop marker
            if self._closed:
                return
            self._closed = True
        self._queue.put(_STOP)  # blocks while full (outside the lock: finishing jobs take it, see _done)
        if wait:
            self._thread.join()

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    def stats(self) -> dict[str, Any]:
        passes = sum(self.batch_sizes.values())
        return {"max_batch": self.max_batch, "batch_timeout_ms": self.timeout_s * 1000.0,
                "queued": self.queued, "pending": self.pending, "images": self.images,
                "forward_passes": passes,
                "mean_batch": round(self.images / passes, 3) if passes else 0.0,
                "batch_sizes": {str(k): v for k, v in sorted(self.batch_sizes.items())}}

    # ---------------------------------------------------------------------- worker side
    def _collect(self, first: _Job) -> tuple[list[_Job], bool]:
        jobs, stop = [first], False
        deadline = first.queued + self.timeout_s
        while len(jobs) < self.max_batch:
            try:
                remaining = deadline - time.perf_counter()
                job = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if job is _STOP:
                stop = True
                break
            jobs.append(job)
        return jobs, stop

    def _run(self) -> None:
        stop = False
        while not stop:
            first = self._queue.get()
            if first is _STOP:
                break
            jobs, stop = self._collect(first)
            groups: dict[tuple, list[_Job]] = {}
            for job in jobs:
                if job.future.set_running_or_notify_cancel():  # a cancelled request costs nothing
                    groups.setdefault((job.threshold, job.nms_threshold), []).append(job)
            for (thr, nms_thr), group in groups.items():
                self._infer(group, thr, nms_thr)

    def _infer(self, jobs: list[_Job], threshold: float | None, nms_threshold: float | None) -> None:
        try:
            results: list[PoseResult] = infer_arrays(self.model, [j.image for j in jobs], threshold,
                                                     nms_threshold)
        except Exception as e:  # noqa: BLE001 - one bad batch must not kill the worker
            if len(jobs) > 1:  # find the culprit: the others still get their results
                for j in jobs:
                    self._infer([j], threshold, nms_threshold)
                return
            jobs[0].future.set_exception(e)
            return
        self.batch_sizes[len(jobs)] += 1
        self.images += len(jobs)
        for j, r in zip(jobs, results):
            j.future.set_result(r)
