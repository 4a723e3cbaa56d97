"""`rtmo predict SOURCE`: poses in images, folders, globs, videos, cameras, streams; drawn and/or JSON."""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .common import (
    CLIError,
    add_device_option,
    add_model_option,
    add_output_option,
    add_threshold_options,
    check_positive,
    check_range,
    resolve_device_arg,
)

PREDICT_FILES = ("with --save: drawn images <stem>.<ext> and videos <stem>.mp4; with --save-json: "
                 "predictions.json (COCO results of the images) and <stem>.jsonl (one JSON record per video "
                 "frame); existing files are never overwritten (name_1.ext, ...)")


def add_predict(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("predict", help="poses in images, folders, globs, videos, cameras, streams",
                       description="Run RTMO on SOURCE: an image, a folder, a glob ('imgs/*.jpg'), a video, "
                                   "a camera index (0), an RTSP/HTTP URL, or a .txt file listing paths.")
    p.add_argument("source", help="image / folder / glob / video / camera index / URL / .txt list")
    add_model_option(p)
    add_output_option(p, "runs/predict", PREDICT_FILES)
    p.add_argument("--save", action="store_true", help="write drawn images / videos")
    p.add_argument("--save-json", action="store_true", help="write COCO results JSON for images, "
                   "JSON lines (one record per frame) for videos")
    p.add_argument("--ann", default=None, help="COCO annotation file giving image ids for --save-json")
    p.add_argument("--track", action="store_true", help="give people stable ids across video frames")
    p.add_argument("--smooth", action="store_true", help="One-Euro smoothing of tracked keypoints (implies "
                   "--track)")
    p.add_argument("--batch-size", type=int, default=1, help="images per forward pass (default: %(default)s)")
    add_threshold_options(p, " (from the results and the JSON)")
    add_draw_threshold_option(p)
    add_device_option(p)
    p.add_argument("--vid-stride", type=int, default=1, help="use every n-th video frame")
    p.add_argument("--max-frames", type=int, default=None, help="stop each video / stream after n frames")
    p.add_argument("--show", action="store_true", help="show results in a window (needs a display)")
    p.add_argument("--backend", default=None, choices=("torch", "onnxruntime", "openvino", "tensorrt"),
                   help="runtime for an exported file (default: from its suffix: .onnx onnxruntime, .xml "
                        "openvino, .engine tensorrt); checkpoints run on torch")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"),
                   help="fp32 (bit-exact with mmpose), bf16 (CPUs with AVX512-BF16/AMX, GPUs) or fp16 "
                        "(CUDA); for exported files: the runtime's precision (default: %(default)s)")
    p.add_argument("--fast", action="store_true",
                   help="checkpoints: fused BatchNorm/RepVGG, channels-last float32, reassociated DCC "
                        "(faster, float rounding instead of bit-exact); exported graphs already run this way")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar or summary")
    p.set_defaults(func=run_predict)
    return p


def add_draw_threshold_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--draw-threshold", type=float, default=0.3,
                   help="score a person and a keypoint need to be drawn (default: %(default)s, what mmpose's "
                        "inferencer draws); results and JSON keep everyone above --threshold")
    # The earlier name of the same setting; kept working, not advertised.
    p.add_argument("--kpt-threshold", dest="draw_threshold", type=float, default=argparse.SUPPRESS,
                   help=argparse.SUPPRESS)


def _check_predict_args(args: argparse.Namespace) -> None:
    check_positive(args, ("batch_size", "vid_stride", "max_frames"))
    check_range(args, ("threshold", "nms_threshold", "draw_threshold"))
    if args.ann is not None and not Path(args.ann).is_file():
        raise CLIError(f"--ann {args.ann}: no such file")
    args.device = resolve_device_arg(args.device)


