"""The FastAPI app of `rtmo serve`: HTTP endpoints, the WebSocket stream and the web page.

Every request decodes its image (in a thread pool), hands it to the one `DynamicBatcher`, and awaits the
result, so concurrent requests share forward passes. Bad input is answered with a JSON `{"detail": reason}`
and the right status (400 unreadable / empty / disconnected, 413 too large, 415 wrong content type, 422 bad
parameter, 503 queue full); nothing a client sends can stop the worker.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from fastapi import FastAPI, HTTPException, Query, Request, WebSocket, WebSocketDisconnect
from fastapi.concurrency import run_in_threadpool
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException
from starlette.requests import ClientDisconnect

from ..infer.draw import draw_result
from ..infer.image import ImageError
from ..infer.results import PoseResult
from ..infer.smooth import PoseSmoother
from ..infer.track import Tracker
from .batching import BatcherClosed, DynamicBatcher, Overloaded
from .decode import ACCEPTED_TYPES, decode_image

STATIC_DIR = Path(__file__).with_name("static")
MULTIPART_SLACK = 64 * 1024  # form boundaries and part headers around the file itself
log = logging.getLogger("rtmo.serve")

_IMAGE_BODY = {  # the OpenAPI description of the upload (the endpoints read the body themselves)
    "required": True,
    "content": {
        "multipart/form-data": {"schema": {"type": "object", "required": ["file"],
                                           "properties": {"file": {"type": "string", "format": "binary"}}}},
        **{t: {"schema": {"type": "string", "format": "binary"}} for t in ACCEPTED_TYPES},
    },
}
_THRESHOLD = Query(None, ge=0.0, le=1.0, description="person score threshold (default: the server's)")
_NMS = Query(None, ge=0.0, le=1.0, description="NMS IoU threshold (default: the server's)")


def model_description(model: Any, name: str | None = None) -> dict[str, Any]:
    """What /health says about the model; works for torch models and exported runtimes alike."""
    info = model.keypoint_info
    backend = getattr(model, "backend", None)
    if backend is None:
        import torch

        backend = "torch" if isinstance(model, torch.nn.Module) else type(model).__name__
    device = getattr(model, "device", None)
    return {
        "model": name or getattr(model, "checkpoint_info", {}).get("name") or type(model).__name__,
        "input_size": list(model.input_size), "backend": str(backend),
        "device": None if device is None else str(device),
        "keypoints": {"dataset": info.name, "names": list(info.names),
                      "skeleton": [list(e) for e in info.skeleton],
                      "sides": [info.side(i) for i in range(info.num_keypoints)]},
    }


def _http_error(e: Exception) -> HTTPException:
    if isinstance(e, ImageError):
        return HTTPException(400, str(e))
    if isinstance(e, (Overloaded, BatcherClosed)):
        return HTTPException(503, str(e))
    log.exception("inference failed")
    return HTTPException(500, f"internal error: {type(e).__name__}: {e}")


async def _read_body(request: Request, limit: int, what: str, slack: int = 0) -> bytes:
    """The request body, refusing (413) as soon as it exceeds `limit` (+ `slack`) bytes rather than after
    buffering it."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit + slack:
        raise HTTPException(413, f"{what} is {_mib(int(declared))}; the limit is {_mib(limit)} "
                                 "(rtmo serve --max-upload-mb)")
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit + slack:
                raise HTTPException(413, f"{what} exceeds the limit of {_mib(limit)} "
                                         "(rtmo serve --max-upload-mb)")
            chunks.append(chunk)
    except ClientDisconnect:
        log.info("client disconnected during the upload (%d bytes received)", size)
        raise HTTPException(400, f"client disconnected during the upload ({size} bytes received)") from None
    return b"".join(chunks)


def _mib(n: float) -> str:
    return f"{n / 2**20:.3g} MiB"


def _content_type(value: str | None) -> str:
    return (value or "").split(";")[0].strip().lower()


