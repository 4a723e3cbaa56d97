"""The `rtmo` command. Thin: parses arguments and calls the library.

Each subcommand is one `add_*(subparsers)` function that builds its parser and sets `func` (taking the
parsed args, returning an exit code); `COMMANDS` lists them. Known failures (missing source, bad model name,
unreadable file, bad option) print one line on stderr and exit with 2 — never a traceback
(set RTMO_DEBUG=1 to see one).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

EXIT_USAGE = 2


class CLIError(Exception):
    """A user error: printed as one line, exit code 2."""


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean "bad input" rather than a bug; imported late to keep `rtmo --help` fast."""
    from .infer.image import ImageError
    from .infer.sources import SourceError
    from .zoo import CheckpointError, DownloadError

    errors: list[type[BaseException]] = [CLIError, ImageError, SourceError, CheckpointError, DownloadError,
                                         FileNotFoundError, PermissionError, IsADirectoryError]
    try:
        from .evaluate import EvaluationError

        errors.append(EvaluationError)
    except ImportError:  # pragma: no cover - evaluation extras missing
        pass
    return tuple(errors)


# ------------------------------------------------------------------------------------------ predict

def add_predict(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("predict", help="poses in images, folders, globs, videos, cameras, streams",
                       description="Run RTMO on SOURCE: an image, a folder, a glob ('imgs/*.jpg'), a video, "
                                   "a camera index (0), an RTSP/HTTP URL, or a .txt file listing paths.")
    p.add_argument("source", help="image / folder / glob / video / camera index / URL / .txt list")
    p.add_argument("--model", "-m", default="rtmo-s-coco", help="registry name (see `rtmo models`) or path "
                   "to a checkpoint or exported model (default: %(default)s)")
    p.add_argument("--output", "-o", default="runs/predict", help="output folder (default: %(default)s)")
    p.add_argument("--save", action="store_true", help="write drawn images / videos")
    p.add_argument("--save-json", action="store_true", help="write COCO results JSON for images, "
                   "JSON lines (one record per frame) for videos")
    p.add_argument("--ann", default=None, help="COCO annotation file giving image ids for --save-json")
    p.add_argument("--track", action="store_true", help="give people stable ids across video frames")
    p.add_argument("--smooth", action="store_true", help="One-Euro smoothing of tracked keypoints (implies "
                   "--track)")
    p.add_argument("--batch-size", type=int, default=1, help="images per forward pass (default: %(default)s)")
    p.add_argument("--threshold", type=float, default=None, help="person score threshold (default: model's)")
    p.add_argument("--nms-threshold", type=float, default=None, help="NMS IoU threshold (default: model's)")
    p.add_argument("--kpt-threshold", type=float, default=0.3, help="keypoint score needed to be drawn "
                   "(default: %(default)s)")
    p.add_argument("--device", default=None, help="torch device, e.g. cpu, cuda, cuda:1 (default: cpu)")
    p.add_argument("--vid-stride", type=int, default=1, help="use every n-th video frame")
    p.add_argument("--max-frames", type=int, default=None, help="stop each video / stream after n frames")
    p.add_argument("--show", action="store_true", help="show results in a window (needs a display)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar or summary")
    p.set_defaults(func=run_predict)
    return p


def _check_predict_args(args: argparse.Namespace) -> None:
    for name in ("batch_size", "vid_stride", "max_frames"):
        v = getattr(args, name)
        if v is not None and v < 1:
            raise CLIError(f"--{name.replace('_', '-')} must be >= 1, got {v}")
    for name in ("threshold", "nms_threshold", "kpt_threshold"):
        v = getattr(args, name)
        if v is not None and not 0.0 <= v <= 1.0:
            raise CLIError(f"--{name.replace('_', '-')} must be between 0 and 1, got {v}")
    if args.ann is not None and not Path(args.ann).is_file():
        raise CLIError(f"--ann {args.ann}: no such file")


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
    from .infer.sources import resolve_source
    from .infer.writers import PredictionWriter

    items = resolve_source(args.source)  # before loading the model: a typo fails in a second, not ten
    # The writer checks -o and --ann before the model loads; it creates nothing until a result exists.
    writer = PredictionWriter(args.output, args.save, args.save_json, args.kpt_threshold, args.ann,
                              inputs=[it.target for it in items if isinstance(it.target, str)],
                              image_names=[it.name for it in items if it.kind == "image"])

    from .infer.sources import stream_results
    from .zoo import ModelManager

    model = ModelManager.get(args.model, device=args.device, progress=not args.quiet)
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


# ------------------------------------------------------------------------------------------ models

def add_models(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("models", help="list the official checkpoints (name, input, keypoints, AP, cached)")
    p.set_defaults(func=run_models)
    return p


def run_models(args: argparse.Namespace) -> int:
    from .zoo import REGISTRY, cache_dir, cached_path

    rows = [("name", "input", "kpts", "AP", "measured on", "cached")]
    for name, e in REGISTRY.items():
        w, h = e.input_size
        rows.append((name, f"{w}x{h}", str(e.num_keypoints), f"{e.ap * 100:.1f}", e.eval_data,
                     "yes" if cached_path(name) else "no"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for j, r in enumerate(rows):
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
        if j == 0:
            print("  ".join("-" * w for w in widths))
    print(f"cache: {cache_dir()}  (set RTMO_CACHE_DIR to move it)")
    return 0


# ------------------------------------------------------------------------------------------ val

def add_val(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("val", help="COCO / CrowdPose keypoint AP of a results file or of a model")
    p.add_argument("ann_pos", nargs="?", default=None, metavar="ann", help="COCO-format annotation file")
    p.add_argument("--ann", default=None, help="the same, as an option")
    p.add_argument("--results", default=None, help="COCO results JSON to score")
    p.add_argument("--model", "-m", default=None, help="model to run instead (name or checkpoint path)")
    p.add_argument("--images", default=None, help="image folder (with --model)")
    p.add_argument("--protocol", default="coco", choices=("coco", "crowdpose"))
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--output", "-o", default=None, help="write the metrics to this JSON file")
    p.set_defaults(func=run_val)
    return p


def run_val(args: argparse.Namespace) -> int:
    from .evaluate import run_val as _run_val

    if (args.ann is None) == (args.ann_pos is None):
        raise ValueError("give the annotation file once: `rtmo val FILE ...` or `rtmo val --ann FILE ...`")
    _run_val(args.ann or args.ann_pos, args.results, args.model, args.images, args.protocol, args.output,
             args.batch_size)
    return 0


# ------------------------------------------------------------------------------------------ train

def add_train(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("train", help="train following an official recipe (name) or a TOML recipe file")
    p.add_argument("recipe", help="recipe name, e.g. rtmo-s_8xb32-600e_coco-640x640, or a .toml path")
    p.add_argument("--data-root", default=None, help="dataset root (overrides the recipe's)")
    p.add_argument("--train-ann", default=None, help="train on this COCO-format keypoint file instead of the "
                   "recipe's datasets (any keypoint set; needs --train-images)")
    p.add_argument("--train-images", default=None, help="image folder of --train-ann")
    p.add_argument("--val-ann", default=None, help="validate on this COCO-format file (needs --val-images)")
    p.add_argument("--val-images", default=None, help="image folder of --val-ann")
    p.add_argument("--backbone", default=None, choices=["csp", "resnet18", "resnet34", "resnet50"],
                   help="backbone (default: the recipe's, CSPDarknet)")
    p.add_argument("--backbone-init", default=None, help="backbone weights: YOLOX checkpoint (name such as "
                   "yolox-s, URL or file) for CSPDarknet, torchvision file for ResNet; '' for none")
    p.add_argument("--output", "-o", default="runs/train", help="run folder (default: %(default)s)")
    p.add_argument("--epochs", type=int, default=None, help="rescale the schedule to this many epochs")
    p.add_argument("--batch-size", type=int, default=None, help="per-device batch size")
    p.add_argument("--device", default=None)
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--resume", nargs="?", const=True, default=None,
                   help="continue from OUTPUT/last.pth, or from the given checkpoint")
    p.add_argument("--init-from", default=None, help="start from these weights (e.g. an official checkpoint)")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.set_defaults(func=run_train)
    return p


def run_train(args: argparse.Namespace) -> int:
    from .train.trainer import train

    train(args.recipe, data_root=args.data_root, out_dir=args.output, epochs=args.epochs,
          batch_size=args.batch_size, device=args.device, workers=args.workers, resume=args.resume,
          init_from=args.init_from, amp=args.amp, seed=args.seed, backbone=args.backbone,
          backbone_init=args.backbone_init, train_ann=args.train_ann, train_images=args.train_images,
          val_ann=args.val_ann, val_images=args.val_images)
    return 0


# ------------------------------------------------------------------------------------------ others

def add_export(sub: Any) -> argparse.ArgumentParser:
    from .export import add_export_parser

    return add_export_parser(sub)


def add_benchmark(sub: Any) -> argparse.ArgumentParser:
    from .benchmark import add_benchmark_parser

    return add_benchmark_parser(sub)


COMMANDS: list[Callable[[Any], argparse.ArgumentParser]] = [add_predict, add_models, add_val, add_train,
                                                            add_export, add_benchmark]


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="rtmo", description="RTMO real-time multi-person pose estimation.")
    parser.add_argument("--version", action="version", version=f"rtmo {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in COMMANDS:
        try:
            add(sub)
        except ImportError as e:  # an optional part (e.g. export without onnx) must not break the rest
            print(f"rtmo: note: command from {add.__name__} unavailable ({e})", file=sys.stderr)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("rtmo: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - the one place that turns errors into messages
        if os.environ.get("RTMO_DEBUG"):
            raise
        # ValueError covers bad values handed down to the library (CheckpointError, ImageError, ... derive
        # from it); anything else is a bug and says its type.
        known = isinstance(e, (ValueError, *_user_errors()))
        msg = " ".join(str(e).split()) or type(e).__name__  # one line, however the message was built
        if known:
            print(f"rtmo: error: {msg}", file=sys.stderr)
            return EXIT_USAGE
        print(f"rtmo: error: {type(e).__name__}: {msg} (set RTMO_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