class _Window:
    """`--show`: an OpenCV window, or one clear message when no display (or no GUI support) exists."""

    def __init__(self) -> None:
        self.ok = True
        has_display = os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
        if sys.platform.startswith("linux") and not has_display:
            self._disable("no display found (DISPLAY / WAYLAND_DISPLAY are not set)")

    def _disable(self, why: str) -> None:
        self.ok = False
        print(f"rtmo: --show: {why}; not showing results (use --save to write them)", file=sys.stderr)

    def show(self, name: str, frame: Any) -> bool:
        """False when the user asked to stop (q or Esc)."""
        if not self.ok:
            return True
        import cv2

        try:
            cv2.imshow("rtmo", frame)
            cv2.setWindowTitle("rtmo", f"rtmo - {name}")
            key = cv2.waitKey(1) & 0xFF
        except cv2.error:
            self._disable("this OpenCV build has no GUI support (opencv-python-headless?)")
            return True
        return key not in (ord("q"), 27)

    def close(self) -> None:
        if self.ok:
            import cv2

            try:
                cv2.destroyAllWindows()
            except cv2.error:
                pass


def run_predict(args: argparse.Namespace) -> int:
    _check_predict_args(args)
    from ..infer.sources import resolve_source
    from ..infer.writers import PredictionWriter

    items = resolve_source(args.source)  # before loading the model: a typo fails in a second, not ten
    # The writer checks -o and --ann before the model loads; it creates nothing until a result exists.
    writer = PredictionWriter(args.output, args.save, args.save_json, args.draw_threshold, args.ann,
                              inputs=[it.target for it in items if isinstance(it.target, str)],
                              image_names=[it.name for it in items if it.kind == "image"])

    from ..hub.zoo import ModelManager
    from ..infer.sources import stream_results

    try:
        model = ModelManager.get(args.model, device=args.device, progress=not args.quiet,
                                 precision=args.precision, fast=args.fast, backend=args.backend)
    except ValueError as e:  # a backend or precision this file or device cannot run (typed errors say enough)
        if type(e) is not ValueError or (args.precision == "fp32" and not args.fast and args.backend is None):
            raise
        raise CLIError(re.sub(r"backend='(\w+)'", r"--backend \1", str(e))) from None  # the CLI's words
    model_name = getattr(model, "checkpoint_info", {}).get("name", args.model)

    def warn(msg: str) -> None:
        from tqdm import tqdm

        tqdm.write(f"rtmo: warning: {msg}", file=sys.stderr)  # keeps the progress bar intact

    window = _Window() if args.show else None
    n_results = n_people = 0
    t0 = time.perf_counter()
    with _sigterm_as_interrupt():
        try:
            for r in stream_results(model, items, batch_size=args.batch_size, threshold=args.threshold,
                                    nms_threshold=args.nms_threshold, vid_stride=args.vid_stride,
                                    max_frames=args.max_frames, track=args.track, smooth=args.smooth,
                                    keep_images=args.save or bool(window and window.ok),
                                    progress=not args.quiet, on_warning=warn):
                drawn = writer.add(r)
                n_results += 1
                n_people += len(r)
                if window is not None and drawn is not None and not window.show(r.extra["source"].name,
                                                                                 drawn):
                    break
        except BaseException:
            # Stopped (Ctrl-C, SIGTERM) or failed: still finish what was written, so partial results are
            # valid files; the original error is the one reported.
            try:
                writer.close()
            except Exception as e:  # noqa: BLE001
                warn(f"while finishing the outputs: {' '.join(str(e).split())}")
            raise
        finally:
            if window is not None:
                window.close()
        written = writer.close()
    seconds = time.perf_counter() - t0
    if not args.quiet:
        rate = n_results / seconds if seconds > 0 else 0.0
        print(f"{model_name}: {n_results} image(s)/frame(s), {n_people} people, {seconds:.1f} s "
              f"({rate:.2f} per second)")
        if written:
            print(f"wrote {len(written)} file(s) to {writer.out_dir}: "
                  + ", ".join(p.name for p in written[:5]) + (" ..." if len(written) > 5 else ""))
        elif not (args.save or args.save_json):
            print("nothing written: add --save and/or --save-json to keep the results")
    if n_results == 0:
        raise CLIError(f"{args.source}: no image or frame could be processed")
    return 0


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (`kill`, a container stop) ends a run as Ctrl-C does: the outputs are finished, not torn."""
    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (run_predict called from a worker): leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)