async def read_upload(request: Request, limit: int) -> tuple[bytes, str, dict[str, str]]:
    """(image bytes, a name for messages, form fields) from a multipart `file` field or the raw body."""
    ctype = _content_type(request.headers.get("content-type"))
    if ctype == "multipart/form-data":
        body = await _read_body(request, limit, "the upload", MULTIPART_SLACK)

        async def replay() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            form = await Request(request.scope, replay).form(max_files=1, max_fields=16)
        except MultiPartException as e:
            raise HTTPException(400, f"malformed multipart upload: {e.message}") from None
        part = form.get("file")
        if not isinstance(part, UploadFile):
            raise HTTPException(400, "multipart upload without a `file` field "
                                     "(send the image as file=@photo.jpg)")
        name = part.filename or "file"
        ptype = _content_type(part.content_type)
        if ptype and ptype not in (*ACCEPTED_TYPES, "application/octet-stream"):
            raise HTTPException(415, f"{name}: content type {ptype!r} is not JPEG, PNG or WebP")
        data = await part.read()
        fields = {k: v for k, v in form.items() if isinstance(v, str)}
        await form.close()  # spooled temporary files
        if len(data) > limit:
            raise HTTPException(413, f"{name} is {_mib(len(data))}; the limit is {_mib(limit)} "
                                     "(rtmo serve --max-upload-mb)")
        return data, name, fields
    if ctype and ctype not in (*ACCEPTED_TYPES, "application/octet-stream"):
        raise HTTPException(415, f"content type {ctype!r} is not accepted: send a JPEG, PNG or WebP image as "
                                 "multipart field `file`, or as the raw body with Content-Type "
                                 "image/jpeg, image/png or image/webp (curl --data-binary needs "
                                 "-H 'Content-Type: image/jpeg')")
    return await _read_body(request, limit, "the body"), "request body", {}


def _param(query: float | None, fields: dict[str, str], key: str, default: float | None) -> float | None:
    """A threshold from the query string, else from a multipart form field, else the server default."""
    if query is not None:
        return query
    if key in fields:
        try:
            v = float(fields[key])
        except ValueError:
            v = -1.0
        if not 0.0 <= v <= 1.0:
            raise HTTPException(422, f"form field {key}={fields[key]!r}: expected a number between 0 and 1")
        return v
    return default


