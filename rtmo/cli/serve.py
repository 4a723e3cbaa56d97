"""`rtmo serve`: parser and runner (FastAPI / uvicorn are imported only when it runs, from rtmo.serve)."""

from __future__ import annotations

import argparse
import signal
import socket
import sys
from typing import Any


def add_serve(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("serve", help="HTTP / WebSocket API and web page (batches concurrent requests)",
                       description="Serve a model over HTTP: GET / (web page), GET /health, GET /docs, "
                                   "POST /predict (JSON), POST /predict/image (drawn JPEG), WebSocket /ws "
                                   "(frames in, poses out; ?track=1&smooth=1). "
                                   "Needs `pip install rtmo[serve]`.")
    p.add_argument("--model", "-m", default="rtmo-s-coco", help="registry name (see `rtmo models`) or path "
                   "to a checkpoint or exported model (.onnx, .xml, .engine) (default: %(default)s)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on; 0.0.0.0 exposes the server to "
                   "the network (default: %(default)s)")
    p.add_argument("--port", type=int, default=8000, help="port; 0 picks a free one (default: %(default)s)")
    p.add_argument("--device", default=None, help="torch device, e.g. cpu, cuda, cuda:1 (default: CUDA if "
                   "available, else CPU)")
    p.add_argument("--max-batch", type=int, default=8, help="most images in one forward pass; 1 turns "
                   "batching off (default: %(default)s)")
    p.add_argument("--batch-timeout-ms", type=float, default=10.0, help="longest a request waits for others "
                   "to share its forward pass (default: %(default)s)")
    p.add_argument("--max-upload-mb", type=float, default=20.0, help="largest accepted image or frame "
                   "(default: %(default)s)")
    p.add_argument("--max-megapixels", type=float, default=100.0, help="largest accepted image size, read "
                   "from its header before decoding (default: %(default)s)")
    p.add_argument("--threshold", type=float, default=None, help="default person score threshold "
                   "(default: the model's)")
    p.add_argument("--nms-threshold", type=float, default=None, help="default NMS IoU threshold "
                   "(default: the model's)")
    p.add_argument("--max-queue", type=int, default=256, help="requests waiting beyond this get 503 "
                   "(default: %(default)s)")
    p.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    p.set_defaults(func=run_serve)
    return p


def _check(args: argparse.Namespace) -> None:
    if args.max_batch < 1:
        raise ValueError(f"--max-batch must be >= 1, got {args.max_batch}")
    if args.max_queue < 1:
        raise ValueError(f"--max-queue must be >= 1, got {args.max_queue}")
    if args.batch_timeout_ms < 0:
        raise ValueError(f"--batch-timeout-ms must be >= 0, got {args.batch_timeout_ms}")
    for name in ("max_upload_mb", "max_megapixels"):
        if getattr(args, name) <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be between 0 and 65535, got {args.port}")
    for name in ("threshold", "nms_threshold"):
        v = getattr(args, name)
        if v is not None and not 0.0 <= v <= 1.0:
            raise ValueError(f"--{name.replace('_', '-')} must be between 0 and 1, got {v}")


def _listen(host: str, port: int) -> socket.socket:
    """Bind before loading the model: a busy port fails in a second, with a clear message."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise ValueError(f"--host {host}: cannot resolve ({e.strerror})") from None
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
        sock.listen(2048)  # connections queue from now on, while the model loads
    except OSError as e:
        sock.close()
        raise ValueError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    return sock


def run_serve(args: argparse.Namespace) -> int:
    _check(args)
    try:
        import uvicorn

        from ..serve.app import create_app
    except ImportError as e:
        raise ValueError(f"rtmo serve needs the serve extra: pip install 'rtmo[serve]' ({e})") from None
    from ..hub.zoo import ModelManager
    from ..utils.device import resolve_device

    device = resolve_device(args.device)  # a missing GPU is one clear line, before anything else
    sock = _listen(args.host, args.port)
    try:
        model = ModelManager.get(args.model, device=device)
        app = create_app(model, max_batch=args.max_batch, batch_timeout_ms=args.batch_timeout_ms,
                         max_upload_mb=args.max_upload_mb, threshold=args.threshold,
                         nms_threshold=args.nms_threshold, max_queue=args.max_queue,
                         max_megapixels=args.max_megapixels)
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        w, h = model.input_size
        print(f"rtmo serve: {getattr(model, 'checkpoint_info', {}).get('name', args.model)} ({w}x{h}), "
              f"max batch {args.max_batch}, on http://{shown}:{port}  (page: /, API docs: /docs)", flush=True)
        # in-flight requests get 30 s to finish after SIGTERM / Ctrl-C; a frame may be as large as an upload
        config = uvicorn.Config(app, log_level=args.log_level, timeout_graceful_shutdown=30,
                                ws_max_size=int(args.max_upload_mb * 2**20) + 4096)
        # uvicorn re-raises the SIGTERM it handled once it has shut down gracefully; with this no-op handler
        # in place that ends `run` normally, so a stop by SIGTERM exits 0 after "stopped"
        previous = signal.signal(signal.SIGTERM, lambda *_: None)
        try:
            uvicorn.Server(config).run(sockets=[sock])
        finally:
            signal.signal(signal.SIGTERM, previous)
    finally:
        sock.close()
    print("rtmo serve: stopped", file=sys.stderr, flush=True)
    return 0
