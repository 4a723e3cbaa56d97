"""`rtmo serve`: an HTTP + WebSocket API and a web page for pose estimation, batching concurrent requests.

Built on FastAPI + uvicorn rather than LitServe. LitServe's built-in batching is its main draw, but it
batches inside its own worker processes (one model copy per worker, requests passed between processes),
wants its own request/response schema, and has no WebSocket streams; the per-connection tracking and
smoothing of `/ws`, streaming upload limits (413 before the body is buffered), static files for the web
page and an OpenAPI page all come with FastAPI/Starlette directly. The batcher itself is small
(`batching.py`: one worker thread, a bounded queue, `max_batch` / timeout), works with any backend
(torch, ONNX Runtime, OpenVINO, TensorRT) and keeps one model in one process.

Nothing here imports FastAPI at import time: `rtmo --help` works without the `serve` extra.
"""

from __future__ import annotations

from typing import Any

__all__ = ["create_app", "DynamicBatcher"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from .app import create_app

        return create_app
    if name == "DynamicBatcher":
        from .batching import DynamicBatcher

        return DynamicBatcher
    raise AttributeError(name)