def create_app(model: Any, *, model_name: str | None = None, max_batch: int = 8,
               batch_timeout_ms: float = 10.0, max_upload_mb: float = 20.0, threshold: float | None = None,
               nms_threshold: float | None = None, max_queue: int = 256, max_megapixels: float = 100.0
               ) -> FastAPI:
    """The app serving `model` (anything `infer_arrays` accepts). The batcher starts with the app's lifespan:
    use `with TestClient(app)` in tests."""
    if max_upload_mb <= 0:
        raise ValueError(f"max_upload_mb must be positive, got {max_upload_mb}")
    limit = int(max_upload_mb * 2**20)
    max_pixels = int(max_megapixels * 1e6)
    default_thr, default_nms = threshold, nms_threshold  # the endpoints' own parameters shadow these names
    description = model_description(model, model_name)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.batcher = DynamicBatcher(model, max_batch, batch_timeout_ms, max_queue)
        app.state.started = time.time()
        try:
            yield
        finally:  # uvicorn gets here after in-flight requests have finished; queued work is still served
            await run_in_threadpool(app.state.batcher.close)

    app = FastAPI(title="rtmo serve", version="1", lifespan=lifespan, docs_url=None, redoc_url=None,
                  description=f"RTMO multi-person pose estimation with {description['model']}. "
                              "The web page is at `/`.")
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    async def run_model(image: np.ndarray, thr: float | None, nms_thr: float | None) -> PoseResult:
        try:
            return await asyncio.wrap_future(app.state.batcher.submit(image, thr, nms_thr))
        except Exception as e:  # noqa: BLE001 - mapped to a status code
            raise _http_error(e) from None

    async def predict_upload(request: Request, thr: float | None, nms_thr: float | None
                             ) -> tuple[np.ndarray, PoseResult, dict[str, float]]:
        t0 = time.perf_counter()
        data, name, fields = await read_upload(request, limit)
        thr = _param(thr, fields, "threshold", default_thr)
        nms_thr = _param(nms_thr, fields, "nms_threshold", default_nms)
        try:
            image = await run_in_threadpool(decode_image, data, name, max_pixels)
        except ImageError as e:
            raise HTTPException(400, str(e)) from None
        t1 = time.perf_counter()
        result = await run_model(image, thr, nms_thr)
        t2 = time.perf_counter()
        # inference = waiting for a batch + the forward pass + post-processing
        return image, result, {"upload_decode": round((t1 - t0) * 1e3, 2),
                               "inference": round((t2 - t1) * 1e3, 2)}

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html")

    @app.get("/health", summary="server status, the model and batching statistics")
    async def health() -> dict[str, Any]:
        batcher: DynamicBatcher = app.state.batcher
        return {"status": "ok", **description, "max_upload_mb": max_upload_mb,
                "uptime_s": round(time.time() - app.state.started, 1), "batching": batcher.stats()}

    @app.post("/predict", summary="poses in one image, as JSON", openapi_extra={"requestBody": _IMAGE_BODY})
    async def predict(request: Request, threshold: float | None = _THRESHOLD,
                      nms_threshold: float | None = _NMS) -> dict[str, Any]:
        """The image as multipart field `file` or as the raw body. Returns the image size and
        `PoseResult.to_dict()`: `image_shape` [h, w] and `detections` (bbox xyxy, conf, cls_id, label,
        keypoints [[x, y, score], ...]) in image pixels."""
        image, result, timing = await predict_upload(request, threshold, nms_threshold)
        h, w = image.shape[:2]
        return {"model": description["model"], "width": w, "height": h, **result.to_dict(),
                "timing_ms": timing}

    @app.post("/predict/image", summary="the image with the poses drawn, as JPEG",
              openapi_extra={"requestBody": _IMAGE_BODY},
              responses={200: {"content": {"image/jpeg": {}}}}, response_class=Response)
    async def predict_image(request: Request, threshold: float | None = _THRESHOLD,
                            nms_threshold: float | None = _NMS,
                            kpt_threshold: float = Query(0.3, ge=0.0, le=1.0,
                                                         description="keypoint score needed to be drawn"),
                            ) -> Response:
        image, result, timing = await predict_upload(request, threshold, nms_threshold)

        def render() -> bytes:
            _, buf = cv2.imencode(".jpg", draw_result(image, result, kpt_threshold),
                                   [cv2.IMWRITE_JPEG_QUALITY, 90])
            return buf.tobytes()

        return Response(await run_in_threadpool(render), media_type="image/jpeg",
                        headers={"X-People": str(len(result)), "X-Inference-Ms": str(timing["inference"])})

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        if not _SWAGGER_DIR:
            return HTMLResponse("<!doctype html><title>rtmo serve API</title><p>Swagger UI's files are "
                                "not installed (<code>pip install 'rtmo[serve]'</code>); the OpenAPI schema "
                                "is at <a href='/openapi.json'>/openapi.json</a>.</p>")
        return get_swagger_ui_html(openapi_url=app.openapi_url, title="rtmo serve API",
                                   swagger_js_url="/docs-assets/swagger-ui-bundle.js",
                                   swagger_css_url="/docs-assets/swagger-ui.css",
                                   swagger_favicon_url="/docs-assets/favicon-32x32.png")

    if _SWAGGER_DIR:
        app.mount("/docs-assets", StaticFiles(directory=_SWAGGER_DIR), name="docs-assets")

    @app.websocket("/ws")
    async def ws(websocket: WebSocket, track: bool = False, smooth: bool = False,
                 threshold: float | None = Query(None, ge=0.0, le=1.0),
                 nms_threshold: float | None = Query(None, ge=0.0, le=1.0)) -> None:
        await websocket.accept()
        await PoseStream(websocket, run_model, limit, max_pixels, track or smooth, smooth,
                         default_thr if threshold is None else threshold,
                         default_nms if nms_threshold is None else nms_threshold).run()

    @app.exception_handler(Exception)
    async def unexpected(request: Request, e: Exception) -> JSONResponse:
        log.exception("unexpected error on %s", request.url.path)
        return JSONResponse({"detail": f"internal error: {type(e).__name__}: {e}"}, status_code=500)

    return app


def _swagger_dir() -> str | None:
    try:  # swagger-ui-bundle-v2 ships Swagger UI's files: /docs then works without a CDN
        import swagger_ui_bundle
    except ImportError:
        return None
    return str(swagger_ui_bundle.swagger_ui_path)


_SWAGGER_DIR = _swagger_dir()


class PoseStream:
    """One WebSocket connection: binary JPEG/PNG/WebP frames in, one JSON message per processed frame out.

    Frames are received as fast as the client sends them, but only the newest unprocessed one is kept: when a
    frame arrives while the previous one still waits, the older is dropped (counted in `dropped`), so memory
    and latency stay bounded whatever the client's rate. Each answer carries `frame_index` (the server's
    count of frames received on this connection, from 0), so the client can match answers to frames.
    """

    def __init__(self, websocket: WebSocket, run_model: Any, limit: int, max_pixels: int, track: bool,
                 smooth: bool, threshold: float | None, nms_threshold: float | None) -> None:
        self.ws, self.run_model, self.limit, self.max_pixels = websocket, run_model, limit, max_pixels
        self.tracker = Tracker() if track else None
        self.smoother = PoseSmoother() if smooth else None
        self.threshold, self.nms_threshold = threshold, nms_threshold
        self.pending: tuple[int, bytes, float] | None = None
        self.wake = asyncio.Event()
        self.received = self.dropped = 0
        self.t0 = time.perf_counter()
        self.done: deque[float] = deque(maxlen=30)  # completion times, for the fps shown to the client

    async def run(self) -> None:
        worker = asyncio.create_task(self._process())
        try:
            await self._receive()
        except WebSocketDisconnect:
            pass
        finally:
            worker.cancel()
            try:
                await worker
            except (asyncio.CancelledError, WebSocketDisconnect, RuntimeError):
                pass  # the client left while an answer was being sent

    async def _receive(self) -> None:
        while True:
            msg = await self.ws.receive()
            if msg["type"] == "websocket.disconnect":
                return
            data = msg.get("bytes")
            if data is None:
                await self._send({"error": "send each frame as a binary message (JPEG, PNG or WebP bytes)"})
                continue
            index = self.received
            self.received += 1
            if self.pending is not None:
                self.dropped += 1
            self.pending = (index, data, time.perf_counter())
            self.wake.set()

    async def _send(self, message: dict[str, Any]) -> None:
        await self.ws.send_json(message)

    async def _process(self) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            if self.pending is None:
                continue
            index, data, t_recv = self.pending
            self.pending = None
            msg: dict[str, Any] = {"frame_index": index}
            try:
                if len(data) > self.limit:
                    raise ImageError(f"frame {index}: {_mib(len(data))} exceeds the limit of "
                                     f"{_mib(self.limit)}")
                image = await run_in_threadpool(decode_image, data, f"frame {index}", self.max_pixels)
                result = await self.run_model(image, self.threshold, self.nms_threshold)
            except HTTPException as e:
                msg["error"] = e.detail
            except ImageError as e:
                msg["error"] = str(e)
            else:
                result.frame_index, result.timestamp = index, round(t_recv - self.t0, 6)
                if self.tracker is not None:
                    result = self.tracker.update(result)
                if self.smoother is not None:
                    result = self.smoother.update(result)
                h, w = image.shape[:2]
                msg.update({"width": w, "height": h, **result.to_dict()})
            now = time.perf_counter()
            self.done.append(now)
            span = self.done[-1] - self.done[0]
            msg.update({"latency_ms": round((now - t_recv) * 1e3, 2), "dropped": self.dropped,
                        "received": self.received,
                        "fps": round((len(self.done) - 1) / span, 2) if span > 0 else None})
            await self._send(msg)
            if self.pending is not None:  # a frame came in while this one ran
                self.wake.set()
